"""Dryrun checks for the Kubernetes backend: one line per check, each with a fix.

`k8s_checks` checks a cluster before a run; checks that need an earlier one (the API needs a kubeconfig)
are not run after it fails, so the first failing line is the one to act on. `checks(cfg, pod=…)` is what
`harbor_ray.ops.dryrun` calls for every backend of this package. The kubernetes SDK is imported only
inside the checks (the backend through the registry), so this module imports without the k8s extra.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, NamedTuple, cast

from harbor_ray.backends import make_backend
from harbor_ray.backends.base import SandboxSpec
from harbor_ray.backends.images import BUSYBOX_IMAGE
from harbor_ray.backends.kubernetes.config import K8sBackendConfig
from harbor_ray.config import Config
from harbor_ray.errors import HarborRayError
from harbor_ray.ops.dryrun.report import Check
from harbor_ray.runtimes.recipes import recipe

if TYPE_CHECKING:
    from harbor_ray.backends.kubernetes.backend import KubernetesBackend

log = logging.getLogger(__name__)

# (verb, resource, subresource) the backend uses. Websocket exec is a GET (authorized as "get" on
# clusters before 1.35, as "create" too from then on), so both are checked.
NEEDED_PERMISSIONS = (
    ("create", "pods", ""),
    ("delete", "pods", ""),
    ("get", "pods", ""),
    ("list", "pods", ""),
    ("watch", "pods", ""),
    ("create", "pods", "exec"),
    ("get", "pods", "exec"),
)


class K8sCheck(NamedTuple):
    """One preflight line: what was checked, whether it passed, what was seen, and how to fix it.

    A line that did not pass is a failure, or with `warning` a warning (the run works, less bounded).
    """

    name: str
    ok: bool
    detail: str
    fix: str = ""
    warning: bool = False


_PROBE_SIZE = (0.1, 64)  # cpus, memory_mb of a probe pod that copies nothing


def k8s_checks(
    config: K8sBackendConfig,
    *,
    probe_image: str | None = None,
    pids_limit: int | None = None,
    runtime: str = "",
    agent_runtime: str = "",
    sandbox_size: tuple[float, int] = _PROBE_SIZE,
) -> list[K8sCheck]:
    """Preflight for the Kubernetes backend. With probe_image, also start a labeled throwaway pod; with
    pids_limit (the sandbox's), also say what bounds a pod's processes on the nodes pods can land on; with
    runtime (sandbox.runtime), also check its RuntimeClass exists (and run the probe pod under it); with
    agent_runtime (agent.runtime), whether its image is there, and the probe pod copies and mounts it, with the
    sandbox's (cpus, memory_mb) `sandbox_size`, which bound that copy as they bound a sandbox pod's."""
    where = "in-cluster config" if config.in_cluster else f"kubeconfig {config.kubeconfig or '(default)'}"
    try:
        backend = cast("KubernetesBackend", make_backend(config))
    except HarborRayError as e:
        fix = "set backend.kubeconfig to a readable kubeconfig (or backend.in_cluster=true inside a pod)"
        return [K8sCheck("k8s config", False, str(e), fix)]
    lines = [K8sCheck("k8s config", True, f"{where}, server {backend.host}")]
    try:
        version = backend.ping()
    except HarborRayError as e:
        return [*lines, K8sCheck("k8s API", False, str(e), "check the server address, network and credentials")]
    lines.append(K8sCheck("k8s API", True, f"{backend.host} answers, version {version}"))
    lines.append(_check_namespace(backend))
    if not lines[-1].ok:
        return lines
    lines.append(_check_permissions(backend))
    permitted = lines[-1].ok
    if pids_limit is not None:
        lines.append(_check_pids_limit(backend, pids_limit))
    if runtime:
        from harbor_ray.ops.sandbox_runtime import runtime_class

        found = runtime_class(backend, runtime)
        lines.append(K8sCheck("k8s runtime class", found.ok, found.detail))
        if not found.ok:
            return lines  # the probe pod would be refused for the same reason
    if agent_runtime:
        lines.append(_check_runtime(backend, agent_runtime, probe=bool(probe_image and permitted)))
        if not lines[-1].ok:
            agent_runtime = ""  # not built here (the probe would build it), or no probe
    if probe_image and permitted:
        size = sandbox_size if agent_runtime else _PROBE_SIZE
        lines.append(_check_probe(backend, probe_image, size, runtime, agent_runtime))
    return lines


def _check_runtime(backend: KubernetesBackend, name: str, *, probe: bool) -> K8sCheck:
    """Where the pods get agent.runtime's image: this machine's daemon (build_with_docker), which is checked, or
    the nodes' pull, which only a probe pod can check (no registry API is spoken here)."""
    import docker

    from harbor_ray.backends.docker.backend import DockerBackend
    from harbor_ray.runtimes.recipes import runtime_tag

    rec, ref = recipe(name), backend.runtime_image(name)
    how = f"an init container copies it into each pod, mounted read-only at {rec.mount_path}"
    if not backend.config.build_with_docker:
        seen = "the probe pod below pulls it" if probe else "not checked (no registry API here; dryrun --pod does)"
        fix = f"push {runtime_tag(rec)} as {ref} (python -m harbor_ray images build, then docker tag/push)"
        return K8sCheck("k8s agent runtime", probe, f"{name}: nodes pull {ref}, {seen}; {how}", fix, not probe)
    local = DockerBackend()
    try:
        size = local.client.images.get(runtime_tag(rec)).attrs.get("Size", 0) / 1e6
    except docker.errors.ImageNotFound:
        return K8sCheck(
            "k8s agent runtime",
            False,
            f"{name} ({runtime_tag(rec)}) is not built on this machine's Docker (backend.build_with_docker)",
            f"run python -m harbor_ray images build backend=k8s agent.runtime={name} (else the first pod builds it)",
            True,
        )
    except Exception as e:  # the daemon itself: say so, the run would fail the same way
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        return K8sCheck("k8s agent runtime", False, f"this machine's Docker: {first[:200]}", "start the daemon")
    finally:
        local.client.close()
    return K8sCheck("k8s agent runtime", True, f"{name} present ({ref}, {size:.0f} MB) on this machine's Docker; {how}")


def _check_namespace(backend: KubernetesBackend) -> K8sCheck:
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    ns = backend.namespace
    try:
        backend.call(client.CoreV1Api(backend.api_client).read_namespace, ns)
    except ApiException as e:
        if e.status == 404:
            return K8sCheck(
                "k8s namespace",
                False,
                f"namespace {ns} does not exist",
                f"kubectl create namespace {ns}, or set backend.namespace to an existing one",
            )
        return K8sCheck("k8s namespace", False, f"namespace {ns}: {e.status} {e.reason}", "check the API server")
    except HarborRayError as e:  # 403 on namespaces is common for namespaced users: not a failure by itself
        return K8sCheck("k8s namespace", True, f"namespace {ns}: cannot read it ({e}); assuming it exists")
    return K8sCheck("k8s namespace", True, f"namespace {ns} exists")


def _check_permissions(backend: KubernetesBackend) -> K8sCheck:
    from kubernetes import client

    authz = client.AuthorizationV1Api(backend.api_client)
    missing: list[str] = []
    for verb, resource, sub in NEEDED_PERMISSIONS:
        attrs = client.V1ResourceAttributes(
            namespace=backend.namespace, verb=verb, resource=resource, subresource=sub or None
        )
        review = client.V1SelfSubjectAccessReview(spec=client.V1SelfSubjectAccessReviewSpec(resource_attributes=attrs))
        try:
            allowed = backend.call(authz.create_self_subject_access_review, review).status.allowed
        except HarborRayError as e:
            return K8sCheck("k8s permissions", False, f"SelfSubjectAccessReview failed: {e}", "check the credentials")
        if not allowed:
            missing.append(f"{verb} {resource}{'/' + sub if sub else ''}")
    if missing:
        return K8sCheck(
            "k8s permissions",
            False,
            f"in namespace {backend.namespace} not allowed: {', '.join(missing)}",
            "grant them with a Role + RoleBinding (pods: create,delete,get,list,watch; pods/exec: create,get)",
        )
    return K8sCheck("k8s permissions", True, f"pods and pods/exec allowed in {backend.namespace}")


def _check_pids_limit(backend: KubernetesBackend, pids_limit: int) -> K8sCheck:
    """What bounds a pod's processes: a 1.20+ pod spec has no pids field, so only the kubelet's
    podPidsLimit (one value per node, read from its /configz through the API) can enforce sandbox.pids_limit."""
    import json

    from kubernetes import client

    name = "k8s pids limit"
    what = f"sandbox.pids_limit={pids_limit} has no pod field; each node's kubelet podPidsLimit bounds a pod"
    fix = "set podPidsLimit in the kubelet config of the sandbox nodes (KubeletConfiguration, or --pod-max-pids)"
    core = client.CoreV1Api(backend.api_client)
    selector = ",".join(f"{k}={v}" for k, v in backend.config.node_selector.items())
    limits: dict[str, int] = {}
    try:
        nodes = backend.call(core.list_node, label_selector=selector or None).items
        for node in nodes[:_PIDS_NODES]:
            raw = backend.call(
                core.connect_get_node_proxy_with_path, node.metadata.name, "configz", _preload_content=False
            )
            kubelet = json.loads(raw.data).get("kubeletconfig", {})
            limits[node.metadata.name] = int(kubelet.get("podPidsLimit", -1))
    except Exception as e:  # a namespaced user may not read nodes: say what is unknown, do not fail the run
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        return K8sCheck(name, False, f"{what}; could not read it: {first[:200]}", fix + " (and check it)", True)
    if not limits:
        return K8sCheck(name, False, f"{what}; no node matches backend.node_selector", fix, True)
    shown = ", ".join(f"{n}: {v if v > 0 else 'unlimited'}" for n, v in sorted(limits.items()))
    if any(v <= 0 for v in limits.values()):
        return K8sCheck(name, False, f"{what}; not enforced on every node ({shown})", fix, True)
    if any(v > pids_limit for v in limits.values()):
        return K8sCheck(name, False, f"{what}; looser than asked ({shown})", fix + f" to {pids_limit}", True)
    return K8sCheck(name, True, f"{what}: {shown}")


_PIDS_NODES = 8  # nodes asked for their kubelet config (a big pool's nodes share one config)


def _check_probe(
    backend: KubernetesBackend, image: str, size: tuple[float, int], runtime: str = "", agent_runtime: str = ""
) -> K8sCheck:
    spec = SandboxSpec(
        run_label="harbor-ray-probe",
        image=image,
        cpus=size[0],
        memory_mb=size[1],
        ttl_s=120,
        runtime=runtime,
        agent_runtime=agent_runtime,
    )
    started = time.monotonic()
    try:
        handle = backend.create(spec, backend.ensure_image(spec))
    except HarborRayError as e:
        return K8sCheck("k8s probe pod", False, str(e), "see the reason above (image, quota, node selector)")
    # with an agent runtime: its launchers are found on PATH in the read-only copy
    command = f"command -v {recipe(agent_runtime).launchers[0][0]}" if agent_runtime else "true"
    try:
        result = backend.exec(handle, command, timeout_s=30)
    except HarborRayError as e:
        return K8sCheck("k8s probe pod", False, f"exec failed: {e}", "check pods/exec permissions and the kubelet")
    finally:
        backend.destroy(handle)
    if result.return_code != 0:
        return K8sCheck("k8s probe pod", False, f"`{command}` exited {result.return_code}", "check the image")
    with_runtime = f" with agent runtime {agent_runtime} copied and on PATH" if agent_runtime else ""
    if runtime:
        with_runtime += f" under runtime class {runtime}"
    return K8sCheck(
        "k8s probe pod", True, f"{image} running{with_runtime} and exec ok in {time.monotonic() - started:.1f}s"
    )


def checks(cfg: Config, *, pod: bool) -> list[Check]:
    """`k8s_checks` as report lines; with `pod`, also start, exec in and delete a throwaway pod."""
    assert isinstance(cfg.backend, K8sBackendConfig)
    found = k8s_checks(
        cfg.backend,
        probe_image=BUSYBOX_IMAGE if pod else None,
        pids_limit=cfg.sandbox.pids_limit,
        runtime=cfg.sandbox.runtime or cfg.backend.runtime_class_name,
        agent_runtime=cfg.agent.runtime,
        sandbox_size=(cfg.sandbox.cpus, cfg.sandbox.memory_mb),
    )
    status = {True: "pass", False: "fail"}
    return [Check("warn" if c.warning else status[c.ok], c.detail, c.fix, c.name) for c in found]
