"""SandboxActor on real Ray and the real engine: one sandbox per actor, overlapping calls, typed errors,
and no sandbox outliving its actor."""

from __future__ import annotations

import asyncio
import gc
import time
from pathlib import Path

import pytest
import ray

from harbor_ray import labels as L
from harbor_ray.backends.base import SandboxSpec
from harbor_ray.backends.docker.config import DockerBackendConfig
from harbor_ray.backends.images import BASE_IMAGE, BUSYBOX_IMAGE
from harbor_ray.errors import ExecTimeout, SandboxGone, SandboxStartError
from harbor_ray.sandbox import Sandbox, actor_class

pytestmark = [pytest.mark.ray, pytest.mark.docker]

CFG = DockerBackendConfig()


def ours(docker_client, label: str) -> list:
    return docker_client.containers.list(all=True, filters={"label": f"{L.RUN}={label}"})


async def wait_gone(docker_client, label: str, seconds: float = 30) -> list:
    deadline = time.monotonic() + seconds
    while (left := ours(docker_client, label)) and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
    return left


async def test_lifecycle_exec_transfer_stop(ray_local, run_label: str, docker_client, tmp_path: Path) -> None:
    sandbox = await Sandbox.create(CFG, SandboxSpec(run_label=run_label, image=BASE_IMAGE))
    try:
        [container] = ours(docker_client, run_label)
        assert container.labels[L.ACTOR] == sandbox.actor._actor_id.hex()
        assert container.labels[L.OWNER] == L.current_owner()  # <this cluster>-<this job>, the same in the actor
        result = await sandbox.exec("echo $X; exit 3", env={"X": "from-env"})
        assert (result.stdout, result.return_code) == ("from-env\n", 3)

        (tmp_path / "d").mkdir()
        (tmp_path / "d" / "f.txt").write_text("payload")
        await sandbox.upload(tmp_path / "d", "/srv/d")
        await sandbox.exec("echo more > /srv/d/g.txt")
        await sandbox.download("/srv/d", tmp_path / "back")
        assert (tmp_path / "back" / "f.txt").read_text() == "payload"
        assert (tmp_path / "back" / "g.txt").read_text() == "more\n"
        assert await sandbox.health()
    finally:
        await sandbox.stop()
    assert ours(docker_client, run_label) == []
    with pytest.raises(SandboxGone):
        await sandbox.exec("true")


async def test_calls_overlap(ray_local, run_label: str) -> None:
    sandbox = await Sandbox.create(CFG, SandboxSpec(run_label=run_label, image=BUSYBOX_IMAGE))
    try:
        # The waiter can only finish if the second exec runs while the first is still running.
        waiter = asyncio.create_task(
            sandbox.exec("while [ ! -f /tmp/go ]; do sleep 0.05; done; echo released", timeout_s=60)
        )
        await asyncio.sleep(0.3)
        await sandbox.exec("touch /tmp/go")
        assert (await waiter).stdout == "released\n"
    finally:
        await sandbox.stop()


async def test_errors_arrive_typed_and_on_one_line(ray_local, run_label: str) -> None:
    sandbox = await Sandbox.create(CFG, SandboxSpec(run_label=run_label, image=BUSYBOX_IMAGE))
    try:
        with pytest.raises(ExecTimeout) as info:
            await sandbox.exec("sleep 60", timeout_s=0.5)
        assert type(info.value) is ExecTimeout  # the remote class itself, not a RayTaskError wrapper
        assert "\n" not in str(info.value)
        assert "timed out" in str(info.value)
    finally:
        await sandbox.stop()


async def test_failed_start_leaves_no_actor_and_no_container(ray_local, run_label: str, docker_client) -> None:
    with pytest.raises(SandboxStartError, match="nothing can be pulled"):
        await Sandbox.create(CFG, SandboxSpec(run_label=run_label, image="harbor-ray/absent:0"))
    assert ours(docker_client, run_label) == []


async def test_prestarted_idle_actor_then_one_sandbox_only(ray_local, run_label: str) -> None:
    actor = actor_class().remote(CFG)
    assert (await actor.ready.remote())[0].isdigit()  # connected before any demand
    spec = SandboxSpec(run_label=run_label, image=BUSYBOX_IMAGE)
    sandbox = await Sandbox.create(CFG, spec, actor=actor)
    try:
        with pytest.raises(SandboxStartError, match="already owns"):
            await actor.start.remote(spec)
    finally:
        await sandbox.stop()


async def test_ray_kill_then_caller_destroys_from_its_handle(ray_local, run_label: str, docker_client) -> None:
    sandbox = await Sandbox.create(CFG, SandboxSpec(run_label=run_label, image=BUSYBOX_IMAGE))
    ray.kill(sandbox.actor, no_restart=True)  # a hard kill runs no hook inside the actor

    async def exec_until_it_fails() -> None:
        for _ in range(50):
            await sandbox.exec("true")
            await asyncio.sleep(0.1)

    with pytest.raises(SandboxGone, match="actor died"):
        await exec_until_it_fails()
    assert len(ours(docker_client, run_label)) == 1
    await sandbox.stop()  # destroys the container from the handle the caller kept
    assert ours(docker_client, run_label) == []


async def test_graceful_actor_exit_destroys_its_sandbox(ray_local, run_label: str, docker_client) -> None:
    actor = actor_class().remote(CFG)
    await actor.start.remote(SandboxSpec(run_label=run_label, image=BUSYBOX_IMAGE))
    assert len(ours(docker_client, run_label)) == 1
    del actor  # the last handle goes out of scope: Ray exits the actor gracefully (__ray_shutdown__)
    gc.collect()
    assert await wait_gone(docker_client, run_label) == []


@pytest.mark.parametrize("delay_s", [0.05, 0.6, 1.2])
async def test_cancelled_start_leaves_no_container(ray_local, run_label: str, docker_client, delay_s: float) -> None:
    creating = asyncio.create_task(Sandbox.create(CFG, SandboxSpec(run_label=run_label, image=BASE_IMAGE)))
    await asyncio.sleep(delay_s)  # cancel before, during or after the container's creation
    creating.cancel()
    try:
        sandbox = await creating
    except asyncio.CancelledError:
        pass
    else:  # it finished before the cancel arrived
        await sandbox.stop()
    assert await wait_gone(docker_client, run_label) == []


async def test_an_actor_whose_backend_cannot_start_raises_the_cause(ray_local, run_label: str, tmp_path: Path) -> None:
    # The actor's __init__ raises; Ray reports that as the actor's death, with the cause only in its text.
    from harbor_ray.backends.kubernetes.config import K8sBackendConfig
    from harbor_ray.errors import ConfigError

    missing = tmp_path / "absent-kubeconfig"
    with pytest.raises(ConfigError) as info:
        await Sandbox.create(K8sBackendConfig(kubeconfig=str(missing)), SandboxSpec(run_label=run_label, image="x"))
    assert str(missing) in str(info.value)
    assert "died" not in str(info.value)
    assert "\x1b" not in str(info.value)
    assert "\n" not in str(info.value)
