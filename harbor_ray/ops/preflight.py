"""`python -m harbor_ray run`: the checks made before Ray and the trials start, then the batch (harbor.runner).

A run that cannot work fails here, in a second or two, with one line (exit 2 through the CLI), instead of
after Ray started with a traceback per sandbox actor: no task given, a task.toml Harbor cannot read, a
backend that does not answer (a missing socket, a closed port, bad TLS files, a missing, malformed or
unreachable kubeconfig), a `sandbox.runtime` the daemons or the cluster do not have (ops.sandbox_runtime).
The backend is asked once, without retries, with a short timeout. Settings dryrun
warns about (risky capabilities, network for every sandbox) are warned about here too, and one INFO line
says which Docker daemon is used (backend.host, DOCKER_HOST or the default socket).

The agent (`agent.name` one of Harbor's, with the closest names when not; `agent.import_path`) and
`environment_import_path` are checked here too (harbor.checks), once, instead of failing every trial. A task
whose trials would fail (no instruction.md, no Dockerfile or docker_image, no tests/test.sh) gets one warning line
before Ray starts and the batch runs the rest; `--strict` refuses the batch instead. Ray's worker-start warning
is kept out of the output (ops.ray_output) before Ray is imported.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
from pathlib import Path

from harbor_ray.backends import make_backend
from harbor_ray.backends.base import DEFAULT_CAP_ADD
from harbor_ray.backends.docker.config import DockerBackendConfig
from harbor_ray.backends.kubernetes.config import K8sBackendConfig
from harbor_ray.config import Config, load_config
from harbor_ray.errors import TaskError
from harbor_ray.harbor.checks import check_agent, check_environment, task_problems
from harbor_ray.harbor.report import FORMATS
from harbor_ray.harbor.spec import discover_tasks
from harbor_ray.ops.args import add_config_args
from harbor_ray.ops.dryrun.docker import RISKY_CAPS
from harbor_ray.ops.ray_output import quiet_worker_start_warnings
from harbor_ray.ops.sandbox_runtime import check_runtime

log = logging.getLogger(__name__)

PING_TIMEOUT_S = 5.0  # one request to the daemon or API server; failures that matter answer at once


def check_docker(settings: DockerBackendConfig) -> str:
    """'Docker 20.10 at unix:///var/run/docker.sock (the default socket)', or the one-line error."""
    from harbor_ray.backends.docker.backend import DockerBackend
    from harbor_ray.backends.docker.endpoint import check_tls_material

    quick = dataclasses.replace(settings, timeout_s=min(settings.timeout_s, PING_TIMEOUT_S))
    backend = DockerBackend(quick)  # validates host, port and TLS settings
    check_tls_material(backend.endpoint)
    version = backend.ping()
    backend.client.close()
    return f"Docker {version} at {backend.endpoint.url} ({backend.endpoint.origin})"


def check_kubernetes(settings: K8sBackendConfig) -> str:
    """'k8s API https://…:6443 answers, version v1.20', or the one-line error (kubeconfig or API)."""
    from kubernetes import client
    from tenacity import Retrying, stop_after_attempt

    from harbor_ray.backends.kubernetes import api

    backend = make_backend(settings)  # a missing or malformed kubeconfig: ConfigError naming it
    once = Retrying(stop=stop_after_attempt(1), reraise=True)
    version_api = client.VersionApi(backend.api_client)  # type: ignore[attr-defined]
    host = backend.host  # type: ignore[attr-defined]
    info = api.call(once, host, version_api.get_code, _request_timeout=(PING_TIMEOUT_S, PING_TIMEOUT_S))
    backend.close()  # type: ignore[attr-defined]
    return f"k8s API {host} answers, version {info.git_version}"


def check_backend(cfg: Config) -> str:
    """One line saying what answered; raises the backend's one-line HarborRayError when nothing does."""
    if isinstance(cfg.backend, DockerBackendConfig):
        return check_docker(cfg.backend)
    if isinstance(cfg.backend, K8sBackendConfig):
        return check_kubernetes(cfg.backend)
    return f"{cfg.backend.target()} answers, version {make_backend(cfg.backend).ping()}"


def warn_risky_settings(cfg: Config) -> None:
    """The sandbox settings dryrun flags, as warnings (a run takes them, but should not do so silently)."""
    s = cfg.sandbox
    risky = sorted((set(s.cap_add) - set(DEFAULT_CAP_ADD)) & RISKY_CAPS)
    if risky:
        log.warning(
            "sandbox.cap_add grants %s: a sandbox with them can escape its isolation; drop them unless needed",
            ", ".join(risky),
        )
    if not s.no_new_privileges:
        log.warning("sandbox.no_new_privileges=false: setuid binaries in a sandbox can gain privileges")
    if s.network:
        log.warning("sandbox.network=true: every sandbox gets network, whatever its task allows")


def warn_invalid_tasks(cfg: Config, tasks: list[Path], *, strict: bool = False) -> int:
    """One warning line per task whose trials would fail, saying why; the number of such tasks. With `strict`,
    a TaskError (one line) refuses the batch when there is any."""
    invalid = 0
    for task in tasks:
        problems = task_problems(task, verifier_enabled=cfg.verifier_enabled)
        if problems:
            invalid += 1
            log.warning("task %s will fail: %s (%s)", task.name, "; ".join(problems), task)
    if invalid and strict:
        msg = f"--strict: {invalid} of {len(tasks)} tasks are invalid (the warnings above); fix or drop them"
        raise TaskError(msg)
    if invalid:
        log.warning(
            "running all %d tasks; the %d above will be recorded as failed (--strict refuses)", len(tasks), invalid
        )
    return invalid


def preflight(cfg: Config, *, strict: bool = False) -> list[Path]:
    """Everything checked before Ray starts, returning the tasks to run; the first problem raises its one-line
    HarborRayError."""
    tasks = discover_tasks(cfg.tasks)
    warn_risky_settings(cfg)
    check_agent(cfg)
    warn_invalid_tasks(cfg, tasks, strict=strict)
    check_environment(cfg)
    log.info("backend: %s", check_backend(cfg))
    log.info("sandbox runtime: %s", check_runtime(cfg))  # a daemon without it: ConfigError before any sandbox
    return tasks


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m harbor_ray run",
        description="Run Harbor trials on the sandbox pool and report rewards (results.jsonl, a summary table).",
    )
    parser.add_argument(
        "--format",
        choices=FORMATS,
        default="table",
        help="the summary on stdout: table (default; as wide as its rows when stdout is no terminal), "
        "plain (aligned text) or json (one object)",
    )
    parser.add_argument("--strict", action="store_true", help="refuse the batch when any task is invalid")
    args = add_config_args(parser).parse_intermixed_args(argv)
    quiet_worker_start_warnings()  # before anything imports Ray (an agent's or environment's module may)
    cfg = load_config(args.overrides, args.config)
    tasks = preflight(cfg, strict=args.strict)
    from harbor_ray.harbor.runner import run_batch  # Ray and Harbor load only once the checks passed

    return run_batch(cfg, tasks, fmt=args.format)
