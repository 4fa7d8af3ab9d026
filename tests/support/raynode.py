"""A Ray node of the test hosts: `ray start --block`, in the root namespace (the head) or in a host's namespace.

`--block` keeps the command in the foreground, so the node is one process tree this harness started: it is
ended by that tree, never by `ray stop` (which would stop every Ray on the machine). Killing its raylet is
what a lost machine looks like to the GCS; the `--block` process then ends the node's other processes.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path

import psutil

from support.netns import ns_argv
from support.procs import HarnessError, die_with_parent, tail

ROOT = Path(__file__).resolve().parents[2]
RAY = str(Path(sys.executable).parent / "ray")

# The GCS marks a node dead after `threshold` missed checks `period` apart (Ray's defaults take ~30 s); a
# lost host should be seen in seconds. The timeout leaves room for a loaded 2-core machine.
HEALTH_ENV = {
    "RAY_health_check_initial_delay_ms": "1000",
    "RAY_health_check_period_ms": "1000",
    "RAY_health_check_timeout_ms": "3000",
    "RAY_health_check_failure_threshold": "5",
}


def node_env(**extra: str) -> dict[str, str]:
    """The environment of a node's processes (its workers inherit it): this checkout importable, no auth."""
    env = dict(os.environ)
    for key in ("RAY_ADDRESS", "DOCKER_HOST", "DOCKER_CERT_PATH", "DOCKER_TLS_VERIFY"):
        env.pop(key, None)
    path = os.pathsep.join([str(ROOT), str(ROOT / "tests"), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env | {"PYTHONPATH": path, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"} | extra


class RayNode:
    """One `ray start --block` process tree."""

    def __init__(
        self,
        name: str,
        log: Path,
        *,
        head: str,
        address: str,
        ns: str | None,
        labels: dict[str, str],
        resources: dict[str, float],
        num_cpus: int,
        object_store_mb: int,
        temp_dir: Path,
        ports: dict[str, int],
        env: dict[str, str],
    ) -> None:
        self.name = name
        self.log = log
        self.address = address
        argv = [RAY, "start", "--block", "--disable-usage-stats", f"--node-ip-address={address}",
                f"--num-cpus={num_cpus}", f"--object-store-memory={object_store_mb * 1024 * 1024}",
                f"--temp-dir={temp_dir}", f"--labels={','.join(f'{k}={v}' for k, v in labels.items())}",
                *(f"--{flag}={port}" for flag, port in ports.items())]  # fmt: skip
        if resources:
            argv.append(f"--resources={json.dumps(resources)}")
        argv += (
            ["--head", "--include-dashboard=false", f"--port={head.rsplit(':', 1)[1]}"]
            if ns is None
            else [f"--address={head}"]
        )
        self.argv = argv if ns is None else ns_argv(ns, argv)
        self.env = env
        self.proc: subprocess.Popen[bytes] | None = None
        self.node_id = ""  # set by the harness once the node is in the node table

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                self.argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out, env=self.env, cwd=ROOT,
                preexec_fn=die_with_parent, start_new_session=True,
            )  # fmt: skip

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def check(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            msg = f"ray node {self.name} exited with {self.proc.returncode}:\n{tail(self.log)}"
            raise HarnessError(msg)

    def _tree(self) -> list[psutil.Process]:
        if self.proc is None:
            return []
        with contextlib.suppress(psutil.Error):
            top = psutil.Process(self.proc.pid)
            return [top, *top.children(recursive=True)]
        return []

    def kill_raylet(self) -> None:
        """SIGKILL the raylet, as a crashed machine; the node's other processes follow (then are made sure of)."""
        tree = self._tree()
        raylets = [p for p in tree if _name(p) == "raylet"]
        if not raylets:
            msg = f"ray node {self.name}: no raylet process to kill"
            raise HarnessError(msg)
        for p in raylets:
            p.kill()
        _, alive = psutil.wait_procs(tree, timeout=20)
        for p in alive:
            with contextlib.suppress(psutil.Error):
                p.kill()
        psutil.wait_procs(alive, timeout=10)

    def stop(self) -> None:
        """End the node: SIGTERM the `--block` process (it ends its children), then SIGKILL what is left."""
        tree = self._tree()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
        _, alive = psutil.wait_procs(tree, timeout=15)
        for p in alive:
            with contextlib.suppress(psutil.Error):
                p.kill()
        psutil.wait_procs(alive, timeout=10)
        if self.proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(5)


def _name(p: psutil.Process) -> str:
    try:
        return p.name()
    except psutil.Error:
        return ""
