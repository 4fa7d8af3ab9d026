"""The Ray checks of dryrun: can the run reach the configured cluster, and does it offer the sandbox resource.

Run after the backend's checks, on a `RayProbe`; `ray` itself is imported only when there is a
cluster to connect to (a local run starts Ray itself).
"""

from __future__ import annotations

import logging
import os
import socket
from dataclasses import dataclass
from urllib.parse import urlparse

from harbor_ray.config import Config
from harbor_ray.ops.dryrun.report import Check, CheckSpec, fail, ok, warn


@dataclass
class RayProbe:
    """What the Ray checks share: the address tried, and the cluster's resources once it answered."""

    cfg: Config
    address: str = ""
    resources: dict[str, float] | None = None  # None: Ray will start locally in the run


def _tcp_reachable(address: str, timeout: float = 3.0) -> str | None:
    """None when host:port accepts a TCP connection, else the reason (ray.init would hang instead)."""
    parsed = urlparse(address if "://" in address else f"tcp://{address}")
    if not parsed.hostname or not parsed.port:
        return None  # "auto" and friends: let Ray resolve them
    try:
        with socket.create_connection((parsed.hostname, parsed.port), timeout=timeout):
            return None
    except OSError as e:
        return f"{parsed.hostname}:{parsed.port}: {e.strerror or e}"


def check_ray_connect(p: RayProbe) -> Check:
    p.address = p.cfg.ray.address or os.environ.get("RAY_ADDRESS", "")
    if not p.address or p.address == "local":
        cpus = f"num_cpus={p.cfg.ray.num_cpus}" if p.cfg.ray.num_cpus else "all CPUs"
        return ok(f"no ray.address / RAY_ADDRESS: the run starts Ray locally ({cpus})")
    fix = "start the cluster (ray start --head) or fix ray.address / RAY_ADDRESS"
    unreachable = _tcp_reachable(p.address)
    if unreachable:
        return fail(f"cannot reach Ray at {p.address} ({unreachable})", fix)
    import ray

    started_here = not ray.is_initialized()
    try:
        if started_here:
            ray.init(address=p.address, log_to_driver=False, logging_level=logging.WARNING)
        p.resources = dict(ray.cluster_resources())
        nodes = sum(bool(n.get("Alive")) for n in ray.nodes())
    except Exception as e:
        return fail(f"cannot connect to Ray at {p.address}: {str(e).strip().splitlines()[0][:200]}", fix)
    finally:
        if started_here and ray.is_initialized():
            ray.shutdown()
    return ok(f"connected to {p.address}: {nodes} node(s), {p.resources.get('CPU', 0):g} CPUs")


def check_ray_resources(p: RayProbe) -> Check:
    res, want = p.cfg.pool.sandbox_resource, p.cfg.pool.max_sandboxes
    if not res:
        return ok("sandbox actors ask for num_cpus=0 and no custom resource (pool.sandbox_resource is empty)")
    declare = f"ray start --resources='{{\"{res}\": {want}}}'"
    if p.resources is None:
        return ok(f"Ray starts locally in the run and declares {res}={want} (pool.max_sandboxes)")
    have = p.resources.get(res, 0.0)
    if have < 1:
        return fail(f"no node of the cluster offers the resource {res!r}", f"start sandbox nodes with {declare}")
    if have < want:
        return warn(
            f"{have:g} {res} in the cluster < pool.max_sandboxes={want}; leases will queue",
            "add sandbox nodes or lower pool.max_sandboxes",
        )
    return ok(f"{have:g} {res} in the cluster (pool.max_sandboxes={want})")


RAY_CHECKS: tuple[CheckSpec, ...] = (
    ("Ray", check_ray_connect, ()),
    ("Ray resources", check_ray_resources, ("Ray",)),
)
