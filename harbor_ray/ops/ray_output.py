"""Ray's driver output a sandbox pool's user does not need: the raylet's worker-start warning.

A sandbox pool starts one Ray worker process per sandbox actor, so each burst passes the raylet's "expected
startup concurrency" (its CPU count) and it sends every driver "WARNING: N PYTHON worker processes have been
started on node: … which is Nx the maximum expected startup concurrency (M) …", again at each multiple. The
pool means to start them (docs/pool.md), so the warning says nothing to the user of a run.

Ray's driver prints these messages (its error channel) through its log deduplicator, which drops every line
matching `RAY_DEDUP_LOGS_SKIP_REGEX` (Ray's documented knob, read once when `ray` is imported). Adding this one
pattern to it keeps Ray's other warnings, and a pattern the user set is kept beside ours. `RAY_DEDUP_LOGS=0`
turns Ray's deduplicator off, and with it every skip: then the warning shows again. The raylet's own log
(`raylet.out`) keeps it either way.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import MutableMapping

log = logging.getLogger(__name__)

SKIP_ENV = "RAY_DEDUP_LOGS_SKIP_REGEX"
WORKER_START_WARNING = r"worker processes have been started on node: .*maximum expected startup concurrency"


def skip_pattern(current: str | None) -> str:
    """`current` (the user's pattern, if any) with the worker-start warning's pattern added."""
    if not current:
        return WORKER_START_WARNING
    if WORKER_START_WARNING in current:
        return current
    return f"(?:{current})|(?:{WORKER_START_WARNING})"


def quiet_worker_start_warnings(environ: MutableMapping[str, str] | None = None) -> bool:
    """Set `RAY_DEDUP_LOGS_SKIP_REGEX` so this driver does not print the worker-start warning. False (and
    nothing changed) when `ray` is already imported: Ray read the variable then, so it is too late."""
    env = os.environ if environ is None else environ
    if environ is None and "ray" in sys.modules:
        log.debug("ray already imported: Ray's worker-start warnings stay in the output")
        return False
    env[SKIP_ENV] = skip_pattern(env.get(SKIP_ENV))
    return True
