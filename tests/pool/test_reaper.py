"""The reaper on the real engine and real Ray: orphans of a killed actor and expired sandboxes go; a live
sandbox, another run's, and anything without our full label set stay. The pool reaps when it starts."""

from __future__ import annotations

import subprocess
import time

import pytest
import ray

from harbor_ray import labels as L
from harbor_ray.backends.docker.backend import DockerBackend
from harbor_ray.backends.docker.config import DockerBackendConfig
from harbor_ray.backends.images import BUSYBOX_IMAGE
from harbor_ray.reaper import reap
from harbor_ray.sandbox import Sandbox, actor_class

from .conftest import all_gone, busybox, eventually, ours

pytestmark = [pytest.mark.docker, pytest.mark.ray]

CFG = DockerBackendConfig()


async def orphan(run_label: str) -> str:
    """A sandbox whose actor was killed hard (no hook runs), so its container stays; returns its name."""
    actor = actor_class().remote(CFG)
    sandbox = await Sandbox.create(CFG, busybox(run_label), actor=actor)
    ray.kill(actor, no_restart=True)
    actor_id = actor._actor_id.hex()
    await eventually(lambda: ray._private.state.actors(actor_id).get("State") == "DEAD", "the actor is DEAD")
    return sandbox.handle.name


async def test_reap_takes_orphans_and_expired_and_nothing_else(ray_local, run_label, docker_client) -> None:
    backend = DockerBackend(CFG)
    dead = await orphan(run_label)
    live = await Sandbox.create(CFG, busybox(run_label))
    expiring = backend.create(busybox(run_label, ttl_s=300), BUSYBOX_IMAGE)  # no actor; owner: this live job
    long_ago = {L.CREATED: "1", L.TTL: "1", L.OWNER: "job-00000000"}
    decoys = [
        docker_client.containers.run(BUSYBOX_IMAGE, ["sleep", "600"], detach=True),  # no labels at all
        docker_client.containers.run(  # another run's, long expired
            BUSYBOX_IMAGE, ["sleep", "600"], detach=True, labels={L.RUN: f"{run_label}-other", **long_ago}
        ),
        docker_client.containers.run(  # our run label but none of the owner/age labels: undecidable, kept
            BUSYBOX_IMAGE, ["sleep", "600"], detach=True, labels={L.RUN: run_label}
        ),
    ]
    try:
        assert dead in {c.name for c in ours(docker_client, run_label)}
        assert reap(backend, run_label) == [dead]
        assert sorted(reap(backend, run_label, now=time.time() + 400)) == [expiring.name]
        assert reap(backend, run_label, now=time.time() + 10**7) == [live.handle.name]  # its TTL too, eventually
        for decoy in decoys:
            decoy.reload()
            assert decoy.status == "running"
    finally:
        await live.stop()
        for decoy in decoys:
            decoy.remove(force=True)
    await all_gone(docker_client, run_label)


async def test_pool_reaps_orphans_when_it_starts(ray_local, run_label, docker_client, make_pool) -> None:
    dead = await orphan(run_label)
    pool = make_pool()
    await pool.prewarm(busybox(run_label), 0)  # starts the pool (and its first reap)
    await eventually(lambda: dead not in {c.name for c in ours(docker_client, run_label)}, "the orphan reaped")
    await eventually(lambda: pool.stats_sync()["reaped"] == 1, "the reap counted")
    assert await pool.reap() == []


def _exited_process() -> str:
    """The PROCESS label value of a process of this machine that has ended (and been waited for)."""
    proc = subprocess.Popen(["true"])
    value = L.process_id(proc.pid)
    proc.wait()
    return value


async def test_a_dead_owner_process_of_this_host_is_proof_and_nothing_else_is(
    ray_local, run_label, docker_client
) -> None:
    """Owners of another cluster (not our GCS's to judge): reaped only when their process here has ended."""
    backend = DockerBackend(CFG)
    other_cluster = {L.OWNER: "0123456789ab-01000000", L.ACTOR: "f" * 32}  # another cluster: same job id as ours
    space, pid, start = L.process_id().split(".")

    def made(process: str) -> str:
        spec = busybox(run_label, owner=other_cluster[L.OWNER], labels=((L.ACTOR, other_cluster[L.ACTOR]),))
        if process:
            spec = busybox(run_label, owner=spec.owner, labels=(*spec.labels, (L.PROCESS, process)))
        return backend.create(spec, BUSYBOX_IMAGE).name

    dead = made(_exited_process())
    reused = made(f"{space}.{pid}.{int(start) - 1}")  # this pid, but a process started earlier: not this one
    alive = made(L.process_id())  # this very process
    elsewhere = made(f"00000000.{pid}.{start}")  # another machine or pid namespace: cannot be checked here
    unlabeled = made("")  # no process label (an older version): the TTL decides
    try:
        assert sorted(reap(backend, run_label)) == sorted([dead, reused])
        assert {c.name for c in ours(docker_client, run_label)} == {alive, elsewhere, unlabeled}
    finally:
        for name in (alive, elsewhere, unlabeled):
            docker_client.api.remove_container(name, force=True)
    await all_gone(docker_client, run_label)


def test_owner_ids_carry_this_cluster_not_only_the_job_id(ray_local) -> None:
    """Every fresh cluster's first job is 01000000; the owner adds the cluster (two clusters: tests/chaos)."""
    owner = L.current_owner()
    assert owner == f"{L.cluster_id()}-{ray.get_runtime_context().get_job_id()}"
    assert L.owner_cluster(owner) == L.cluster_id()
    assert len(L.cluster_id()) == 12
