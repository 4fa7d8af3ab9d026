"""Fixtures for the verl tier: the tiny model directory, a Ray cluster whose node offers the sandbox
resource (as a CPU node of a training cluster would), and harbor_ray overrides for a fresh pool per test.

Everything in these tests is real (verl's AgentLoopWorker, ToolAgentLoop, RLHFDataset and Hydra config; Ray;
Docker sandboxes from the harbor_ray pool) except the LLM server manager: see verl_harness.py.
"""

from __future__ import annotations

import os
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # no network here: LiteLLM's bundled cost map

from verl_harness import SANDBOX_RESOURCE, build_tiny_model  # noqa: E402


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny-qwen"))


@pytest.fixture(scope="module")
def tokenizer(tiny_model: Path) -> Any:
    """verl's own loading of the tiny model's tokenizer."""
    from verl.utils import hf_tokenizer

    return hf_tokenizer(str(tiny_model))


@pytest.fixture
async def gateway() -> AsyncIterator[Any]:
    """A model gateway on loopback with its default limits (test_gateway.py has one with a small body limit)."""
    from harbor_ray.verl.gateway import Gateway

    gw = await Gateway.start("127.0.0.1")
    yield gw
    await gw.stop()


@pytest.fixture(scope="module")
def ray_sandbox_cluster() -> Iterator[None]:
    """A local Ray whose one node offers the sandbox resource, as a CPU node of a training cluster would."""
    import ray

    if ray.is_initialized():
        ray.shutdown()
    ray.init(
        address="local",
        num_cpus=2,
        resources={SANDBOX_RESOURCE: 4},
        include_dashboard=False,
        object_store_memory=200 * 1024**2,
        log_to_driver=False,
    )
    yield
    ray.shutdown()


@pytest.fixture
async def harbor_overrides(run_label: str, ray_sandbox_cluster: None) -> AsyncIterator[list[str]]:
    """harbor_ray overrides for this test's pool (its own name and run label); the pool is shut down after."""
    from harbor_ray.verl.sandboxes import harbor_config, pool_for

    overrides = [
        "backend=docker",
        f"run_label={run_label}",
        f"pool.name=verl-test-{uuid.uuid4().hex[:8]}",
        f"pool.sandbox_resource={SANDBOX_RESOURCE}",
        "pool.max_sandboxes=4",
        "sandbox.ttl_s=600",
    ]
    yield overrides
    await pool_for(harbor_config(overrides)).shutdown()
