"""API requests per sandbox lifecycle on Kubernetes, read from the apiserver's own apiserver_request_total.

One trial = create (POST + a watch until Running), 3 execs, one upload, one download, destroy (DELETE +
confirmation). Runs against the test harness (a real kube-apiserver 1.20 + etcd from
scripts/k8s_harness.sh, with the test kubelet). Requests the test kubelet makes (binding, status,
its cluster-wide watch) are reported apart from the backend's.

    scripts/python bench/k8s_requests.py [--trials 5]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))

from support.k8s_cluster import BUSYBOX, Cluster, prepare_binaries, running_cluster  # noqa: E402

from harbor_ray.backends.base import SandboxSpec  # noqa: E402
from harbor_ray.backends.kubernetes.backend import KubernetesBackend  # noqa: E402

KUBELET_SUBRESOURCES = {"binding", "status"}
# Made by the apiserver itself (admission plugins, its own controllers), on its loopback client.
INTERNAL_RESOURCES = {
    "limitranges",
    "resourcequotas",
    "endpoints",
    "endpointslices",
    "leases",
    "services",
    "namespaces",
    "serviceaccounts",
    "secrets",
    "configmaps",
    "events",
}


def _settled_counts(cluster: Cluster) -> dict[tuple[str, str, str, str], float]:
    """Counts once long-running requests (watches, exec streams) of the step have been recorded."""
    time.sleep(0.5)
    return cluster.request_counts()


def _delta(before: dict, after: dict) -> tuple[Counter, Counter, Counter]:
    ours, kubelet, internal = Counter(), Counter(), Counter()
    for key, value in after.items():
        n = int(round(value - before.get(key, 0.0)))
        verb, resource, sub, scope = key
        if n <= 0 or not resource:
            continue
        name = f"{verb} {resource}{'/' + sub if sub else ''}"
        if sub in KUBELET_SUBRESOURCES or resource == "nodes" or scope == "cluster":
            kubelet[name] += n
        elif resource in INTERNAL_RESOURCES:
            internal[name] += n
        else:
            ours[name] += n
    return ours, kubelet, internal


def trial(backend: KubernetesBackend, cluster: Cluster, label: str, tmp: Path) -> dict[str, dict[str, int]]:
    spec = SandboxSpec(image=BUSYBOX, run_label=label, cpus=0.1, memory_mb=64, ttl_s=300)
    (tmp / "in.txt").write_text("payload\n")
    steps: dict[str, dict[str, int]] = {}
    kubelet_total: Counter = Counter()
    internal_total: Counter = Counter()
    handle = None

    def step(name: str, fn) -> None:  # noqa: ANN001
        before = _settled_counts(cluster)
        fn()
        ours, kubelet, internal = _delta(before, _settled_counts(cluster))
        steps[name] = dict(ours)
        kubelet_total.update(kubelet)
        internal_total.update(internal)

    def create() -> None:
        nonlocal handle
        handle = backend.create(spec, BUSYBOX)

    step("create", create)
    step("exec x3", lambda: [backend.exec(handle, c) for c in (["true"], ["echo", "hi"], "ls / >/dev/null")])
    step("upload", lambda: backend.upload(handle, str(tmp / "in.txt"), "/tmp/in.txt"))
    step("download", lambda: backend.download(handle, "/tmp/in.txt", str(tmp / "out.txt")))
    step("destroy", lambda: backend.destroy(handle))
    steps["not ours: test kubelet"] = dict(kubelet_total)
    steps["not ours: apiserver internal"] = dict(internal_total)
    return steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=5)
    args = parser.parse_args()
    binaries = prepare_binaries()
    with (
        tempfile.TemporaryDirectory(prefix="harbor-ray-k8s-bench-") as tmp,
        running_cluster(Path(tmp), binaries) as cluster,
    ):
        backend = KubernetesBackend(cluster.config())
        trials = [trial(backend, cluster, f"bench-{i}", Path(tmp)) for i in range(args.trials)]
        backend.close()
    totals = [sum(n for step, c in t.items() if not step.startswith("not ours") for n in c.values()) for t in trials]
    print(
        json.dumps(
            {
                "bench": "k8s_requests",
                "apiserver": "kube-apiserver v1.20.2 (Debian bookworm source), test kubelet",
                "trials": args.trials,
                "backend_requests_per_trial": {
                    "median": statistics.median(totals),
                    "min": min(totals),
                    "max": max(totals),
                },
                "per_step_first_trial": trials[0],
                "per_step_last_trial": trials[-1],
                "backend_identical_across_trials": len(
                    {
                        json.dumps({k: v for k, v in t.items() if not k.startswith("not")}, sort_keys=True)
                        for t in trials
                    }
                )
                == 1,
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
