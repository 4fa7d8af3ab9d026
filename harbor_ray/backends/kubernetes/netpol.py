"""The "gateway only" network of one pod: a NetworkPolicy that lets it reach its endpoints' IP:ports, nothing else.

Kubernetes policies are IP-based, so every endpoint must be an IP address. The policy selects its one pod by
`harbor-ray/sandbox=<pod name>`, is created before the pod (so the CNI can enforce it from the pod's first
packet) and deleted with it. Enforcement is the CNI's: a cluster without a policy-enforcing CNI ignores it.
See docs/network.md.
"""

from __future__ import annotations

import ipaddress
from typing import Any

from harbor_ray import labels as L
from harbor_ray.backends.base import SandboxSpec
from harbor_ray.backends.egress import GATEWAY_HOSTNAME, Endpoint, endpoints, restricted, sandbox_env
from harbor_ray.errors import ConfigError


def ip_endpoints(spec: SandboxSpec) -> list[Endpoint]:
    """The spec's endpoints; ConfigError when one is a hostname (a NetworkPolicy cannot name hosts)."""
    found = endpoints(spec)
    for e in found:
        if not e.is_ip:
            key = "sandbox.gateway" if e.name == GATEWAY_HOSTNAME else "sandbox.egress"
            msg = f"{key}={e.host}:{e.port}: the k8s backend needs an IP address (NetworkPolicy is IP-based)"
            raise ConfigError(msg)
    return found


def policy_manifest(name: str, labels: dict[str, str], allowed: list[Endpoint]) -> dict[str, Any]:
    """Selects the pod `name`; no ingress; egress only to each endpoint's address and TCP port."""
    policy_labels = {k: v for k, v in labels.items() if k in {L.RUN, L.OWNER, L.POOL, L.CREATED, L.TTL}}
    policy_labels |= {L.KIND: "network-policy", L.SANDBOX: name}
    egress = [
        {
            "to": [{"ipBlock": {"cidr": str(ipaddress.ip_network(e.host))}}],
            "ports": [{"protocol": "TCP", "port": e.port}],
        }
        for e in allowed
    ]
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": name, "labels": policy_labels},
        "spec": {
            "podSelector": {"matchLabels": {L.SANDBOX: name}},
            "policyTypes": ["Ingress", "Egress"],
            "ingress": [],
            "egress": egress,
        },
    }


def apply_to_pod(body: dict[str, Any], spec: SandboxSpec, allowed: list[Endpoint]) -> None:
    """The pod's side: the selector label (restricted only), the gateway's name in /etc/hosts, its URL in env."""
    name = body["metadata"]["name"]
    if restricted(spec):
        body["metadata"]["labels"][L.SANDBOX] = name
    gateway = [e for e in allowed if e.name == GATEWAY_HOSTNAME]
    if gateway:
        body["spec"]["hostAliases"] = [{"ip": gateway[0].host, "hostnames": [GATEWAY_HOSTNAME]}]
    container = body["spec"]["containers"][0]
    container["env"] = container.get("env", []) + [{"name": k, "value": v} for k, v in sandbox_env(spec).items()]
