"""`python -m harbor_ray images build tasks=…`: build a dataset's task images on every host ahead of training.

The first RL step hands the pool hundreds of leases of different task images; without this, each host builds
them all then, while the leases wait. Here every task under `tasks=` is read as `run` reads it (`task_spec`),
the distinct build contexts are kept (the tag is the content hash of `environment/`, so identical dirs share
one image), and each is built on every host the pool would use (`pool.hosts`, or the one default host, or one
per Ray node offering `pool.sandbox_resource`) through the backend's own `ensure_image`, which finds an image
already there by its tag and labels what it builds (`harbor-run=<run_label>`, `harbor-ray/kind=image`).

At most `max_creates` builds run at once per host: `pool.hosts[i].max_concurrent_creates`, else
`backend.max_concurrent_creates`, else `pool.max_concurrent_creates` (the bound the pool puts on that host's
starts, which build on a cold image). Exit 0 when every image is built or present, 1 when any failed (each
failure with its build log's tail), 2 for bad input (through the CLI, one line naming the field).
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harbor_ray.backends.base import SandboxSpec
from harbor_ray.backends.docker.config import DockerBackendConfig
from harbor_ray.backends.images import env_image_tag
from harbor_ray.backends.kubernetes.config import K8sBackendConfig
from harbor_ray.config import Config, load_config
from harbor_ray.errors import ConfigError, HarborRayError
from harbor_ray.harbor.spec import discover_tasks, task_spec
from harbor_ray.ops.args import add_config_args
from harbor_ray.pool.hosts import NODE_ID_LABEL, Host, configured_hosts, has_node, node_hosts, task_options
from harbor_ray.runtimes.recipes import recipe, runtime_tag

log = logging.getLogger(__name__)

_THIS_NODE = "<this node>"  # the default host's node id before Ray (if any) names it
_RAY_SLACK_S = 120.0  # scheduling a build task on its node, on top of backend.build_timeout_s


@dataclass
class TaskImage:
    """One distinct build context and the tasks that share it."""

    tag: str
    context: Path
    tasks: list[Path] = field(default_factory=list)


@dataclass
class Outcome:
    host: str
    image: TaskImage
    status: str  # built | present | failed
    detail: str = ""


def task_images(cfg: Config, tasks: list[Path]) -> tuple[list[TaskImage], list[Path]]:
    """The distinct images to build (by tag, first task's dir as context), and the tasks naming a prebuilt
    `docker_image` in task.toml (nothing to build: the pool runs that image as it is)."""
    images: dict[str, TaskImage] = {}
    prebuilt = []
    for task in tasks:
        spec = task_spec(cfg, task)
        if not spec.build_context:
            prebuilt.append(task)
            continue
        tag = env_image_tag(spec.build_context)
        images.setdefault(tag, TaskImage(tag, Path(spec.build_context))).tasks.append(task)
    return list(images.values()), prebuilt


def build_one(backend_config: Any, spec: SandboxSpec) -> tuple[str, str]:
    """Run next to the host's daemon: ("present" | "built", "") or ("failed", the one-line reason).

    Presence is read first, on the daemon that builds (this node's own for a backend that builds on the
    local Docker), because `ensure_image` returns the tag either way.
    """
    import docker.errors

    from harbor_ray.backends import make_backend
    from harbor_ray.backends.docker.backend import DockerBackend

    builder = DockerBackendConfig() if backend_config.builds_on_local_docker() else backend_config
    if not spec.build_context and spec.agent_runtime:
        return _build_runtime(builder, spec, pods=backend_config.kind == "k8s")
    tag = env_image_tag(spec.build_context or "")
    try:
        daemon = DockerBackend(builder)
        try:
            daemon.client.images.get(tag)
            return "present", ""
        except docker.errors.ImageNotFound:
            pass
        finally:
            daemon.client.close()
        backend = make_backend(backend_config)
        backend.ensure_image(spec)
        return "built", ""
    except HarborRayError as e:
        return "failed", str(e)
    except Exception as e:  # an SDK error we did not type: still one report line, the others go on
        return "failed", f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"


def _build_runtime(builder: Any, spec: SandboxSpec, *, pods: bool = False) -> tuple[str, str]:
    """An agent runtime on this host's daemon: ("present" | "built" | "failed", detail). For pods (Kubernetes
    nodes running this daemon's images) only its image: each pod's init container copies the tree."""
    import docker.errors

    from harbor_ray.backends.docker import runtime as R
    from harbor_ray.backends.docker.backend import DockerBackend

    try:
        daemon = DockerBackend(builder)
        try:
            if pods:
                built = R.BUILDS.copy()
                tag = daemon.ensure_runtime_image(spec.agent_runtime)
                status = "built" if R.BUILDS != built else "present"
                return status, f"{tag}, copied into each pod by an init container"
            vol = R.volume_name(R.runtime_tag(R.recipe(spec.agent_runtime)))
            try:
                daemon.client.volumes.get(vol + "-ready")
                return "present", ""
            except docker.errors.NotFound:
                pass
            R.ensure_runtime(daemon.client, daemon.endpoint.url, spec.agent_runtime, daemon.build_runtime)
            return "built", ""
        finally:
            daemon.client.close()
    except HarborRayError as e:
        return "failed", str(e)
    except Exception as e:  # an SDK error we did not type: still one report line
        return "failed", f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"


def build_runtimes(cfg: Config, hosts: list[Host], runners: dict[str, Any]) -> list[str]:
    """The configured agent runtime (`agent.runtime`) on every host's daemon: one report line per host (Kubernetes:
    this machine's daemon, plus what the pods pull when that is a registry's copy)."""
    if not cfg.agent.runtime:
        return []
    lines = []
    for host in hosts:
        spec = SandboxSpec(run_label=cfg.run_label, agent_runtime=cfg.agent.runtime)
        status, detail = runners[host.name](host.backend_config, spec)
        lines.append(f"agent runtime {cfg.agent.runtime} on {host.name}: {status}{': ' + detail if detail else ''}")
    if isinstance(cfg.backend, K8sBackendConfig) and cfg.backend.image_registry:
        tag = runtime_tag(recipe(cfg.agent.runtime))
        ref = f"{cfg.backend.image_registry.rstrip('/')}/{tag}"
        push = f"docker tag {tag} {ref}, docker push"
        lines.append(f"agent runtime {cfg.agent.runtime}: pods pull {ref}; push it there ({push})")
    return lines


_remote_build: Any = None


def _ray_runner(cfg: Config, host: Host) -> Callable[[Any, SandboxSpec], tuple[str, str]]:
    """`build_one` as a Ray task on the host's node (no CPU taken, like the pool's reaper)."""
    global _remote_build
    import ray

    if _remote_build is None:
        _remote_build = ray.remote(build_one)
    options = task_options(host) | {"max_retries": 0}
    timeout = cfg.backend.build_timeout_s + _RAY_SLACK_S

    def run(backend_config: Any, spec: SandboxSpec) -> tuple[str, str]:
        ref = _remote_build.options(**options).remote(backend_config, spec)
        try:
            return ray.get(ref, timeout=timeout)  # type: ignore[no-any-return]
        except ray.exceptions.GetTimeoutError:
            ray.cancel(ref, force=True)
            return "failed", f"no result within {timeout:.0f}s (backend.build_timeout_s + scheduling); raise it"
        except ray.exceptions.RayError as e:
            return "failed", f"build task on {host.name} died: {str(e).strip().splitlines()[0]}"

    return run


def _is_local(host: Host) -> bool:
    return not host.spread and host.selector == {NODE_ID_LABEL: _THIS_NODE}


def plan_hosts(cfg: Config) -> tuple[list[Host], dict[str, Callable[[Any, SandboxSpec], tuple[str, str]]]]:
    """The hosts the pool would use, each with how its builds run.

    Hosts reachable from here — this node's own daemon (the default host) or a daemon at a URL (a remote
    daemon; the k8s backend, which builds on this machine's Docker) — are built in threads of this process:
    that is the same daemon the pool's actors would reach, and no Ray is started for them. A host pinned to
    other Ray nodes (`pool.hosts[i].node_labels`, or one per node offering `pool.sandbox_resource`) is only
    reachable on its node, so its builds are Ray tasks there; then Ray starts (or is joined) as `run` does.
    """
    if cfg.backend.kind == "k8s" and not cfg.backend.builds_on_local_docker():
        msg = (
            "backend.build_with_docker=false: a k8s cluster pulls task images from backend.image_registry, so "
            "there is nothing to build here; set backend.build_with_docker=true when the nodes run local images"
        )
        raise ConfigError(msg)
    hosts = configured_hosts(cfg.backend, cfg.pool, pool_node_id=_THIS_NODE)
    if hosts and all(h.spread or _is_local(h) for h in hosts):
        return hosts, {h.name: build_one for h in hosts}
    import ray

    from harbor_ray.harbor.runner import ensure_ray

    ensure_ray(cfg)
    node_id = ray.get_runtime_context().get_node_id()
    nodes = ray.nodes()
    hosts = configured_hosts(cfg.backend, cfg.pool, pool_node_id=node_id) or node_hosts(cfg.backend, cfg.pool, nodes)
    if not hosts:
        msg = f"pool.sandbox_resource={cfg.pool.sandbox_resource}: no alive Ray node offers it; start one that does"
        raise ConfigError(msg)
    for host in hosts:
        host.alive = host.spread or has_node(host, cfg.pool, nodes)
    return hosts, {h.name: (build_one if h.spread else _ray_runner(cfg, h)) for h in hosts}


def build_all(cfg: Config, images: list[TaskImage], hosts: list[Host], runners: dict[str, Any]) -> list[Outcome]:
    """Every image on every host, `host.max_creates` at a time per host, with a progress bar on stderr."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    outcomes: list[Outcome] = []
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=Console(stderr=True)) as progress:
        bar = progress.add_task("building task images", total=len(images) * len(hosts))
        pools = [ThreadPoolExecutor(max_workers=h.max_creates, thread_name_prefix=f"build-{h.name}") for h in hosts]
        try:
            futures: dict[Future[tuple[str, str]], tuple[Host, TaskImage]] = {}
            for host, executor in zip(hosts, pools, strict=True):
                for image in images:
                    if not host.alive:
                        outcomes.append(Outcome(host.name, image, "failed", "no alive Ray node matches this host"))
                        progress.advance(bar)
                        continue
                    spec = SandboxSpec(run_label=cfg.run_label, build_context=str(image.context), force_build=False)
                    futures[executor.submit(runners[host.name], host.backend_config, spec)] = (host, image)
            for future in as_completed(futures):
                host, image = futures[future]
                status, detail = future.result()
                outcomes.append(Outcome(host.name, image, status, detail))
                progress.advance(bar)
                progress.update(bar, description=f"{status} {image.tag} on {host.name}")
        finally:
            for executor in pools:
                executor.shutdown(wait=True, cancel_futures=True)
    return outcomes


