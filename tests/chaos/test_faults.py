"""Faults of one run never cost another run its sandboxes, on the real engine and real Ray (one Ray per module).

- Two runs on one label at once, each its own Ray cluster: the second's end-of-run sweep keeps the first's
  live sandbox (issue 13, item 1: every fresh cluster's first job id is `01000000`).
- A driver SIGKILLed while it holds sandboxes: the next run's reaper removes them within a minute, a live
  run's on the same label stay (item 2).
- Under a live lease, the container killed mid-exec, its actor's worker process killed, the daemon connection
  cut: the caller gets one harbor_ray error line (no hang, no Ray traceback), none of the run's sandboxes
  stay, and another run's sandbox on the same label lives.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from typing import Any

import pytest
from support import tls_proxy
from support.procs import Listener
from support.waiting import eventually

from harbor_ray import labels as L
from harbor_ray.backends.docker.backend import DockerBackend
from harbor_ray.backends.docker.config import DockerBackendConfig
from harbor_ray.backends.images import BUSYBOX_IMAGE
from harbor_ray.config import PoolConfig
from harbor_ray.errors import BackendUnavailable, SandboxGone
from harbor_ray.pool import SandboxPool
from harbor_ray.reaper import reap
from harbor_ray.sandbox import Sandbox

from .conftest import HELLO_TASK, ROOT, busybox, child_env, harbor_ray, names

pytestmark = [pytest.mark.chaos, pytest.mark.docker, pytest.mark.ray, pytest.mark.harbor]

BOUND_S = 30  # none of a run's sandboxes is left this long after its pool released them
REAP_BOUND_S = 60  # a killed driver's sandboxes are reaped within this


@pytest.fixture
async def other_run(run_label: str) -> AsyncIterator[str]:
    """Another run's live sandbox on the same label (its owner: this process, alive): it must survive."""
    backend = DockerBackend()
    spec = busybox(run_label, owner=L.current_owner(), labels=((L.PROCESS, L.process_id()),))
    handle = backend.create(spec, BUSYBOX_IMAGE)
    yield handle.name
    assert backend.exec(handle, ["echo", "alive"]).stdout == "alive\n"
    backend.destroy(handle)


def pool_for(run_label: str, backend: Any = None) -> SandboxPool:
    return SandboxPool(backend or DockerBackendConfig(), PoolConfig(name=f"chaos-{run_label}", reap_interval_s=0),
                       run_label=run_label)  # fmt: skip


async def test_container_killed_mid_exec(ray_local, run_label, docker_client, other_run) -> None:
    pool = pool_for(run_label)
    try:
        async with pool.lease(busybox(run_label)) as sandbox:
            running = asyncio.create_task(sandbox.exec("sleep 60; echo finished"))
            await eventually(lambda: "sleep 60" in docker_client.api.top(sandbox.handle.id)["Processes"][-1][-1],
                             "the exec running")  # fmt: skip
            docker_client.api.kill(sandbox.handle.id)
            [outcome] = await asyncio.wait_for(asyncio.gather(running, return_exceptions=True), BOUND_S)
            if isinstance(outcome, BaseException):  # the daemon may end the exec stream first, or refuse the inspect
                assert isinstance(outcome, SandboxGone), repr(outcome)
                assert str(outcome).startswith(f"sandbox {sandbox.handle.name}:"), outcome
            else:
                assert outcome.return_code != 0, outcome
                assert "finished" not in outcome.stdout, outcome
            with pytest.raises(SandboxGone, match=sandbox.handle.name):
                await sandbox.exec("true")
            assert not await sandbox.health()
    finally:
        await pool.shutdown()
    await eventually(lambda: names(docker_client, run_label) == {other_run}, "only the other run's sandbox", BOUND_S)


async def test_actor_worker_killed(ray_local, run_label, docker_client, other_run) -> None:
    pool = pool_for(run_label)
    try:
        async with pool.lease(busybox(run_label)) as sandbox:
            pid = (await sandbox.actor.info.remote())["pid"]
            running = asyncio.create_task(sandbox.exec("sleep 60"))
            await asyncio.sleep(0.5)
            os.kill(pid, signal.SIGKILL)
            with pytest.raises(SandboxGone) as died:
                await asyncio.wait_for(running, BOUND_S)
            [line] = str(died.value).splitlines()
            assert line.startswith(f"{sandbox.handle.name}: its actor died during exec"), line
            assert sandbox.handle.name in names(docker_client, run_label)  # no hook ran: the container is still there
    finally:
        await pool.shutdown()  # the release destroys it from here, with the handle the pool kept
    await eventually(lambda: names(docker_client, run_label) == {other_run}, "only the other run's sandbox", BOUND_S)


