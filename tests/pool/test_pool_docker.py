"""The pool on one Ray node and the real engine: leases, warm sets, idle actors, build-once, self-healing,
the circuit breaker, per-host slots, gang leases, and cancelled leases leaving nothing behind."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import threading
import uuid
from pathlib import Path

import pytest
import ray

from harbor_ray import labels as L
from harbor_ray.backends.docker.config import DockerBackendConfig
from harbor_ray.errors import CircuitOpen, ImageBuildError, SandboxGone
from harbor_ray.pool.hosts import HOST_LABEL

from .conftest import all_gone, busybox, eventually, ours

pytestmark = [pytest.mark.docker, pytest.mark.ray]


async def test_lease_exec_release(ray_local, run_label, docker_client, make_pool) -> None:
    pool = make_pool(max_sandboxes=2)
    async with pool.lease(busybox(run_label)) as sandbox:
        assert (await sandbox.exec("echo hi")).stdout == "hi\n"
        [container] = ours(docker_client, run_label)
        assert container.labels[HOST_LABEL] == "local"
        assert container.labels[L.ACTOR] == sandbox.actor._actor_id.hex()
        assert container.labels[L.POOL] == f"pool-{run_label}"
    await all_gone(docker_client, run_label)
    stats = await pool.stats()
    assert (stats["leases"], stats["released"], stats["leased"]) == (1, 1, 0)
    assert stats["slots_used"] == stats["idle_actors"] == 1  # only the recycled actor process holds a slot


async def test_warm_set_serves_leases_and_refills(ray_local, run_label, docker_client, make_pool) -> None:
    pool = make_pool(warm_per_image=2, health_interval_s=0)
    spec = busybox(run_label)
    async with pool.lease(spec):  # the first lease of an image is cold; it makes the image "seen"
        pass
    await eventually(lambda: pool.stats_sync()["warm"] == 2, "two warm sandboxes")
    warm_ids = {c.id for c in ours(docker_client, run_label)}
    assert len(warm_ids) == 2
    async with pool.lease(spec) as sandbox:
        assert sandbox.handle.id in warm_ids  # handed out from the warm set
        assert (await sandbox.exec("echo warm")).stdout == "warm\n"
    stats = await pool.stats()
    assert stats["warm_hits"] == 1
    await eventually(lambda: pool.stats_sync()["warm"] == 2, "the warm set topped up again")


async def test_prewarm_and_idle_actors(ray_local, run_label, make_pool) -> None:
    pool = make_pool(prestart_actors=2, max_sandboxes=6, keep_actors_s=0)  # prestarted only, none recycled
    await pool.prewarm(busybox(run_label, workdir="/tmp"), 0)  # starts the pool
    await eventually(lambda: pool.stats_sync()["idle_actors"] == 2, "two idle actors")
    spec = busybox(run_label)
    assert await pool.prewarm(spec, 3, wait=True) == 3
    leases = [pool.lease(spec) for _ in range(3)]
    sandboxes = await asyncio.gather(*(lease.acquire() for lease in leases))
    assert [(await s.exec("echo ok")).stdout for s in sandboxes] == ["ok\n"] * 3
    stats = await pool.stats()
    assert stats["warm_hits"] == 3
    assert stats["warm"] == 0
    await asyncio.gather(*(lease.release() for lease in leases))
    await eventually(lambda: pool.stats_sync()["idle_actors"] == 2, "idle actors kept ahead of demand")


def _context(tmp_path: Path, run: str) -> Path:
    ctx = tmp_path / "env"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text(f"FROM harbor-ray/busybox:latest\nRUN {run}\n")
    return ctx


async def test_concurrent_leases_build_once(ray_local, run_label, docker_client, make_pool, tmp_path) -> None:
    marker = uuid.uuid4().hex
    ctx = _context(tmp_path, f"echo {marker} > /marker")
    pool = make_pool(max_sandboxes=4)
    spec = busybox(run_label, build_context=str(ctx))
    leases = [pool.lease(spec) for _ in range(4)]
    try:
        sandboxes = await asyncio.gather(*(lease.acquire() for lease in leases))
        assert len({s.handle.image for s in sandboxes}) == 1
        assert [(await s.exec("cat /marker")).stdout for s in sandboxes] == [f"{marker}\n"] * 4
        assert (await pool.stats())["builds"] == 1
    finally:
        await asyncio.gather(*(lease.release() for lease in leases))
        images = docker_client.images.list(filters={"label": f"{L.RUN}={run_label}"})
        for image in images:
            docker_client.images.remove(image.id, force=True)


async def test_failed_build_fails_every_waiting_lease(ray_local, run_label, make_pool, tmp_path) -> None:
    word = f"boom-{uuid.uuid4().hex[:8]}"
    ctx = _context(tmp_path, f"echo {word} && exit 3")
    pool = make_pool(max_sandboxes=4)
    spec = busybox(run_label, build_context=str(ctx))
    results = await asyncio.gather(*(pool.lease(spec).acquire() for _ in range(3)), return_exceptions=True)
    assert all(isinstance(r, ImageBuildError) for r in results), results
    assert all(word in str(r) for r in results)  # the build log's tail
    stats = await pool.stats()
    assert stats["builds"] == 1
    assert stats["slots_used"] == 0


async def test_killed_container_and_killed_actor_are_replaced(ray_local, run_label, docker_client, make_pool) -> None:
    pool = make_pool(warm_per_image=1, health_interval_s=0.5)
    spec = busybox(run_label)
    async with pool.lease(spec):
        pass
    await eventually(lambda: pool.stats_sync()["warm"] == 1, "a warm sandbox")
    [warm] = ours(docker_client, run_label)
    warm.kill()  # under the pool: auto-remove takes the container away
    await eventually(lambda: pool.stats_sync()["replaced"] >= 1, "the background check replaced it")
    await eventually(lambda: pool.stats_sync()["warm"] == 1, "a new warm sandbox")

    # a leased sandbox whose actor is killed: the holder gets SandboxGone, the release cleans up
    lease = pool.lease(spec)
    sandbox = await lease.acquire()
    ray.kill(sandbox.actor, no_restart=True)
    with pytest.raises(SandboxGone):
        await sandbox.exec("true")
    await lease.release()
    async with pool.lease(spec) as fresh:  # retry on a fresh sandbox
        assert (await fresh.exec("echo again")).stdout == "again\n"
    await eventually(lambda: len(ours(docker_client, run_label)) <= 1, "the killed actor's container removed")


async def test_warm_sandbox_whose_actor_process_died_is_replaced(
    ray_local, run_label, docker_client, make_pool
) -> None:
    pool = make_pool(warm_per_image=1, health_interval_s=0.5)
    spec = busybox(run_label)
    async with pool.lease(spec):
        pass
    await eventually(lambda: pool.stats_sync()["warm"] == 1, "a warm sandbox")
    [warm] = ours(docker_client, run_label)
    actor_id = warm.labels[L.ACTOR]
    os.kill(ray._private.state.actors(actor_id)["Pid"], signal.SIGKILL)  # the actor's worker process dies
    await eventually(lambda: pool.stats_sync()["replaced"] >= 1, "the dead actor's sandbox replaced")
    await eventually(lambda: pool.stats_sync()["warm"] == 1, "a new warm sandbox")
    await eventually(lambda: warm.id not in {c.id for c in ours(docker_client, run_label)}, "its container removed")
    [fresh] = ours(docker_client, run_label)
    assert fresh.labels[L.ACTOR] != actor_id


async def test_a_dead_warm_sandbox_is_never_handed_out_silently(ray_local, run_label, docker_client, make_pool) -> None:
    pool = make_pool(warm_per_image=1, health_interval_s=0)  # no background exec check: the watch alone
    spec = busybox(run_label)
    async with pool.lease(spec):
        pass
    await eventually(lambda: pool.stats_sync()["warm"] == 1, "a warm sandbox")
    [warm] = ours(docker_client, run_label)
    docker_client.api.remove_container(warm.id, force=True)
    # The lease races the watch: it gets a live sandbox, or this one failing loudly, never a silent success.
    async with pool.lease(spec) as raced:
        if raced.handle.id == warm.id:
            with pytest.raises(SandboxGone):
                await raced.exec("true")
        else:
            assert (await raced.exec("echo fine")).stdout == "fine\n"
    await eventually(lambda: pool.stats_sync()["replaced"] >= 1 or pool.stats_sync()["warm"] == 1, "the pool knows")
    await eventually(lambda: pool.stats_sync()["warm"] == 1, "a new warm sandbox")
    [fresh] = ours(docker_client, run_label)
    replaced = pool.stats_sync()["replaced"]
    docker_client.api.kill(fresh.id)  # dies while warm: the watch replaces it, no lease needed
    await eventually(lambda: pool.stats_sync()["replaced"] > replaced, "the watch reported the death")
    await eventually(lambda: fresh.id not in {c.id for c in ours(docker_client, run_label)}, "the dead one gone")
    await eventually(lambda: pool.stats_sync()["warm"] == 1, "replaced by a live one")
    async with pool.lease(spec) as sandbox:
        assert sandbox.handle.id not in (warm.id, fresh.id)
        assert (await sandbox.exec("echo fine")).stdout == "fine\n"
    stats = await pool.stats()
    assert stats["failures"]["UnhealthyWarmSandbox"] >= 1


async def test_circuit_breaker_stops_hammering_a_dead_daemon(ray_local, run_label, make_pool) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed once we leave the block
    backend = DockerBackendConfig(kind="docker_remote", host=f"tcp://127.0.0.1:{port}", allow_insecure=True)
    pool = make_pool(backend=backend, circuit_failures=2, start_retries=4, circuit_reset_s=300)
    with pytest.raises(CircuitOpen, match=r"2 sandbox starts failed in a row") as err:
        await pool.lease(busybox(run_label)).acquire()
    assert f"127.0.0.1:{port}" in str(err.value)
    before = await pool.stats()
    with pytest.raises(CircuitOpen, match="paused"):
        await pool.lease(busybox(run_label)).acquire()
    after = await pool.stats()
    assert after["failures"] == before["failures"]  # no new attempt reached the daemon
    [host] = after["hosts"].values()
    assert host["circuit"]["state"] == "open"
    assert host["used"] == 0


async def test_per_host_slots_hold_under_a_burst(ray_local, run_label, docker_client, make_pool) -> None:
    pool = make_pool(hosts=[{"name": "a", "slots": 2}], max_sandboxes=16)
    peak = 0
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            found = docker_client.api.containers(
                all=True, filters={"label": [f"{L.RUN}={run_label}", f"{HOST_LABEL}=a"]}
            )
            peak = max(peak, len(found))

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:

        async def one(i: int) -> str:
            async with pool.lease(busybox(run_label)) as sandbox:
                return (await sandbox.exec(f"sleep 0.3; echo {i}")).stdout

        outputs = await asyncio.gather(*(one(i) for i in range(6)))
    finally:
        done.set()
        sampler.join()
    assert outputs == [f"{i}\n" for i in range(6)]
    assert 1 <= peak <= 2
    [host] = (await pool.stats())["hosts"].values()
    assert host["used"] == host["idle_actors"]  # only recycled actor processes still hold slots


async def test_gang_lease_is_one_placement_group(ray_local, run_label, docker_client, make_pool) -> None:
    from ray.util import placement_group_table

    pool = make_pool(max_sandboxes=4)
    group = pool.lease_group(busybox(run_label), 3, strategy="PACK")
    sandboxes = await group.acquire()
    assert len({s.handle.id for s in sandboxes}) == 3
    assert [(await s.exec("echo g")).stdout for s in sandboxes] == ["g\n"] * 3
    created = [g for g in placement_group_table().values() if g["state"] == "CREATED"]
    assert len(created) == 1
    assert len(created[0]["bundles"]) == 3
    await group.release()
    await all_gone(docker_client, run_label)
    await eventually(
        lambda: not [g for g in placement_group_table().values() if g["state"] == "CREATED"], "the group removed"
    )


async def test_cancelled_acquire_leaves_nothing(ray_local, run_label, docker_client, make_pool) -> None:
    pool = make_pool()
    task = asyncio.create_task(pool.lease(busybox(run_label)).acquire())
    await asyncio.sleep(0.3)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await eventually(lambda: pool.stats_sync()["slots_used"] == pool.stats_sync()["idle_actors"], "the slot freed")
    async with pool.lease(busybox(run_label)) as sandbox:
        assert (await sandbox.exec("echo after")).stdout == "after\n"
