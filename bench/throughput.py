"""Oracle Harbor trials per minute through harbor_ray vs the physical floor, interleaved in one process.

    scripts/python bench/throughput.py [--trials 96] [--rounds 2] [--concurrency 16] [--pool kept|per-round]

Each round runs `--trials` oracle trials of examples/tasks (attempts spread evenly over the tasks) twice, order
alternating:
- through harbor_ray: `harbor_ray.harbor.runner.run_trials` (Harbor's own `Trial`, the Docker backend),
  `--concurrency` at a time, on one pool kept across the rounds as a trainer keeps its pool across steps
  (`--pool kept`, the default: the warm-up round at full concurrency started its actor processes), or on a
  pool started by each call and shut down after it, as a one-off batch job (`--pool per-round`: each round
  also pays for `--concurrency` new Ray worker processes);
- the floor: the docker SDK calls such a trial makes, made directly with as many threads and in the same
  order (read off `docker events` of a trial through harbor_ray): create + start the task's image (the
  backend's hardening), 7 execs (log dirs, chmod and run solve.sh, test -d, rm old rewards, chmod and run
  test.sh), 3 put_archive, 4 get_archive (the last, /logs/verifier, gives the reward), remove. Bare calls:
  no exec wrapper, no Harbor, no Ray.
The task images are built once before the first round (a warm-up run through harbor_ray), so neither side builds.

Prints one JSON object:
- `throughput_ratio`: trials/minute through harbor_ray / the floor's (median over rounds; goal >= 0.9), with
  `pool` saying which of the two pools above it ran on;
- `trial_ratio`: one trial's time, median through harbor_ray (Harbor's own started..finished) / the floor's;
- `reward_mean` (both sides: 1.0 when every oracle passes), `trial_errors`, `leftovers` (containers with the
  bench's label after the run, must be 0), `load`: the load average at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import logging
import os
import statistics
import tarfile
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import docker
import ray

from harbor_ray.backends.base import DEFAULT_CAP_ADD
from harbor_ray.backends.images import env_image_tag

ROOT = Path(__file__).resolve().parent.parent
TASKS = sorted(p for p in (ROOT / "examples" / "tasks").iterdir() if (p / "task.toml").is_file())


def tar_of(path: Path, name: str) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        tar.add(str(path), arcname=name)
    return buf.getvalue()


def read_reward(files: dict[str, bytes]) -> float:
    """Harbor's reward files: reward.txt (a number) or reward.json (its "reward" key)."""
    if "verifier/reward.txt" in files:
        return float(files["verifier/reward.txt"])
    if "verifier/reward.json" in files:
        return float(json.loads(files["verifier/reward.json"])["reward"])
    return 0.0


def floor_trial(client: docker.DockerClient, image: str, task: Path, label: str) -> tuple[float, float]:
    """One oracle trial as bare SDK calls: (seconds, reward)."""
    t = time.perf_counter()
    container = client.containers.create(
        image,
        command=["sleep", "3600"],
        labels={"harbor-run": label},
        network_mode="none",
        init=True,
        auto_remove=True,
        nano_cpus=int(1e9),
        mem_limit="2048m",
        memswap_limit="2048m",
        pids_limit=1024,
        cap_drop=["ALL"],
        cap_add=list(DEFAULT_CAP_ADD),
        security_opt=["no-new-privileges"],
    )
    try:
        container.start()
        run = container.exec_run
        run(["bash", "-c", "mkdir -p /logs/agent /logs/verifier /logs/artifacts && chmod 777 /logs/*"])
        container.put_archive("/", tar_of(task / "solution", "solution"))
        run(["chmod", "+x", "/solution/solve.sh"])
        run(["bash", "-c", "(/solution/solve.sh) > /logs/agent/oracle.txt 2>&1"])
        for _ in range(2):
            b"".join(container.get_archive("/logs/agent")[0])
        container.put_archive("/", tar_of(task / "solution", "solution"))
        run(["test", "-d", "/logs/artifacts"])
        b"".join(container.get_archive("/logs/artifacts")[0])
        run(["rm", "-f", "--", "/logs/verifier/reward.txt", "/logs/verifier/reward.json"])
        container.put_archive("/", tar_of(task / "tests", "tests"))
        run(["chmod", "+x", "/tests/test.sh"])
        run(["bash", "-c", "(/tests/test.sh) > /logs/verifier/test-stdout.txt 2>&1"])
        stream, _ = container.get_archive("/logs/verifier")
        with tarfile.open(fileobj=io.BytesIO(b"".join(stream))) as tar:
            reward = read_reward({m.name: tar.extractfile(m).read() for m in tar if m.isreg()})  # type: ignore[union-attr]
    finally:
        container.remove(force=True)
    return time.perf_counter() - t, reward


