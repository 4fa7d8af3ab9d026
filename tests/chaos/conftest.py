"""Shared fixtures of the chaos tier: a driver subprocess, a live sandbox of "another run", polling.

Owned by helper A (issue 13); helper B (tests/chaos/test_signals.py) may use these fixtures and may add
its own fixtures below the marked line, keeping the ones above as they are.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from harbor_ray import labels as L
from harbor_ray.backends.base import SandboxSpec
from harbor_ray.backends.images import BUSYBOX_IMAGE

ROOT = Path(__file__).resolve().parents[2]
HELLO_TASK = ROOT / "examples" / "tasks" / "hello-file"


def busybox(run_label: str, **kw: Any) -> SandboxSpec:
    kw.setdefault("ttl_s", 900)
    return SandboxSpec(run_label=run_label, image=BUSYBOX_IMAGE, cpus=0.2, memory_mb=64, **kw)


def child_env(**extra: str) -> dict[str, str]:
    """The environment of a driver subprocess: this checkout importable, Ray quiet and without auth."""
    env = os.environ | {"PYTHONPATH": str(ROOT), "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)  # a child starts its own local Ray cluster
    return env | extra


def harbor_ray(*args: str, **popen: Any) -> subprocess.Popen[str]:
    """`python -m harbor_ray ARGS…` as a child process (stdout and stderr captured as text)."""
    return subprocess.Popen(
        [sys.executable, "-m", "harbor_ray", *args],
        cwd=ROOT,
        env=child_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **popen,
    )


def names(docker_client: Any, run_label: str, **labels: str) -> set[str]:
    """Names of the containers labeled harbor-run=<run_label> (and `labels`), from one daemon call."""
    filters = [f"{L.RUN}={run_label}", *(f"{k}={v}" for k, v in labels.items())]
    return {c["Names"][0].lstrip("/") for c in docker_client.api.containers(all=True, filters={"label": filters})}


# -- fixtures added by helper B go below this line ------------------------------------------------------------
