"""Dryrun lines for every sandbox host of the pool: each `pool.hosts` entry, or each Ray node offering
`pool.sandbox_resource` when the daemon is every node's own.

A host with a url (a remote daemon) is checked from here, like the backend. A host that is a Ray node's own
daemon is checked where its sandboxes run: a zero-CPU Ray task on a node with the host's labels runs the
Docker checks there (so DOCKER_HOST, the socket and the images are that node's). Each line is the backend's
check of the same name, prefixed with the host's name (`h1: daemon ping: …`), plus a `<host>: Ray node` line
for a node's daemon. Lines that are the same for every host (the SDK's import, the hardening) are not repeated.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import Any

from harbor_ray.config import Config
from harbor_ray.errors import HarborRayError
from harbor_ray.ops.dryrun.report import Check, fail, ok

log = logging.getLogger(__name__)

_SAME_EVERYWHERE = {"docker SDK", "DockerClient", "hardening"}
_NODE_TIMEOUT_S = 120.0


def host_checks(cfg: Config) -> list[Check]:
    """The lines of every host, [] when the pool has a single host (the backend's lines above are its own)."""
    if cfg.backend.kind not in ("docker", "docker_remote"):
        return []
    from harbor_ray.pool.hosts import configured_hosts

    try:
        hosts = configured_hosts(cfg.backend, cfg.pool, pool_node_id="")
    except HarborRayError as e:
        return [dataclasses.replace(fail(str(e)), name="pool.hosts")]
    if not cfg.pool.hosts and hosts:
        return []  # one host: the backend itself
    lines: list[Check] = _sharing(cfg, hosts)
    remote = [h for h in hosts if h.spread]
    for host in remote:
        lines += _prefixed(host.name, _daemon_checks(cfg, host.backend_config, host.slots))
    node_local = [h for h in hosts if not h.spread]
    if node_local or not hosts:  # node-local daemons (pool.hosts with node labels, or one per node)
        lines += _on_nodes(cfg, node_local)
    return lines


def _sharing(cfg: Config, hosts: list[Any]) -> list[Check]:
    """A warning when url hosts' actors may run on the nodes of node-local hosts and take their resource units."""
    loose = [h.name for h in hosts if h.spread and not h.selector]
    pinned = [h.name for h in hosts if not h.spread]
    if not (loose and pinned and cfg.pool.sandbox_resource):
        return []
    detail = (
        f"url hosts {', '.join(loose)} have no node_labels: their actors spread over every node offering "
        f"{cfg.pool.sandbox_resource} and take units that {', '.join(pinned)} count on (their starts then wait)"
    )
    fix = "give each url entry the node_labels of its daemon's machine (docs/pool.md, Hosts and slots)"
    return [Check("warn", detail, fix, name="pool.hosts")]


def _daemon_checks(cfg: Config, backend: Any, slots: int) -> list[Check]:
    """The Docker checks for one daemon, its slots in place of backend.slots and pool.max_sandboxes."""
    from harbor_ray.ops.dryrun.docker import checks

    one = dataclasses.replace(
        cfg,
        backend=dataclasses.replace(backend, slots=slots),
        pool=dataclasses.replace(cfg.pool, max_sandboxes=slots, hosts=None),
    )
    return [c for c in checks(one, pod=False) if c.name not in _SAME_EVERYWHERE]


def _node_daemon_checks(cfg: Config, slots: int) -> tuple[str, list[Check]]:
    """Run on the host's Ray node: which node this is, and the checks of its own daemon."""
    import ray

    node = ray.get_runtime_context().get_node_id()
    return node, _daemon_checks(cfg, cfg.backend, slots)


def _prefixed(name: str, checks: list[Check]) -> list[Check]:
    return [dataclasses.replace(c, name=f"{name}: {c.name}") for c in checks]


def _on_nodes(cfg: Config, hosts: list[Any]) -> list[Check]:
    """Checks of node-local daemons, each run on its node; `hosts` [] -> one per node offering the resource."""
    import ray

    address = cfg.ray.address or os.environ.get("RAY_ADDRESS", "")
    started_here = not ray.is_initialized()
    if started_here and (not address or address == "local"):
        if not hosts:
            return []  # one per node, and the run's local Ray has one node: the daemon checked above
        detail = "not run: the run starts Ray locally, whose one node uses the daemon checked above"
        return [Check("skip", detail, name="hosts")]
    try:
        if started_here:
            ray.init(address=address, log_to_driver=False, logging_level=logging.WARNING)
        return _run_on_nodes(cfg, hosts, ray)
    except Exception as e:
        return [dataclasses.replace(fail(f"cannot check the hosts on their Ray nodes: {str(e).splitlines()[0]}"),
                                    name="hosts")]  # fmt: skip
    finally:
        if started_here and ray.is_initialized():
            ray.shutdown()


def _run_on_nodes(cfg: Config, hosts: list[Any], ray: Any) -> list[Check]:
    from harbor_ray.pool.hosts import has_node, node_hosts

    nodes = ray.nodes()
    if not hosts:
        hosts = node_hosts(cfg.backend, cfg.pool, nodes)
        if not hosts:
            what = f"the resource {cfg.pool.sandbox_resource!r}"
            return [dataclasses.replace(fail(f"no alive Ray node offers {what}"), name="hosts")]
    task = ray.remote(_node_daemon_checks)
    refs = {}
    lines: dict[str, list[Check]] = {}
    for host in hosts:
        if not has_node(host, cfg.pool, nodes):
            wanted = f"labels {host.selector}" + (
                f" and {cfg.pool.sandbox_resource}" if cfg.pool.sandbox_resource else ""
            )
            fix = "start one: ray start --address=<head> --labels=<key>=<value> --resources='{...}'"
            lines[host.name] = [Check("fail", f"no alive Ray node with {wanted}", fix, name=f"{host.name}: Ray node")]
            continue
        options = {"num_cpus": 0, "label_selector": dict(host.selector)}
        refs[host.name] = task.options(**options).remote(cfg, host.slots)
    for name, ref in refs.items():
        try:
            node, checks = ray.get(ref, timeout=_NODE_TIMEOUT_S)
        except Exception as e:
            first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
            lines[name] = [Check("fail", f"the check task on its node failed: {first}", name=f"{name}: Ray node")]
            continue
        address = next((n["NodeManagerAddress"] for n in nodes if n["NodeID"] == node), "?")
        where = dataclasses.replace(ok(f"node {node[:12]} at {address}, its own daemon"), name="Ray node")
        lines[name] = _prefixed(name, [where, *checks])
    return [c for host in hosts for c in lines[host.name]]
