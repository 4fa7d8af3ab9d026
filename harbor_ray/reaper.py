"""The reaper: remove our sandboxes whose owner is proven gone or whose time is up, and nothing else.

A sandbox is ours when it carries `harbor-run=<prefix>`; it is reaped when one of these holds:
- its TTL passed (`harbor-ray/created` + `harbor-ray/ttl` is in the past);
- its owner (`harbor-ray/owner=<cluster>-<job>`) is of this Ray cluster, and this cluster's GCS says the
  actor named by `harbor-ray/actor` is DEAD (or, naming no actor, that the job has ended);
- its owning process (`harbor-ray/process=<space>.<pid>.<start>`, the sandbox actor's worker, or the
  process in an owner `local-<space>.<pid>.<start>` outside Ray) lived in this process space (same kernel
  boot and pid namespace) and no process with that pid and start time is there any more: the owner was
  killed, with its whole cluster or alone (proof across clusters).
Anything else is taken for alive: an owner of another cluster in another process space cannot be checked
from here, and the TTL (the container's own PID 1) ends those. Containers without our labels are never
touched. docs/pool.md ("Orphans and proof of death") has the whole design.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from harbor_ray import labels as L
from harbor_ray.backends import BackendConfig, make_backend
from harbor_ray.backends.base import Backend
from harbor_ray.errors import HarborRayError

log = logging.getLogger(__name__)

process_gone = L.process_gone  # the proof lives beside the PROCESS label: backends use it too


class _Gcs:
    """Actor and job states from this cluster's GCS, asked once per id per reap; empty when Ray is not running.

    Ray's public state API (`ray.util.state.get_actor` / `list_jobs`) answers only through the dashboard,
    which trainers and tests often run without (`include_dashboard=False`); the GCS itself always knows.
    So this one class reads `ray._private.state`, the same table the dashboard serves, and nothing else
    in harbor_ray touches `ray._private`.
    """

    def __init__(self) -> None:
        import ray

        self.connected = ray.is_initialized()
        self.cluster = L.cluster_id() if self.connected else ""
        self._actors: dict[str, str] = {}
        self._dead_jobs: set[str] | None = None

    def actor_dead(self, actor_id: str) -> bool:
        if not self.connected or not actor_id:
            return False
        if actor_id not in self._actors:
            from ray._private import state

            try:
                info = state.actors(actor_id) or {}
            except Exception as e:  # a malformed id, or the GCS is unreachable: decide nothing
                log.debug("actor %s: state unknown (%s)", actor_id, e)
                info = {}
            self._actors[actor_id] = str(info.get("State", ""))
        return self._actors[actor_id] == "DEAD"

    def job_dead(self, job_id: str) -> bool:
        """Whether this cluster's job `job_id` (hex) has ended."""
        if not self.connected or not job_id:
            return False
        if self._dead_jobs is None:
            from ray._private import state

            try:
                jobs = state.state.job_table()
            except Exception as e:
                log.debug("job table unavailable: %s", e)
                jobs = []
            self._dead_jobs = {str(j.get("JobID", "")) for j in jobs if j.get("IsDead")}
        return job_id in self._dead_jobs


def why_orphaned(labels: dict[str, str], prefix: str, gcs: Any, now: float) -> str:
    """The reason to reap a sandbox with these labels, or "" to keep it."""
    if labels.get(L.RUN) != prefix:
        return ""
    try:
        expires = int(labels[L.CREATED]) + int(labels[L.TTL])
    except (KeyError, ValueError):
        expires = None
    if expires is not None and expires < now:
        return "ttl expired"
    owner = labels.get(L.OWNER, "")
    if gcs.connected and L.owner_cluster(owner) == gcs.cluster:
        # Our own cluster's GCS knows its actors and jobs: it decides, alive or dead.
        if L.ACTOR in labels:
            return "owner actor is dead" if gcs.actor_dead(labels[L.ACTOR]) else ""
        return "owner job ended" if gcs.job_dead(owner.partition("-")[2]) else ""
    if L.PROCESS in labels and process_gone(labels[L.PROCESS]):
        return "owner process is gone"
    if owner.startswith("local-") and process_gone(owner.removeprefix("local-")):  # made outside Ray
        return "owner process is gone"
    if L.ACTOR in labels and gcs.actor_dead(labels[L.ACTOR]):  # actor ids are unique across clusters
        return "owner actor is dead"
    return ""


def reap(backend: Backend, prefix: str, *, now: float | None = None, dry_run: bool = False) -> list[str]:
    """Remove (with `dry_run`, only find) the orphaned sandboxes of run `prefix` on this backend; return their names.

    >>> reap(DockerBackend(DockerBackendConfig()), "my-run")  # doctest: +SKIP
    ['my-run-3f2a9c01de']
    """
    L.check_prefix(prefix, "prefix")
    now = time.time() if now is None else now
    gcs = _Gcs()
    removed = []
    for handle in backend.list(L.selector(prefix)):
        reason = why_orphaned(handle.labels, prefix, gcs, now)
        if not reason:
            continue
        if dry_run:
            removed.append(handle.name)
            continue
        try:
            backend.destroy(handle)
        except HarborRayError as e:
            log.warning("reaper: could not remove %s (%s): %s", handle.name, reason, e)
            continue
        log.info("reaper: removed %s (%s)", handle.name, reason)
        removed.append(handle.name)
    sweep = getattr(backend, "sweep_networks", None)  # Docker: sandbox networks whose sandbox is gone
    if sweep is not None:
        try:
            sweep(prefix, dry_run=dry_run)
        except Exception as e:  # a sweep is housekeeping: the sandboxes' reaping stands
            log.warning("reaper: network sweep of %s failed: %s", prefix, e)
    return removed


def reap_with_config(backend_config: BackendConfig, prefixes: list[str]) -> list[str]:
    """`reap` for several prefixes on the backend a config describes (the body of the pool's reap task)."""
    backend = make_backend(backend_config)
    removed: list[str] = []
    for prefix in prefixes:
        removed += reap(backend, prefix)
    return removed
