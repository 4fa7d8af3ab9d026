"""What gVisor costs a sandbox: start (create + start + first exec) and one exec under `sandbox.runtime=runsc` vs the
default runc, on the same Docker daemon, interleaved (runc, runsc, runc, …), through the Docker backend.

    scripts/python bench/gvisor.py [--rounds 20] [--image harbor-ray/busybox:latest]

The daemon is a throwaway of the tests' (tests/support/gvisor.py: runsc registered with the flags this machine
needs); it and everything on it are removed at the end. Prints one JSON object: medians in ms, `start_ratio`
and `exec_ratio` (runsc / runc), the machine's load average before and after.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from support.gvisor import GvisorDockerd  # noqa: E402

from harbor_ray.backends.base import SandboxSpec  # noqa: E402
from harbor_ray.backends.docker.backend import DockerBackend  # noqa: E402
from harbor_ray.backends.docker.config import DockerBackendConfig  # noqa: E402
from harbor_ray.backends.images import BUSYBOX_IMAGE  # noqa: E402


def load() -> float:
    return float(Path("/proc/loadavg").read_text().split()[0])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--image", default=BUSYBOX_IMAGE)
    args = parser.parse_args()
    daemon = GvisorDockerd()
    load_before = load()
    try:
        daemon.start([args.image])
        backend = DockerBackend(DockerBackendConfig(host=daemon.url))
        label = f"bench-{uuid.uuid4().hex[:8]}"
        times: dict[str, list[float]] = {f"{k}_{r}": [] for k in ("start", "exec") for r in ("runc", "runsc")}
        for i in range(args.rounds + 1):  # round 0 warms both paths
            for runtime in ("runc", "runsc"):
                spec = SandboxSpec(run_label=label, image=args.image, memory_mb=256, ttl_s=300, runtime=runtime)
                began = time.perf_counter()
                handle = backend.create(spec, args.image)
                backend.exec(handle, ["true"])
                started = time.perf_counter()
                backend.exec(handle, ["true"])
                done = time.perf_counter()
                backend.destroy(handle)
                if i:
                    times[f"start_{runtime}"].append(started - began)
                    times[f"exec_{runtime}"].append(done - started)
        med = {k: round(statistics.median(v) * 1000, 1) for k, v in times.items()}
        print(
            json.dumps(
                {
                    "bench": "gvisor",
                    "rounds": args.rounds,
                    **{f"{k}_ms": v for k, v in med.items()},
                    "start_ratio": round(med["start_runsc"] / med["start_runc"], 2),
                    "exec_ratio": round(med["exec_runsc"] / med["exec_runc"], 2),
                    "load_before": load_before,
                    "load_after": load(),
                }
            )
        )
    finally:
        daemon.remove()


if __name__ == "__main__":
    main()