def floor_round(client: docker.DockerClient, trials: list[Path], concurrency: int, label: str) -> dict[str, Any]:
    images = {task: env_image_tag(task / "environment") for task in set(trials)}
    with ThreadPoolExecutor(concurrency) as ex:
        t = time.perf_counter()
        results = list(ex.map(lambda task: floor_trial(client, images[task], task, label), trials))
        elapsed = time.perf_counter() - t
    return {
        "per_minute": len(trials) / elapsed * 60,
        "trial_s": [s for s, _ in results],
        "rewards": [r for _, r in results],
        "errors": 0,
    }


def run_config(attempts: int, concurrency: int, label: str, jobs: str, pool_name: str) -> Any:
    from harbor_ray.config import load_config

    return load_config(
        [
            f"tasks=[{','.join(str(t) for t in TASKS)}]",
            f"n_attempts={attempts}",
            f"n_concurrent={concurrency}",
            "agent=oracle",
            f"run_label={label}",
            f"jobs_dir={jobs}",
            f"pool.max_sandboxes={concurrency}",
            f"pool.name={pool_name}",
        ]
    )


async def harbor_ray_round(
    attempts: int, concurrency: int, label: str, jobs: str, pool: Any = None, pool_name: str = ""
) -> dict[str, Any]:
    """One batch through `run_trials`: on `pool` (named `pool_name`) when given, else on a pool of its own."""
    from rich.console import Console

    from harbor_ray.harbor.runner import run_trials

    cfg = run_config(attempts, concurrency, label, jobs, pool_name or f"{label}-{uuid.uuid4().hex[:6]}")
    t = time.perf_counter()
    with open(os.devnull, "w") as quiet:
        records = await run_trials(cfg, console=Console(file=quiet), pool=pool)
    elapsed = time.perf_counter() - t
    return {
        "per_minute": len(records) / elapsed * 60,
        "trial_s": [r.timings_s["total"] for r in records if "total" in r.timings_s],
        "rewards": [r.reward for r in records if r.reward is not None],
        "errors": sum(1 for r in records if r.error),
    }


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--trials", type=int, default=96, help="trials per round and side")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--pool", choices=("kept", "per-round"), default="kept")
    args = parser.parse_args()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    logging.getLogger("harbor").setLevel(logging.WARNING)  # Harbor logs every trial step
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    client = docker.from_env(timeout=300)
    label = f"bench-{uuid.uuid4().hex[:8]}"
    attempts = -(-args.trials // len(TASKS))
    trials = [task for _ in range(attempts) for task in TASKS]
    floor: list[dict[str, Any]] = []
    ours: list[dict[str, Any]] = []
    pool: Any = None
    try:
        with tempfile.TemporaryDirectory(prefix="harbor-ray-bench-") as jobs:
            name = f"{label}-{uuid.uuid4().hex[:6]}"
            if args.pool == "kept":
                from harbor_ray.pool import SandboxPool

                pool = SandboxPool.from_config(run_config(1, args.concurrency, label, jobs, name))
            # The warm-up builds the task images (neither side builds) and, on a kept pool, starts its actors.
            warm_up = -(-args.concurrency // len(TASKS)) if pool is not None else 1
            await harbor_ray_round(warm_up, args.concurrency, label, jobs, pool, name)

            async def ours_round() -> None:
                ours.append(await harbor_ray_round(attempts, args.concurrency, label, jobs, pool, name))

            for i in range(args.rounds):
                if i % 2:
                    await ours_round()
                    floor.append(floor_round(client, trials, args.concurrency, label))
                else:
                    floor.append(floor_round(client, trials, args.concurrency, label))
                    await ours_round()
    finally:
        if pool is not None:
            await pool.shutdown()
        ray.shutdown()
    leftovers = client.containers.list(all=True, filters={"label": f"harbor-run={label}"})
    for container in leftovers:
        container.remove(force=True)

    def rate(side: list[dict[str, Any]]) -> float:
        return statistics.median(r["per_minute"] for r in side)

    def trial_s(side: list[dict[str, Any]]) -> float:
        return statistics.median(x for r in side for x in r["trial_s"])

    print(
        json.dumps(
            {
                "bench": "throughput",
                "trials_per_round": len(trials),
                "rounds": args.rounds,
                "concurrency": args.concurrency,
                "pool": args.pool,
                "throughput_ratio": round(rate(ours) / rate(floor), 3),
                "trials_per_minute": [round(r["per_minute"], 1) for r in ours],
                "floor_trials_per_minute": [round(r["per_minute"], 1) for r in floor],
                "trial_ratio": round(trial_s(ours) / trial_s(floor), 3),
                "trial_s_p50": round(trial_s(ours), 2),
                "floor_trial_s_p50": round(trial_s(floor), 2),
                "reward_mean": round(statistics.fmean(x for r in ours for x in r["rewards"]), 3),
                "floor_reward_mean": round(statistics.fmean(x for r in floor for x in r["rewards"]), 3),
                "trial_errors": sum(r["errors"] for r in ours),
                "leftovers": len(leftovers),
                "load": [round(x, 2) for x in os.getloadavg()],
            }
        )
    )


if __name__ == "__main__":
    asyncio.run(main())
