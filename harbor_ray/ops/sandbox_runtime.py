"""Is `sandbox.runtime` there where sandboxes will run? Registered on every Docker daemon the config names, or a
RuntimeClass of that name on Kubernetes.

`run` asks before Ray starts (a missing runtime is one ConfigError line naming the field and the fix, and no
sandbox is made); `dryrun` shows the same answers as report lines. The daemons checked are the backend's and
every `pool.hosts[i].url`; an entry without a url is the local daemon of a Ray node, which only a sandbox
start on that node can reach (its error then names the same fix).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from harbor_ray.backends.docker.config import DockerBackendConfig
from harbor_ray.backends.kubernetes.config import K8sBackendConfig
from harbor_ray.config import Config
from harbor_ray.errors import ConfigError, HarborRayError

__all__ = ["RuntimeAnswer", "check_runtime", "docker_answers", "docker_settings", "runtime_class"]

DEFAULT = "the default runtime (sandbox.runtime='')"
QUESTION_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class RuntimeAnswer:
    """One daemon's (or cluster's) answer: where, whether the runtime is there, the line to show, and whether
    the daemon answered at all (one that did not is the pool's circuit breaker's business, not a config error)."""

    where: str
    ok: bool
    detail: str
    reached: bool = True


def docker_settings(cfg: Config) -> list[DockerBackendConfig]:
    """The Docker daemons this config reaches from here: the backend's, then each `pool.hosts` url once."""
    assert isinstance(cfg.backend, DockerBackendConfig)
    found = [cfg.backend]
    seen = {cfg.backend.host}
    for entry in cfg.pool.hosts or []:
        url = str(entry.get("url") or "") if isinstance(entry, dict) else ""
        if url and url not in seen:
            seen.add(url)
            found.append(cfg.backend.at_url(url))
    return found


def docker_answers(cfg: Config) -> list[RuntimeAnswer]:
    """`sandbox.runtime` on each daemon of `docker_settings` (from `docker info`'s Runtimes)."""
    from harbor_ray.backends.docker.backend import DockerBackend

    runtime = cfg.sandbox.runtime
    answers = []
    for settings in docker_settings(cfg):
        # one short question per daemon (as run's ping): an unreachable one must not hold the run for minutes
        settings = dataclasses.replace(settings, timeout_s=min(settings.timeout_s, QUESTION_TIMEOUT_S))
        try:
            backend = DockerBackend(settings)
            have = backend.runtimes()
        except HarborRayError as e:
            answers.append(RuntimeAnswer(settings.host or "local", False, str(e), reached=False))
            continue
        url = backend.endpoint.url
        if runtime in have:
            answers.append(RuntimeAnswer(url, True, f"{runtime} registered at {url} ({', '.join(have)})"))
        else:
            answers.append(RuntimeAnswer(url, False, backend.runtime_fix(runtime)))
        backend.client.close()
    return answers


def runtime_class(backend: Any, runtime: str) -> RuntimeAnswer:
    """The RuntimeClass `runtime` on the cluster of a KubernetesBackend (node.k8s.io/v1, Kubernetes 1.20+)."""
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    try:
        rc = backend.call(client.NodeV1Api(backend.api_client).read_runtime_class, runtime)
    except ApiException as e:
        if e.status == 404:
            return RuntimeAnswer(backend.host, False, missing_class(runtime, backend.host))
        return RuntimeAnswer(backend.host, False, f"RuntimeClass {runtime} at {backend.host}: {e.status} {e.reason}")
    except HarborRayError as e:
        return RuntimeAnswer(backend.host, False, str(e), reached=False)
    return RuntimeAnswer(backend.host, True, f"RuntimeClass {runtime} (handler {rc.handler}) at {backend.host}")


def missing_class(runtime: str, host: str) -> str:
    return (
        f"sandbox.runtime={runtime}: no RuntimeClass {runtime} at {host}; create one whose handler the nodes' "
        f"container runtime knows (docs/kubernetes.md) or set sandbox.runtime=''"
    )


def check_runtime(cfg: Config) -> str:
    """For `run`: one line saying where `sandbox.runtime` was found; ConfigError (the first such line) when a
    daemon or the cluster that answered lacks it."""
    runtime = cfg.sandbox.runtime or getattr(cfg.backend, "runtime_class_name", "")
    if not runtime:
        return DEFAULT
    if isinstance(cfg.backend, DockerBackendConfig):
        answers = docker_answers(cfg)
    elif isinstance(cfg.backend, K8sBackendConfig):
        from harbor_ray.backends import make_backend

        backend = make_backend(cfg.backend)
        answers = [runtime_class(backend, runtime)]
        backend.close()  # type: ignore[attr-defined]
    else:
        return f"{runtime} (not checked for backend.kind={cfg.backend.kind})"
    missing = [a for a in answers if a.reached and not a.ok]
    if missing:
        raise ConfigError(missing[0].detail)
    return "; ".join(a.detail for a in answers if a.ok) or f"{runtime} (no daemon answered)"
