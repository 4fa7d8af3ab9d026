"""Settings of the Kubernetes backend: where the API is, which namespace, and how pods are placed."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar


@dataclass
class K8sBackendConfig:
    """One pod per sandbox in `namespace` of the cluster named by `kubeconfig` (or the in-cluster config).

    Attributes:
        kind: k8s.
        kubeconfig: the kubeconfig file; "" -> $KUBECONFIG or ~/.kube/config (unless in_cluster).
        context: the kubeconfig context; "" -> its current-context.
        namespace: where the pods go.
        in_cluster: use the pod's service account (KUBERNETES_SERVICE_HOST and its token).
        image_registry: prefix for image names, e.g. registry.example.com/team (task images and the agent runtime's,
            harbor-ray/runtime-<name>:<digest>, which each pod's init container copies; docs/kubernetes.md).
        build_with_docker: build a task's environment/Dockerfile and the agent runtime on this machine's Docker
            daemon, for nodes that run images from that daemon (kind/minikube with the docker driver, a single-node
            cluster). With image_registry set, the built tag is what the pods pull: push it there (harbor_ray does not).
        build_timeout_s: the timeout of one such build.
        node_selector: node labels every pod requires.
        tolerations: as in a pod spec (camelCase keys).
        runtime_class_name: e.g. gvisor, kata.
        image_pull_secrets: names of secrets in the namespace.
        image_pull_policy: images are tagged by content, so IfNotPresent finds the right one.
        run_as_non_root: refuse images that run as root.
        start_timeout_s: how long a pod may take to run.
        max_concurrent_creates: pod creations in flight at once.
        exec_output_limit_bytes: per stream (stdout, stderr) of one exec.
        transfer_timeout_s: the timeout of one upload or download.

    >>> K8sBackendConfig(kubeconfig="~/.kube/config", namespace="rl").host_name()
    'k8s:rl'
    """

    supports_hosts: ClassVar[bool] = False  # placement is the scheduler's: node_selector and quota
    image_tar: ClassVar[bool] = True  # the pod's own tar extracts uploads (KubernetesBackend.put_archive)

    kind: str = "k8s"
    kubeconfig: str = ""
    context: str = ""
    namespace: str = "default"
    in_cluster: bool = False
    image_registry: str = ""
    build_with_docker: bool = False
    build_timeout_s: float = 1800.0
    node_selector: dict[str, str] = field(default_factory=dict)
    tolerations: list[dict[str, Any]] = field(default_factory=list)
    runtime_class_name: str = ""
    image_pull_secrets: list[str] = field(default_factory=list)
    image_pull_policy: str = "IfNotPresent"
    run_as_non_root: bool = False
    start_timeout_s: float = 120.0
    max_concurrent_creates: int = 8
    exec_output_limit_bytes: int = 10_000_000
    transfer_timeout_s: float = 600.0

    @property
    def slots(self) -> int:
        """No per-daemon bound: the pool's max_sandboxes and the namespace's quota bound pods."""
        return 0

    def validate(self) -> None:
        """Nothing to check without I/O: the kubeconfig is read when the backend is made."""

    def host_name(self) -> str | None:
        return f"k8s:{self.namespace}"

    def target(self) -> str:
        where = "in-cluster" if self.in_cluster else (self.kubeconfig or "default kubeconfig")
        return f"{where}, namespace {self.namespace}"

    def builds_on_local_docker(self) -> bool:
        return self.build_with_docker
