"""Pods through the Kubernetes backend vs the raw Python client, on the real node and at scale; one JSON line.

On the real single-node cluster (tests/support/real_node.py: kubelet, scheduler, controller-manager from
scripts/k8s_harness.sh, on this machine's Docker Engine):
- pod create -> Running, p50/p99, for `--serial` pods one after another and `--parallel` at once, through
  `KubernetesBackend.create` and through the raw client (create_namespaced_pod + a watch until Running);
- delete -> the pod's containers stopped on the engine (the backend's destroy returns when the API has no pod);
- exec: p50 of `true` through the backend and through the raw client's `stream()`, interleaved; their ratio;
- API requests of one sandbox lifecycle like a trial's (create, 5 execs, an upload, a download, destroy),
  from the apiserver's audit log of the benchmark's user (the kubelet's own traffic is not in it).
Then against the apiserver with the test kubelet as a hollow node (no containers): `--pods` pods created
and deleted through the backend at `--concurrency`: Running p99, the apiserver's request rate, pods left.

    scripts/python bench/k8s_pods.py [--pods 2000] [--concurrency 32] [--serial 20] [--parallel 20]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))

from support.k8s_cluster import BUSYBOX, Cluster, prepare_binaries, running_cluster  # noqa: E402
from support.real_node import audit_counts, running_real_node  # noqa: E402

from harbor_ray import labels as L  # noqa: E402
from harbor_ray.backends.base import SandboxSpec  # noqa: E402
from harbor_ray.backends.kubernetes import pods as P  # noqa: E402
from harbor_ray.backends.kubernetes.backend import KubernetesBackend  # noqa: E402


def say(*a: Any) -> None:
    print(*a, file=sys.stderr, flush=True)


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return round(xs[min(len(xs) - 1, int(q * len(xs)))], 3) if xs else float("nan")


def spec(label: str) -> SandboxSpec:
    return SandboxSpec(image=BUSYBOX, run_label=label, cpus=0.05, memory_mb=32, ttl_s=600)


class Raw:
    """The raw client's way: create the same pod, watch it until Running, delete it with grace 0."""

    def __init__(self, backend: KubernetesBackend) -> None:
        from kubernetes import client

        self.backend, self.core = backend, client.CoreV1Api(client.ApiClient(backend._cfg))

    def create(self, label: str, i: int) -> str:
        from kubernetes import watch

        name = f"{label}-raw{i}"
        s = spec(label)
        body = P.pod_manifest(
            self.backend.config, name, s, BUSYBOX, L.sandbox_labels(label, pool="", owner="bench", ttl_s=600)
        )
        self.core.create_namespaced_pod(self.backend.namespace, body)
        w = watch.Watch()
        one = f"metadata.name={name}"
        for ev in w.stream(
            self.core.list_namespaced_pod, self.backend.namespace, field_selector=one, timeout_seconds=120
        ):
            st = ev["object"].status
            if st.phase == "Running" and all(c.state.running for c in st.container_statuses or [None]):
                w.stop()
                break
        return name

    def delete(self, name: str) -> None:
        self.core.delete_namespaced_pod(name, self.backend.namespace, grace_period_seconds=0)

    def exec(self, name: str) -> None:
        from kubernetes.stream import stream

        stream(self.core.connect_get_namespaced_pod_exec, name, self.backend.namespace, container=P.CONTAINER,
               command=["true"], stdout=True, stderr=True, stdin=False, tty=False)  # fmt: skip


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def starts(n: int, workers: int, create: Callable[[int], Any], delete: Callable[[Any], None]) -> list[float]:
    def one(i: int) -> tuple[float, Any]:
        return timed(lambda: create(i))

    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = list(pool.map(one, range(n)))
        list(pool.map(lambda r: delete(r[1]), results))
    return [r[0] for r in results]


def containers_stopped(client: Any, pod: str, deadline_s: float = 30.0) -> float:
    t = time.perf_counter()
    while client.api.containers(filters={"label": f"io.kubernetes.pod.name={pod}"}):
        if time.perf_counter() - t > deadline_s:
            break
        time.sleep(0.05)
    return time.perf_counter() - t


