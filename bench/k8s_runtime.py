"""What an agent runtime's init container adds to a pod's start, on the real node; one JSON line.

On the real single-node cluster (tests/support/real_node.py), interleaved for `--rounds` rounds: a busybox pod
through `KubernetesBackend.create` (create -> Running) without a runtime, then the same pod with `agent.runtime`
(its init container copies the runtime's tree into an emptyDir first). The floor: the same copy command straight
on the engine (`docker run` of the runtime image with a fresh volume: one container start plus the copy), also
interleaved. The runtime image is built first if missing (`build_s`).

    scripts/python bench/k8s_runtime.py [--runtime mini-swe-agent] [--rounds 10]

Prints `running_plain_p50_s`, `running_runtime_p50_s`, `init_copy_added_p50_s` (median of the per-round
differences), `copy_on_engine_p50_s` (the floor), `tree_mb`/`tree_files` (what is copied), the load average
before and after, and the pods left.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path
from typing import Any, cast

from k8s_pods import pct, say, timed  # also puts tests/ and the repo on sys.path
from support.k8s_cluster import BUSYBOX, prepare_binaries
from support.real_node import running_real_node

from harbor_ray import labels as L
from harbor_ray.backends import make_backend
from harbor_ray.backends.base import SandboxSpec
from harbor_ray.backends.kubernetes import runtime as R
from harbor_ray.backends.kubernetes.backend import KubernetesBackend
from harbor_ray.runtimes.recipes import recipe, runtime_tag

LABEL = "bench-runtime"


def copy_on_engine(client: Any, name: str) -> float:
    """The init container's command, run by the engine itself into a fresh volume (removed after)."""
    rec = recipe(name)
    volume = client.volumes.create(labels={L.RUN: LABEL})
    try:
        t, _ = timed(
            lambda: client.containers.run(
                runtime_tag(rec),
                rec.copy_argv("/dst"),
                volumes={volume.name: {"bind": "/dst"}},
                remove=True,
                read_only=True,
                cap_drop=["ALL"],  # as the init container, but root: a fresh volume's root is root's 755
                network_mode="none",
                labels={L.RUN: LABEL},
            )
        )
    finally:
        volume.remove(force=True)
    return t


def one_round(
    backend: KubernetesBackend, cl: Any, client: Any, plain: SandboxSpec, with_rt: SandboxSpec, name: str
) -> dict[str, float]:
    """create -> Running without and with the runtime, then the copy on the engine (seconds each)."""
    out: dict[str, float] = {}
    for key, spec in (("plain", plain), ("runtime", with_rt)):
        out[key], handle = timed(lambda spec=spec: backend.create(spec, BUSYBOX))
        try:
            if key == "runtime":
                [pod] = cl.pods(f"{L.RUN}={LABEL}")
                [init] = pod["status"]["initContainerStatuses"]
                if init["name"] != R.INIT_CONTAINER or init["state"]["terminated"]["exitCode"] != 0:
                    msg = f"the runtime's init container did not copy: {init}"
                    raise RuntimeError(msg)
        finally:
            backend.destroy(handle)
    out["engine"] = copy_on_engine(client, name)
    return out


def main() -> None:
    import docker

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runtime", default="mini-swe-agent")
    ap.add_argument("--rounds", type=int, default=10)
    a = ap.parse_args()
    client = docker.from_env()
    result: dict[str, Any] = {"bench": "k8s_runtime", "runtime": a.runtime, "rounds": a.rounds}
    binaries = prepare_binaries("all")
    with tempfile.TemporaryDirectory(prefix="bench-k8s-runtime-") as d, running_real_node(Path(d), binaries) as cl:
        backend = cast("KubernetesBackend", make_backend(cl.config(build_with_docker=True)))
        with_rt = SandboxSpec(image=BUSYBOX, run_label=LABEL, memory_mb=512, ttl_s=600, agent_runtime=a.runtime)
        plain = SandboxSpec(image=BUSYBOX, run_label=LABEL, memory_mb=512, ttl_s=600)
        result["build_s"] = round(timed(lambda: backend.ensure_image(with_rt))[0], 1)
        warm = backend.create(with_rt, BUSYBOX)  # the kubelet has seen the image once; what is copied
        mount = recipe(a.runtime).mount_path
        du = backend.exec(warm, f"du -sm {mount} | cut -f1; find {mount} | wc -l").stdout.split()
        result["tree_mb"], result["tree_files"] = int(du[0]), int(du[1])
        backend.destroy(warm)
        result["loadavg_before"] = Path("/proc/loadavg").read_text().split()[0]
        runs: dict[str, list[float]] = {"plain": [], "runtime": [], "engine": []}
        done = 0
        while done < a.rounds:
            # untimed: another run on this machine may have removed the runtime image (tests/harbor forgets it to
            # count its builds); a round it broke is run again
            backend.ensure_image(with_rt)
            try:
                got = one_round(backend, cl, client, plain, with_rt, a.runtime)
            except Exception as e:
                say(f"round {done + 1} broken ({type(e).__name__}: {str(e)[:200]}); again")
                for h in backend.list({L.RUN: LABEL}):
                    backend.destroy(h)
                continue
            for key, t in got.items():
                runs[key].append(t)
            done += 1
            say(f"round {done}: plain {got['plain']:.2f}s, runtime {got['runtime']:.2f}s, "
                f"copy on the engine {got['engine']:.2f}s")  # fmt: skip
        result["loadavg_after"] = Path("/proc/loadavg").read_text().split()[0]
        result["running_plain_p50_s"] = pct(runs["plain"], 0.5)
        result["running_runtime_p50_s"] = pct(runs["runtime"], 0.5)
        diffs = [r - p for r, p in zip(runs["runtime"], runs["plain"], strict=True)]
        result["init_copy_added_p50_s"] = round(statistics.median(diffs), 3)
        result["copy_on_engine_p50_s"] = pct(runs["engine"], 0.5)
        result["pods_left"] = len(cl.pods(f"{L.RUN}={LABEL}"))
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
