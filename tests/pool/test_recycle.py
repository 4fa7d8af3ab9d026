"""Recycled actor processes (`pool.keep_actors_s`): a released sandbox's actor serves the next sandbox, keeps
nothing of the old one, and a stale handle on the old one reaches nothing."""

from __future__ import annotations

import asyncio
import os
import signal
import tempfile

import pytest
import ray

from harbor_ray import labels as L
from harbor_ray.errors import SandboxGone

from .conftest import all_gone, busybox, eventually, ours

pytestmark = [pytest.mark.docker, pytest.mark.ray]


async def _burst(pool, spec, n):
    leases = [pool.lease(spec) for _ in range(n)]
    sandboxes = await asyncio.gather(*(lease.acquire() for lease in leases))
    return leases, sandboxes


async def test_a_released_sandboxs_actor_serves_the_next_and_keeps_nothing(
    ray_local, run_label, docker_client, make_pool
) -> None:
    pool = make_pool(max_sandboxes=4)
    first = busybox(run_label, env=(("SECRET", "first-trial"),))
    leases, sandboxes = await _burst(pool, first, 2)
    old = sandboxes[0]
    old_info = await old.actor.info.remote()
    with tempfile.NamedTemporaryFile() as f:  # a piece of an upload left pending when the lease ends
        await old.actor.upload_part.remote("pending", b"x" * 1024)
        assert (await old.actor.info.remote())["pending_uploads"] == 1
        del f
    old_ids = {s.handle.id for s in sandboxes}
    await asyncio.gather(*(lease.release() for lease in leases))
    await eventually(lambda: not ({c.id for c in ours(docker_client, run_label)} & old_ids), "old containers gone")
    stats = await pool.stats()
    assert stats["idle_actors"] == 2  # demand was 2: both processes kept
    assert stats["actors_recycled"] == 2

    async with pool.lease(busybox(run_label)) as new:
        info = await new.actor.info.remote()
        assert info["pid"] in {old_info["pid"], (await sandboxes[1].actor.info.remote())["pid"]}
        assert info["served"] == 1
        assert info["pending_uploads"] == 0
        assert new.handle.id not in old_ids
        assert (await new.exec("echo ${SECRET:-none}")).stdout == "none\n"  # the old spec's env is not carried
        [container] = ours(docker_client, run_label)
        assert container.labels[L.PROCESS].split(".")[1] == str(info["pid"])  # proof of death still names it
        stale = old if (await old.actor.info.remote())["pid"] == info["pid"] else sandboxes[1]
        stale._stopped = False  # as a copy of the handle held elsewhere (a remote pool's caller) would be
        with pytest.raises(SandboxGone):
            await stale.exec("echo leaked")  # the actor refuses a call meant for its previous sandbox
        assert not await stale.health()
    await all_gone(docker_client, run_label)


async def test_without_keep_actors_every_actor_ends_with_its_sandbox(ray_local, run_label, make_pool) -> None:
    pool = make_pool(max_sandboxes=2, keep_actors_s=0)
    leases, _ = await _burst(pool, busybox(run_label), 2)
    await asyncio.gather(*(lease.release() for lease in leases))
    stats = await pool.stats()
    assert (stats["idle_actors"], stats.get("actors_recycled", 0), stats["slots_used"]) == (0, 0, 0)


async def test_an_actor_serves_at_most_actor_max_sandboxes(ray_local, run_label, make_pool) -> None:
    pool = make_pool(max_sandboxes=1, actor_max_sandboxes=2)
    pids = []
    for _ in range(3):
        async with pool.lease(busybox(run_label)) as sandbox:
            pids.append((await sandbox.actor.info.remote())["pid"])
    assert pids[0] == pids[1] != pids[2]


async def test_a_recycled_idle_actor_that_dies_is_replaced(ray_local, run_label, docker_client, make_pool) -> None:
    pool = make_pool(max_sandboxes=1, health_interval_s=0.5)
    async with pool.lease(busybox(run_label)) as sandbox:
        pid = (await sandbox.actor.info.remote())["pid"]
    assert pool.stats_sync()["idle_actors"] == 1
    os.kill(pid, signal.SIGKILL)
    await eventually(lambda: pool.stats_sync()["idle_actors"] == 0, "the dead idle actor dropped")
    async with pool.lease(busybox(run_label)) as fresh:
        assert (await fresh.exec("echo ok")).stdout == "ok\n"
        assert (await fresh.actor.info.remote())["pid"] != pid
    await all_gone(docker_client, run_label)


async def test_idle_actors_past_keep_actors_s_end(ray_local, run_label, make_pool) -> None:
    pool = make_pool(max_sandboxes=2, keep_actors_s=1)
    leases, sandboxes = await _burst(pool, busybox(run_label), 2)
    actors = [s.actor for s in sandboxes]
    await asyncio.gather(*(lease.release() for lease in leases))
    assert pool.stats_sync()["idle_actors"] == 2
    await eventually(lambda: pool.stats_sync()["idle_actors"] == 0, "idle actors ended after keep_actors_s", 20)
    assert pool.stats_sync()["slots_used"] == 0
    for actor in actors:
        with pytest.raises(ray.exceptions.RayActorError):
            await actor.info.remote()