def real_node(cl: Cluster, n_serial: int, n_parallel: int) -> dict[str, Any]:
    import docker

    backend = KubernetesBackend(cl.config(max_concurrent_creates=max(8, n_parallel)))
    raw, dc = Raw(backend), docker.from_env()
    label = "bench-pods"
    out: dict[str, Any] = {}
    say(f"real node: {n_serial} serial creates, backend and raw")
    gone: list[float] = []

    def destroy(h: Any) -> None:
        backend.destroy(h)
        gone.append(containers_stopped(dc, h.name))

    b_serial = starts(n_serial, 1, lambda _i: backend.create(spec(label), BUSYBOX), destroy)
    r_serial = starts(n_serial, 1, lambda i: raw.create(label, i), raw.delete)
    say(f"real node: {n_parallel} concurrent creates, backend and raw")
    b_par = starts(n_parallel, n_parallel, lambda _i: backend.create(spec(label), BUSYBOX), backend.destroy)
    r_par = starts(n_parallel, n_parallel, lambda i: raw.create(label, 1000 + i), raw.delete)
    for name, xs in (("backend_serial", b_serial), ("raw_serial", r_serial), ("backend_concurrent", b_par),
                     ("raw_concurrent", r_par)):  # fmt: skip
        out[f"running_{name}_p50_s"], out[f"running_{name}_p99_s"] = pct(xs, 0.5), pct(xs, 0.99)
    out["delete_to_containers_stopped_p50_s"], out["delete_to_containers_stopped_max_s"] = pct(gone, 0.5), pct(gone, 1)

    say("real node: exec, interleaved")
    h = backend.create(spec(label), BUSYBOX)
    ours, theirs = [], []
    for _ in range(30):
        ours.append(timed(lambda: backend.exec(h, ["true"]))[0])
        theirs.append(timed(lambda: raw.exec(h.name))[0])
    backend.destroy(h)
    out["exec_backend_p50_ms"] = round(statistics.median(ours) * 1000, 1)
    out["exec_raw_p50_ms"] = round(statistics.median(theirs) * 1000, 1)
    out["exec_ratio"] = round(statistics.median(ours) / statistics.median(theirs), 2)

    say("real node: API requests of one trial-like lifecycle")
    with tempfile.TemporaryDirectory() as tmp:
        f = Path(tmp) / "f"
        f.write_text("x")
        time.sleep(1)
        before = audit_counts(cl)
        h = backend.create(spec(label), BUSYBOX)
        for _ in range(5):
            backend.exec(h, ["true"])
        backend.upload(h, str(f), "/tmp/f")
        backend.download(h, "/tmp/f", str(Path(tmp) / "g"))
        backend.destroy(h)
        time.sleep(2)  # long requests (watch, exec) are logged when they end
        after = audit_counts(cl)
    per_trial = {k: v - before.get(k, 0) for k, v in after.items() if v - before.get(k, 0) > 0}
    out["api_requests_per_trial"] = sum(per_trial.values())
    out["api_requests_per_trial_by_kind"] = per_trial
    out["pods_left_real"] = len(cl.pods(f"{L.RUN}={label}"))
    return out


def hollow(cl: Cluster, n: int, concurrency: int) -> dict[str, Any]:
    backend = KubernetesBackend(cl.config(max_concurrent_creates=concurrency, start_timeout_s=300))
    label = "bench-hollow"
    say(f"hollow node: {n} pods at concurrency {concurrency}")
    before = sum(cl.request_counts().values())
    t0 = time.perf_counter()
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        results = list(pool.map(lambda _i: timed(lambda: backend.create(spec(label), BUSYBOX)), range(n)))
        t_created = time.perf_counter()
        list(pool.map(lambda r: backend.destroy(r[1]), results))
    wall = time.perf_counter() - t0
    requests = sum(cl.request_counts().values()) - before
    xs = [r[0] for r in results]
    return {
        "hollow_pods": n,
        "hollow_concurrency": concurrency,
        "hollow_running_p50_s": pct(xs, 0.5),
        "hollow_running_p99_s": pct(xs, 0.99),
        "hollow_slo_p99_le_5s": pct(xs, 0.99) <= 5.0,
        "hollow_create_phase_s": round(t_created - t0, 1),
        "hollow_wall_s": round(wall, 1),
        "apiserver_requests_per_s": round(requests / wall, 1),
        "hollow_pods_left": len(cl.pods(f"{L.RUN}={label}")),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pods", type=int, default=2000, help="hollow-node pods (created and deleted)")
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--serial", type=int, default=20)
    ap.add_argument("--parallel", type=int, default=20)
    a = ap.parse_args()
    binaries = prepare_binaries("all")
    result: dict[str, Any] = {"bench": "k8s_pods"}
    with tempfile.TemporaryDirectory(prefix="bench-k8s-real-") as d:
        t = time.perf_counter()
        with running_real_node(Path(d), binaries) as cl:
            result["real_node_start_s"] = round(time.perf_counter() - t, 1)
            result |= real_node(cl, a.serial, a.parallel)
    with (
        tempfile.TemporaryDirectory(prefix="bench-k8s-hollow-") as d,
        running_cluster(Path(d), binaries, hollow=True) as cl,
    ):
        result |= hollow(cl, a.pods, a.concurrency)
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
