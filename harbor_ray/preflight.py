"""`python -m harbor_ray dryrun [--json] [--pod] [--config FILE] [key=value …]`: will this config work, and if not, why.

The config decides the backend (the seed layout's rules included, see `harbor_ray.config`); only that
backend's checks run (`harbor_ray.preflight_docker`, or `harbor_ray.k8s_ops.k8s_checks`), then the Ray
checks. One function per check, one line per check (✓ pass, ⚠ warning, ✗ fail with its fix, – not run
because a check it needs failed). Exit 0 only when nothing failed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import socket
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any
from urllib.parse import urlparse

from harbor_ray.config import Config, load_config
from harbor_ray.errors import HarborRayError

log = logging.getLogger(__name__)

SYMBOLS = {"pass": "✓", "warn": "⚠", "fail": "✗", "skip": "–"}


@dataclass
class Check:
    """One line of the report. status: pass | warn | fail | skip (not run: a check it needs failed)."""

    status: str
    detail: str
    fix: str = ""
    name: str = ""


def ok(detail: str) -> Check:
    return Check("pass", detail)


def warn(detail: str, fix: str = "") -> Check:
    return Check("warn", detail, fix)


def fail(detail: str, fix: str = "") -> Check:
    return Check("fail", detail, fix)


CheckSpec = tuple[str, Callable[[Any], Check], tuple[str, ...]]


@dataclass
class Report:
    """All the lines, for printing or as one JSON object."""

    backend: str
    target: str
    run_label: str
    checks: list[Check] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not any(c.status == "fail" for c in self.checks)

    def counts(self) -> dict[str, int]:
        return {s: sum(c.status == s for c in self.checks) for s in SYMBOLS}

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "backend": self.backend,
            "target": self.target,
            "run_label": self.run_label,
            "counts": self.counts(),
            "checks": [asdict(c) for c in self.checks],
        }

    def render(self) -> str:
        lines = [f"dryrun: backend {self.backend} at {self.target} (run_label {self.run_label})"]
        for c in self.checks:
            fix = f"  → fix: {c.fix}" if c.fix and c.status in ("fail", "warn") else ""
            lines.append(f"  {SYMBOLS[c.status]} {c.name}: {c.detail}{fix}")
        n = self.counts()
        verdict = "READY" if self.ok else "NOT READY"
        lines.append(f"{verdict}: {n['pass']} passed, {n['warn']} warnings, {n['fail']} failed, {n['skip']} not run")
        return "\n".join(lines)


def run_checks(specs: Sequence[CheckSpec], state: Any) -> list[Check]:
    """Run each check unless one it needs failed or was not run; a crash becomes that check's ✗ line."""
    done: dict[str, Check] = {}
    for name, check, needs in specs:
        blocked = [n for n in needs if done.get(n) is None or done[n].status in ("fail", "skip")]
        if blocked:
            result = Check("skip", f"not run: needs {blocked[0]}")
        else:
            try:
                result = check(state)
            except HarborRayError as e:
                result = fail(str(e))
            except Exception as e:  # an unexpected answer must still give a line, not a traceback
                log.debug("check %s crashed", name, exc_info=True)
                result = fail(
                    f"{type(e).__name__}: {str(e).strip().splitlines()[0][:200] if str(e).strip() else ''}",
                    "unexpected; rerun with the same config and report it",
                )
        done[name] = replace(result, name=name)
    return list(done.values())


# --- Ray ---------------------------------------------------------------------------------------


@dataclass
class RayProbe:
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


# --- Kubernetes (checks live in harbor_ray.k8s_ops) ----------------------------------------------


def k8s_report(cfg: Config, *, pod: bool) -> list[Check]:
    """harbor_ray.k8s_ops.k8s_checks, adapted to report lines (imported lazily: the k8s extra is optional)."""
    from harbor_ray.images import BUSYBOX_IMAGE

    try:
        from harbor_ray.k8s_ops import k8s_checks
    except ImportError as e:
        return [
            replace(fail(f"cannot import harbor_ray.k8s_ops ({e})", "pip install 'harbor-ray[k8s]'"), name="k8s client")
        ]
    checks = []
    for r in k8s_checks(cfg.backend, probe_image=BUSYBOX_IMAGE if pod else None):
        status = "pass" if getattr(r, "ok", False) else "fail"
        checks.append(Check(status, str(getattr(r, "detail", "")), str(getattr(r, "fix", "") or ""), r.name))
    return checks


# --- the command -------------------------------------------------------------------------------


def _target(cfg: Config) -> str:
    backend = cfg.backend
    if backend.kind == "k8s":
        where = "in-cluster" if backend.in_cluster else (backend.kubeconfig or "default kubeconfig")
        return f"{where}, namespace {backend.namespace}"
    from harbor_ray.backends.docker_host import LOCAL_SOCKET

    return backend.host or LOCAL_SOCKET


def preflight(cfg: Config, *, pod: bool = False) -> Report:
    """Every check the config's backend needs, then Ray's."""
    report = Report(cfg.backend.kind, _target(cfg), cfg.run_label)
    if cfg.backend.kind == "k8s":
        report.checks += k8s_report(cfg, pod=pod)
    else:
        from harbor_ray.preflight_docker import DOCKER_CHECKS, DockerProbe

        report.checks += run_checks(DOCKER_CHECKS, DockerProbe(cfg))
    report.checks += run_checks(RAY_CHECKS, RayProbe(cfg))
    return report


def dryrun(overrides: list[str] | None = None, config_file: str | None = None, *, pod: bool = False) -> Report:
    """Load the config like `run` does and check it; a config error is the report's one ✗ line."""
    try:
        cfg = load_config(overrides, config_file)
    except HarborRayError as e:
        return Report("?", config_file or "conf/", "?", [Check("fail", str(e), name="config")])
    return preflight(cfg, pod=pod)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m harbor_ray dryrun",
        description="Check that the configured backend and Ray will work: one line per check, exit 0 if none fails.",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object (and nothing else) on stdout")
    parser.add_argument("--pod", action="store_true", help="k8s: also start, exec in and delete a throwaway pod")
    parser.add_argument("--config", help="a YAML config file (plain or the seed's runtime_info layout)")
    parser.add_argument("overrides", nargs="*", help="key=value overrides, e.g. backend=docker_remote")
    args = parser.parse_intermixed_args(argv)
    # In --json mode stdout carries the JSON object only: anything a library prints goes to stderr.
    quiet = contextlib.redirect_stdout(sys.stderr) if args.json else contextlib.nullcontext()
    with quiet:
        report = dryrun(args.overrides, args.config, pod=args.pod)
    print(json.dumps(report.to_dict(), ensure_ascii=False) if args.json else report.render(), flush=True)
    return 0 if report.ok else 1
