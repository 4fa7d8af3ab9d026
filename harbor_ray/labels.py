"""The labels every container, pod, image and network of ours carries, and selectors over them."""

from __future__ import annotations

import os
import re
import time

RUN = "harbor-run"  # the seed's label: harbor-run=<pod_name_prefix>
OWNER = "harbor-ray/owner"  # Ray job id (or "local-<pid>" outside Ray)
POOL = "harbor-ray/pool"
CREATED = "harbor-ray/created"  # unix seconds
TTL = "harbor-ray/ttl"  # seconds after CREATED when the sandbox may be reaped
KIND = "harbor-ray/kind"  # sandbox | image | probe
ACTOR = "harbor-ray/actor"  # the Ray actor that owns the sandbox (hex id)
HOST = "harbor-ray/host"  # the host (slot group) a sandbox counts against

_PREFIX_RE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,38}[a-z0-9])?$")


def check_prefix(prefix: str, key: str = "run_label") -> str:
    """Validate a run prefix: it names pods and is a label value, so DNS-1123 label rules apply."""
    from harbor_ray.errors import ConfigError

    if not prefix or prefix.strip() in {"*", "%", "."}:
        msg = f"{key}: an empty or wildcard prefix would match other runs' sandboxes; set {key}=<name>, e.g. my-run"
        raise ConfigError(msg)
    if not _PREFIX_RE.match(prefix):
        msg = f"{key}={prefix!r}: use 1-40 lowercase letters, digits or '-', starting and ending alphanumeric"
        raise ConfigError(msg)
    return prefix


def current_owner() -> str:
    """The owner id stamped on sandboxes: the Ray job id when inside Ray, else this process."""
    try:
        import ray

        if ray.is_initialized():
            return f"job-{ray.get_runtime_context().get_job_id()}"
    except ImportError:  # pragma: no cover - ray is a hard dependency
        pass
    return f"local-{os.getpid()}"


def sandbox_labels(prefix: str, *, pool: str, owner: str, ttl_s: int, kind: str = "sandbox") -> dict[str, str]:
    return {
        RUN: prefix,
        OWNER: owner,
        POOL: pool,
        CREATED: str(int(time.time())),
        TTL: str(int(ttl_s)),
        KIND: kind,
    }


def selector(prefix: str, **extra: str) -> dict[str, str]:
    """Equality selector for `list()`; always includes the run label."""
    return {RUN: prefix, **extra}