async def test_daemon_connection_cut_mid_exec(ray_local, run_label, docker_client, other_run) -> None:
    proxy = Listener(tls_proxy.command("--plain"))
    backend = DockerBackendConfig(kind="docker_remote", host=proxy.url, allow_insecure=True)
    pool = pool_for(run_label, backend)
    try:
        async with pool.lease(busybox(run_label)) as sandbox:
            running = asyncio.create_task(sandbox.exec("sleep 60"))
            await asyncio.sleep(0.5)
            proxy.proc.send_signal(signal.SIGKILL)  # every connection through it drops at once
            proxy.proc.wait(10)
            with pytest.raises(BackendUnavailable) as cut:
                await asyncio.wait_for(running, BOUND_S)
            [line] = str(cut.value).splitlines()
            assert f"127.0.0.1:{proxy.port}" in line, line
    finally:
        await pool.shutdown()  # the link stays down: it cannot destroy the container, and ends its actor
        proxy.stop()
    assert names(docker_client, run_label) == {sandbox.handle.name, other_run}
    # The next reaper that reaches the daemon (here over its local socket) proves the owner dead and removes it.
    assert reap(DockerBackend(), run_label) == [sandbox.handle.name]
    assert names(docker_client, run_label) == {other_run}


async def test_a_second_run_on_the_label_keeps_the_first_runs_sandboxes(
    ray_local, run_label, docker_client, tmp_path
) -> None:
    first = await Sandbox.create(DockerBackendConfig(), busybox(run_label))  # the first run, mid-trial
    try:
        second = harbor_ray(
            "run", f"tasks={HELLO_TASK}", "agent=oracle", f"run_label={run_label}", f"jobs_dir={tmp_path}",
            "job_name=second", "n_concurrent=1",
        )  # fmt: skip
        _, err = second.communicate(timeout=150)
        assert second.returncode == 0, err[-3000:]
        record = json.loads((tmp_path / "second" / "results.jsonl").read_text().splitlines()[0])
        assert record["reward"] == 1.0, record
        assert "removing leftover sandbox" not in err
        assert names(docker_client, run_label) == {first.handle.name}  # the second's own are gone, ours stay
        assert (await first.exec("echo alive")).stdout == "alive\n"
    finally:
        await first.stop()


def start_driver(run_label: str, n: int, *extra: str) -> tuple[subprocess.Popen[str], list[str]]:
    """tests/chaos/driver.py with its own Ray cluster, once it holds `n` leased sandboxes (their names)."""
    driver = subprocess.Popen(
        [sys.executable, str(ROOT / "tests" / "chaos" / "driver.py"), run_label, str(n), *extra],
        cwd=ROOT, env=child_env(), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
        text=True,
    )  # fmt: skip
    leased = []
    assert driver.stdout is not None
    for line in driver.stdout:
        if line.startswith("leased "):
            leased.append(line.split()[1])
        if line.strip() == "ready":
            return driver, leased
    driver.wait(10)
    pytest.fail(f"the driver exited with {driver.returncode} before leasing {n} sandboxes")


async def test_next_runs_reaper_removes_a_sigkilled_drivers_sandboxes_and_keeps_a_live_runs(
    ray_local, run_label, docker_client
) -> None:
    driver, killed = start_driver(run_label, 2)
    live_run = SandboxPool(DockerBackendConfig(), PoolConfig(name=f"live-{run_label}", reap_interval_s=0),
                           run_label=run_label)  # fmt: skip
    try:
        async with live_run.lease(busybox(run_label)) as live:
            driver.send_signal(signal.SIGKILL)
            driver.wait(10)
            assert set(killed) <= names(docker_client, run_label)
            next_run = SandboxPool(DockerBackendConfig(), PoolConfig(name=f"next-{run_label}", reap_interval_s=0),
                                   run_label=run_label)  # fmt: skip
            try:

                async def reaped() -> bool:
                    await next_run.reap()
                    return not names(docker_client, run_label) & set(killed)

                await eventually(reaped, "the killed driver's sandboxes reaped", REAP_BOUND_S)
            finally:
                await next_run.shutdown()
            assert names(docker_client, run_label) == {live.handle.name}
            assert (await live.exec("echo alive")).stdout == "alive\n"
    finally:
        await live_run.shutdown()
        if driver.poll() is None:
            driver.kill()
