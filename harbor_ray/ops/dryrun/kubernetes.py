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
    """One preflight line: what was checked, whether it passed, what was seen, and how to fix it."""

    name: str
    ok: bool
    detail: str
    fix: str = ""


def k8s_checks(config: K8sBackendConfig, *, probe_image: str | None = None) -> list[K8sCheck]:
    """Preflight for the Kubernetes backend. With probe_image, also start a labeled throwaway pod."""
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
    if probe_image and lines[-1].ok:
        lines.append(_check_probe(backend, probe_image))
    return lines


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


def _check_probe(backend: KubernetesBackend, image: str) -> K8sCheck:
    spec = SandboxSpec(run_label="harbor-ray-probe", image=image, cpus=0.1, memory_mb=64, ttl_s=120)
    started = time.monotonic()
    try:
        handle = backend.create(spec, backend.ensure_image(spec))
    except HarborRayError as e:
        return K8sCheck("k8s probe pod", False, str(e), "see the reason above (image, quota, node selector)")
    try:
        result = backend.exec(handle, ["true"], timeout_s=30)
    except HarborRayError as e:
        return K8sCheck("k8s probe pod", False, f"exec failed: {e}", "check pods/exec permissions and the kubelet")
    finally:
        backend.destroy(handle)
    if result.return_code != 0:
        return K8sCheck("k8s probe pod", False, f"`true` exited {result.return_code}", "check the image")
    return K8sCheck("k8s probe pod", True, f"{image} running and exec ok in {time.monotonic() - started:.1f}s")


def checks(cfg: Config, *, pod: bool) -> list[Check]:
    """`k8s_checks` as report lines; with `pod`, also start, exec in and delete a throwaway pod."""
    assert isinstance(cfg.backend, K8sBackendConfig)
    found = k8s_checks(cfg.backend, probe_image=BUSYBOX_IMAGE if pod else None)
    return [Check("pass" if c.ok else "fail", c.detail, c.fix, c.name) for c in found]
