"""Shared fixtures: a unique run label per test with a leak check, the Docker client, a local Ray.

In CI (CI=true) a skipped test is turned into a failure: every dependency a test needs is installed
by the test command, so a skip there means something is missing.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()
    if IN_CI and report.skipped and not hasattr(report, "wasxfail"):
        report.outcome = "failed"
        report.longrepr = f"skipped in CI (CI=true), which counts as a failure: {report.longrepr}"


@pytest.fixture(scope="session")
def docker_client():
    import docker

    client = docker.from_env()
    client.ping()
    return client


def _ours(client, label: str) -> list:
    return client.containers.list(all=True, filters={"label": f"harbor-run={label}"})


@pytest.fixture
def run_label(request: pytest.FixtureRequest, docker_client) -> Iterator[str]:
    """A fresh harbor-run label for this test; the test fails if any container with it is left."""
    label = f"t-{uuid.uuid4().hex[:10]}"
    yield label
    # a "gateway only" sandbox's relay outlives it on purpose (it ends itself when idle): not a leak
    relays = {"label": [f"harbor-run={label}", "harbor-ray/kind=relay"]}
    for relay in docker_client.api.containers(all=True, filters=relays):
        docker_client.api.remove_container(relay["Id"], force=True)
    # so does the stock of ready network holders (docs/network.md); claimed holders are checked as containers
    from support.waiting import wait_released_holders

    from harbor_ray.backends.docker.holders import drain

    drain(docker_client, label)
    wait_released_holders(docker_client, label)  # each ends a second after its sandbox, by the daemon
    left = _ours(docker_client, label)
    for c in left:
        c.remove(force=True)
    assert not left, f"test left containers labeled harbor-run={label}: {[c.name for c in left]}"


@pytest.fixture(scope="module")
def ray_local() -> Iterator[None]:
    import ray

    if ray.is_initialized():
        ray.shutdown()
    ray.init(
        address="local", num_cpus=2, include_dashboard=False, object_store_memory=200 * 1024**2, log_to_driver=False
    )
    yield
    ray.shutdown()