def summary(outcomes: list[Outcome], images: list[TaskImage], hosts: list[Host], prebuilt: list[Path]) -> str:
    counts = {s: sum(o.status == s for o in outcomes) for s in ("built", "present", "failed")}
    tasks = sum(len(i.tasks) for i in images) + len(prebuilt)
    lines = [
        f"{tasks} task(s), {len(images)} distinct image(s), {len(hosts)} host(s): {', '.join(h.name for h in hosts)}",
        f"built {counts['built']}, present {counts['present']}, failed {counts['failed']}",
    ]
    if prebuilt:
        more = ", …" if len(prebuilt) > 3 else ""
        names = ", ".join(str(t) for t in prebuilt[:3]) + more
        lines.append(f"not built ({len(prebuilt)} task(s) name a docker_image in task.toml): {names}")
    for o in sorted((o for o in outcomes if o.status == "failed"), key=lambda o: (o.image.tag, o.host)):
        names = ", ".join(str(t) for t in o.image.tasks[:3]) + (", …" if len(o.image.tasks) > 3 else "")
        lines.append(f"FAILED {o.image.tag} on {o.host} (tasks: {names}):")
        lines += [f"    {part}" for part in o.detail.split(" | ")]
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m harbor_ray images build",
        description="Build every distinct task image under tasks= on every host the pool would use.",
    )
    args = add_config_args(parser).parse_intermixed_args(argv)
    cfg = load_config(args.overrides, args.config)
    images, prebuilt = task_images(cfg, discover_tasks(cfg.tasks))
    hosts, runners = plan_hosts(cfg)
    runtimes = build_runtimes(cfg, hosts, runners)
    outcomes = build_all(cfg, images, hosts, runners) if images else []
    print("\n".join([*runtimes, summary(outcomes, images, hosts, prebuilt)]))
    failed = any(o.status == "failed" for o in outcomes) or any(": failed" in line for line in runtimes)
    return 1 if failed else 0
