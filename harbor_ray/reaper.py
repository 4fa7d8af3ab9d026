"""The reaper: remove our sandboxes whose owner is gone or whose time is up, and nothing else.

A sandbox is ours when it carries `harbor-run=<prefix>`; it is reaped when one of these holds:
- its TTL passed (`harbor-ray/created` + `harbor-ray/ttl` is in the past);
- the Ray actor named by `harbor-ray/actor` is DEAD in this cluster's GCS;
- it names no actor, and the Ray job named by `harbor-ray/owner` (`job-<hex>`) has ended in this
  cluster's GCS (job ids repeat across clusters, so an actor id, unique, decides when present).
An actor or job this cluster has never heard of is not taken for dead (it may belong to another
cluster sharing the daemon); the TTL reaps those. Containers without our labels are never touched.
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

    def job_dead(self, owner: str) -> bool:
        if not self.connected or not owner.startswith("job-"):
            return False
        if self._dead_jobs is None:
            from ray._private import state

            try:
                jobs = state.state.job_table()
            except Exception as e:
                log.debug("job table unavailable: %s", e)
                jobs = []
            self._dead_jobs = {str(j.get("JobID", "")) for j in jobs if j.get("IsDead")}
        return owner.removeprefix("job-") in self._dead_jobs


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
    if L.ACTOR in labels:
        # The actor decides: its id is unique, while job ids repeat across clusters sharing a daemon.
        return "owner actor is dead" if gcs.actor_dead(labels[L.ACTOR]) else ""
    if gcs.job_dead(labels.get(L.OWNER, "")):
        return "owner job ended"
    return ""


def reap(backend: Backend, prefix: str, *, now: float | None = None) -> list[str]:
    """Remove the orphaned sandboxes of run `prefix` on this backend; return their names.

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
        try:
            backend.destroy(handle)
        except HarborRayError as e:
            log.warning("reaper: could not remove %s (%s): %s", handle.name, reason, e)
            continue
        log.info("reaper: removed %s (%s)", handle.name, reason)
        removed.append(handle.name)
    return removed


def reap_with_config(backend_config: BackendConfig, prefixes: list[str]) -> list[str]:
    """`reap` for several prefixes on the backend a config describes (the body of the pool's reap task)."""
    backend = make_backend(backend_config)
    removed: list[str] = []
    for prefix in prefixes:
        removed += reap(backend, prefix)
    return removed
