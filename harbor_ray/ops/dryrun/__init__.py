"""`python -m harbor_ray dryrun [--json] [--pod] [--config FILE] [key=value …]`: will this config work, and if not, why.

The config decides the backend (the seed layout's rules included, see `harbor_ray.config`); only that
backend's checks run, then the Ray checks (`ray`). A backend's checks are the module named like its
package in the registry (`docker`, `kubernetes`), each with `checks(cfg, *, pod) -> list[Check]`; a
backend without one gets a generic ping. One line per check (✓ pass, ⚠ warning, ✗ fail with its fix,
– not run because a check it needs failed; see `report`). Exit 0 only when nothing failed.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import sys

from harbor_ray.backends import entry, make_backend
from harbor_ray.config import Config, load_config_explained
from harbor_ray.errors import HarborRayError
from harbor_ray.ops.args import add_config_args
from harbor_ray.ops.dryrun.hosts import host_checks
from harbor_ray.ops.dryrun.ray import RAY_CHECKS, RayProbe
from harbor_ray.ops.dryrun.report import Check, CheckSpec, Report, ok, run_checks

__all__ = ["Check", "Report", "dryrun", "main", "preflight"]


def check_backend_ping(cfg: Config) -> Check:
    """The generic check of a backend that has no checks module here: it answers."""
    return ok(f"{cfg.backend.target()} answers, version {make_backend(cfg.backend).ping()}")


GENERIC_CHECKS: tuple[CheckSpec, ...] = (("backend ping", check_backend_ping, ()),)


def backend_checks(cfg: Config, *, pod: bool) -> list[Check]:
    """The lines of the config's backend: `harbor_ray.ops.dryrun.<its package>.checks`, or a ping."""
    name = f"{__name__}.{entry(cfg.backend.kind).package}"
    try:
        module = importlib.import_module(name)
    except ModuleNotFoundError as e:
        if e.name != name:
            raise
        return run_checks(GENERIC_CHECKS, cfg)
    return list(module.checks(cfg, pod=pod))


def preflight(cfg: Config, *, pod: bool = False, reason: str = "") -> Report:
    """Every check the config's backend needs, then Ray's; `reason` says why the config chose that backend."""
    report = Report(cfg.backend.kind, cfg.backend.target(), cfg.run_label, reason=reason)
    report.checks += backend_checks(cfg, pod=pod)
    report.checks += run_checks(RAY_CHECKS, RayProbe(cfg))
    report.checks += host_checks(cfg)  # every host of the pool, when it has several
    return report


def dryrun(overrides: list[str] | None = None, config_file: str | None = None, *, pod: bool = False) -> Report:
    """Load the config like `run` does and check it; a config error is the report's one ✗ line."""
    try:
        cfg, reason = load_config_explained(overrides, config_file)
    except HarborRayError as e:
        return Report("?", config_file or "conf/", "?", [Check("fail", str(e), name="config")])
    return preflight(cfg, pod=pod, reason=reason)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m harbor_ray dryrun",
        description="Check that the configured backend and Ray will work: one line per check, exit 0 if none fails.",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object (and nothing else) on stdout")
    parser.add_argument("--pod", action="store_true", help="k8s: also start, exec in and delete a throwaway pod")
    args = add_config_args(parser).parse_intermixed_args(argv)
    # In --json mode stdout carries the JSON object only: anything a library prints goes to stderr.
    quiet = contextlib.redirect_stdout(sys.stderr) if args.json else contextlib.nullcontext()
    with quiet:
        report = dryrun(args.overrides, args.config, pod=args.pod)
    print(json.dumps(report.to_dict(), ensure_ascii=False) if args.json else report.render(), flush=True)
    return 0 if report.ok else 1
