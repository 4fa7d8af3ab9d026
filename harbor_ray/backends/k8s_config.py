"""Config of the Kubernetes backend: where the API is, which namespace, and how pods are placed."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class K8sBackendConfig:
    """One pod per sandbox in `namespace` of the cluster named by `kubeconfig` (or the in-cluster config).

    >>> K8sBackendConfig(kubeconfig="~/.kube/config", namespace="rl").kind
    'k8s'
    """

    kind: str = "k8s"
    kubeconfig: str = ""  # "" -> $KUBECONFIG or ~/.kube/config (unless in_cluster)
    context: str = ""  # "" -> the kubeconfig's current-context
    namespace: str = "default"
    in_cluster: bool = False  # use the pod's service account (KUBERNETES_SERVICE_HOST + token)
    image_registry: str = ""  # prefix for image names, e.g. registry.example.com/team
    # Build a task's environment/Dockerfile on this machine's Docker daemon, for nodes that run images
    # from that same daemon (kind/minikube with the docker driver, a single-node cluster). With
    # image_registry set, the built tag is what the pods pull: push it there (harbor_ray does not push).
    build_with_docker: bool = False
    node_selector: dict[str, str] = field(default_factory=dict)
    tolerations: list[dict[str, Any]] = field(default_factory=list)  # as in a pod spec (camelCase keys)
    runtime_class_name: str = ""  # e.g. gvisor, kata
    image_pull_secrets: list[str] = field(default_factory=list)
    image_pull_policy: str = "IfNotPresent"  # images are tagged by content, so a present one is the right one
    run_as_non_root: bool = False
    start_timeout_s: float = 120.0
    max_concurrent_creates: int = 8
    exec_output_limit_bytes: int = 10_000_000  # per stream (stdout, stderr) of one exec
    transfer_timeout_s: float = 600.0  # one upload or download
