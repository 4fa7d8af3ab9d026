"""The labels every container, pod, image and network of ours carries, and selectors over them."""

from __future__ import annotations

import hashlib
import os
import re
import time
from pathlib import Path

RUN = "harbor-run"  # the seed's label: harbor-run=<pod_name_prefix>
OWNER = "harbor-ray/owner"  # <cluster>-<job>: the Ray cluster (its session) and job; see current_owner()
POOL = "harbor-ray/pool"
CREATED = "harbor-ray/created"  # unix seconds
TTL = "harbor-ray/ttl"  # seconds after CREATED when the sandbox may be reaped
KIND = (
    "harbor-ray/kind"  # sandbox | image | probe | network | relay | holder | forwarder (before relays) | network-policy
)
ACTOR = "harbor-ray/actor"  # the Ray actor that owns the sandbox (hex id)
HOST = "harbor-ray/host"  # the host (slot group) a sandbox counts against
PROCESS = "harbor-ray/process"  # <process space>.<pid>.<start ticks> of the process that owns the sandbox
SANDBOX = "harbor-ray/sandbox"  # on a sandbox's network, forwarders, NetworkPolicy: the sandbox's name
RUNTIME = "harbor-ray/runtime"  # an agent runtime's name: on its image and volume, and on a pod that mounts it
RUNTIME_RUN = "agent-runtimes"  # the run label of agent runtime images (kept across runs, like base images)
EGRESS_NET = "harbor-ray/egress-net"  # on a "gateway only" sandbox: its own network (docs/network.md)
RELAYS = "harbor-ray/relays"  # on a "gateway only" sandbox: the relays on its network (names, comma-separated)
HOLDER = "harbor-ray/holder"  # on a "gateway only" sandbox: the id of the container holding its network namespace
HOLDER_KEY = "harbor-ray/holder-key"  # on a network holder: a hash of its endpoints and TTL (who may claim it)

# containers of ours that serve sandboxes and are none: they take no slot and are never listed as sandboxes
COMPANION_KINDS = frozenset({"relay", "holder", "forwarder"})  # docs/network.md

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


def cluster_id() -> str:
    """A short id of the Ray cluster this process is connected to, the same in all its processes.

    It hashes the cluster's session name (its start time to the microsecond and the head's pid), which
    differs between clusters, where job ids do not: every fresh cluster's first job is `01000000`.
    """
    import ray

    return hashlib.sha256(ray.get_runtime_context().get_session_name().encode()).hexdigest()[:12]


def current_owner() -> str:
    """The owner id stamped on sandboxes: `<cluster id>-<job id>` inside Ray, else `local-<this process>`.

    Unique across clusters and machines, so a sweep by owner never takes another run's sandboxes.
    """
    try:
        import ray

        if ray.is_initialized():
            return f"{cluster_id()}-{ray.get_runtime_context().get_job_id()}"
    except ImportError:  # pragma: no cover - ray is a hard dependency
        pass
    return f"local-{process_id()}"


def owner_cluster(owner: str) -> str:
    """The cluster id part of an owner id ("" for owners from outside Ray or from older versions)."""
    cluster, sep, _ = owner.partition("-")
    return cluster if sep and cluster not in {"local", "job"} else ""


def process_space() -> str:
    """Where a pid means one process: this kernel boot and pid namespace, hashed (8 hex digits).

    Two processes with the same space see the same /proc, so one can tell whether the other's pid is alive.
    """
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        namespace = os.readlink("/proc/self/ns/pid")
    except OSError:  # not Linux: no process can be checked from elsewhere
        return "unknown"
    return hashlib.sha256(f"{boot}|{namespace}".encode()).hexdigest()[:8]


def process_start(pid: int) -> str | None:
    """The start time of process `pid` in clock ticks since boot (from /proc), None when there is none.

    With the pid it names one process even after the pid is reused.
    """
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()  # the command name before ")" may hold spaces
    if fields[0] in {"Z", "X"}:  # a zombie has ended; only its exit status waits for its parent
        return None
    return fields[19]  # field 22, starttime


def process_id(pid: int | None = None) -> str:
    """`<process space>.<pid>.<start ticks>` of this (or another local) process: the PROCESS label's value."""
    pid = os.getpid() if pid is None else pid
    return f"{process_space()}.{pid}.{process_start(pid) or 0}"


def process_gone(value: str) -> bool:
    """True when the PROCESS label names a process of this process space that no longer runs."""
    space, _, rest = value.partition(".")
    pid, _, start = rest.partition(".")
    if space != process_space() or space == "unknown" or not pid.isdigit():
        return False  # another machine, container or boot: nothing can be proven from here
    now_start = process_start(int(pid))
    if now_start is None:
        return True
    return start not in {"", "0"} and now_start != start  # the pid was reused by a newer process


def sandbox_labels(prefix: str, *, pool: str, owner: str, ttl_s: int, kind: str = "sandbox") -> dict[str, str]:
    return {
        RUN: prefix,
        OWNER: owner,
        POOL: pool,
        CREATED: str(int(time.time())),
        TTL: str(int(ttl_s)),
        KIND: kind,
    }


_VALUE_RE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")


def valid_values(labels: dict[str, str]) -> dict[str, str]:
    """The labels whose values Kubernetes accepts (63 characters of [-A-Za-z0-9_.], alphanumeric at both ends)."""
    return {k: v for k, v in labels.items() if len(v) <= 63 and _VALUE_RE.match(v)}


def selector(prefix: str, **extra: str) -> dict[str, str]:
    """Equality selector for `list()`; always includes the run label."""
    return {RUN: prefix, **extra}
