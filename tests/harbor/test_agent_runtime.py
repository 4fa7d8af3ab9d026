"""Agent runtimes on real Docker, with Harbor's own Trial and its installed mini-swe-agent: the runtime is built
once per host for concurrent trials (counted on the daemon), mounted read-only in sandboxes on the "gateway only"
network whose task image (busybox) has no Python at all, and the agent's model calls go to a scripted policy at
the gateway's address -> reward 1; nothing is left behind."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import docker
import pytest
from support.runtime_task import COMMANDS, trial_overrides
from support.scripted_openai import ScriptedPolicy

from harbor_ray.backends.docker import runtime as R
from harbor_ray.backends.docker.network import host_address
from harbor_ray.config import load_config
from harbor_ray.harbor.runner import run_trials
from harbor_ray.pool import SandboxPool
from harbor_ray.runtimes.recipes import recipe

pytestmark = [pytest.mark.harbor, pytest.mark.ray, pytest.mark.docker, pytest.mark.slow]


def _forget_runtime(client: docker.DockerClient, tag: str) -> None:
    """Remove this runtime's image and volumes (ours, labeled kind=runtime), so the run below must build it."""
    vol = R.volume_name(tag)
    for name in (vol + "-ready", vol):
        try:
            client.volumes.get(name).remove(force=True)
        except docker.errors.NotFound:
            pass
    try:
        client.images.remove(tag, force=True)
    except docker.errors.ImageNotFound:
        pass


def _collect(stream: Any, into: list[dict]) -> None:
    try:
        for event in stream:
            into.append(event)
    except Exception:  # the stream closed under the iteration: the watch is over
        return


async def test_installed_mini_swe_agent_runs_from_the_mounted_runtime(
    ray_local, run_label: str, tmp_path: Path, docker_client: docker.DockerClient
) -> None:
    tag = R.runtime_tag(recipe("mini-swe-agent"))
    _forget_runtime(docker_client, tag)
    policy = ScriptedPolicy(host_address(docker_client), COMMANDS)
    overrides = [
        *trial_overrides(tmp_path, run_label, policy.address),
        "n_attempts=3",
        "n_concurrent=3",
        "pool.max_sandboxes=3",
    ]
    cfg = load_config(overrides)
    pool = SandboxPool.from_config(cfg)
    # the daemon's tag events, watched live (its replay buffer is short on a busy daemon)
    stream = docker_client.events(filters={"type": "image", "event": "tag"}, decode=True)
    events: list[dict] = []
    watcher = threading.Thread(target=_collect, args=(stream, events), daemon=True)
    watcher.start()
    try:
        records = await run_trials(cfg, pool=pool)
        stats = await pool.stats()
    finally:
        await pool.shutdown()
        policy.close()
        time.sleep(1)
        stream.close()
    assert [(r.reward, r.error) for r in records] == [(1.0, None)] * 3, [r.error_message for r in records]
    # every trial's agent asked the policy twice (its command, then its submission), through the gateway
    assert len(policy.requests) == 6
    assert all(r["path"] == "/v1/chat/completions" for r in policy.requests)
    # built once on this daemon for the three concurrent trials: one tag event for the runtime's image
    runtime_tags = [e for e in events if e.get("Actor", {}).get("Attributes", {}).get("name") == tag]
    assert len(runtime_tags) == 1, runtime_tags
    assert stats["builds"] == 1  # the pool's build-once: one build for the task image and its runtime
    # the runtime's volume stays for the next run (like an image); no filler container is left
    assert docker_client.volumes.get(R.volume_name(tag) + "-ready")
    assert not docker_client.containers.list(all=True, filters={"label": "harbor-ray/kind=runtime-filler"})
