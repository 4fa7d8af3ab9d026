"""The CPU training smoke run: verl's own `main_ppo` for a few GRPO steps on Harbor tasks, then its summary.

`prepare(opts)` writes everything the run needs into `opts.out` (the dataset with one row per agent loop, the
agent-loop YAML with this run's pool and label, the warm-started model) and returns the `main_ppo` command and
environment; `run()` starts it, sampling the peak resident memory of its whole process tree (driver, Ray,
verl's workers, the rollout server, the agent loops); `summarize()` reads back what verl produced: its
per-step metrics (`trainer.logger=file`), the recorded batches (record.py) and the rollout server's log.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harbor_ray.verl.cpu import BATCH_RECORD_ENV as BATCH_ENV
from harbor_ray.verl.cpu import HF_RECORD_ENV as GENERATIONS_ENV
from harbor_ray.verl.cpu import RECORD_MODE
from harbor_ray.verl.cpu import env as plugin_env

logger = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[3]
LOOPS = ("harbor_trial", "harbor_sandbox")


@dataclass
class SmokeOptions:
    out: Path
    steps: int = 2
    n: int = 2
    tasks: str = str(ROOT / "examples" / "tasks" / "hello-file")
    loops: tuple[str, ...] = LOOPS
    conf_dir: Path = ROOT / "conf" / "verl"
    harbor_overrides: list[str] = field(default_factory=list)
    verl_overrides: list[str] = field(default_factory=list)
    model: Path | None = None
    run_label: str = field(default_factory=lambda: f"smoke-{uuid.uuid4().hex[:8]}")


@dataclass
class SmokeRun:
    command: list[str]
    env: dict[str, str]
    files: dict[str, Path]
    run_label: str


def prepare(opts: SmokeOptions) -> SmokeRun:
    """Write the dataset, agent-loop YAML and model; return the `main_ppo` command."""
    from omegaconf import OmegaConf

    from harbor_ray.verl.cpu.warm_start import warm_model
    from harbor_ray.verl.dataset import build_rows, write_parquet

    out = opts.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    model = opts.model or warm_model()
    # One step's batch = one task under every loop (data.shuffle is off): tasks=a,b gives step 1 task a, step 2 b.
    rows: list[dict[str, Any]] = []
    for task in opts.tasks.split(","):
        for loop in opts.loops:
            for row in build_rows([task], agent_name=loop):
                row["extra_info"]["index"] = len(rows)
                rows.append(row)
    per_step = len(opts.loops)
    train = write_parquet(rows, out / "train.parquet")
    entries: Any = OmegaConf.load(opts.conf_dir / "agent_loop.yaml")
    harbor = [
        "backend=docker",
        f"run_label={opts.run_label}",
        f"pool.name={opts.run_label}",
        "pool.sandbox_resource=sandbox_slot",
        "pool.max_sandboxes=4",
        f"pool.prestart_actors={per_step * opts.n}",
        "sandbox.ttl_s=900",
    ]
    given = {o.split("=", 1)[0] for o in opts.harbor_overrides}
    harbor = [o for o in harbor if o.split("=", 1)[0] not in given] + list(opts.harbor_overrides)
    for entry in entries:
        entry.harbor_overrides = harbor
        if "trials_dir" in entry:
            entry.trials_dir = str(out / "trials")
        if "task_root" in entry:
            entry.task_root = None
    loops_yaml = out / "agent_loop.yaml"
    OmegaConf.save(entries, loops_yaml)
    files = {
        "metrics": out / "metrics.jsonl",
        "batch": out / "batch.jsonl",
        "generations": out / "generations.jsonl",
        "log": out / "main_ppo.log",
        "model": Path(model),
        "train": train,
        "agent_loop": loops_yaml,
        "trials": out / "trials",
        "checkpoints": out / "checkpoints",
    }
    for name in ("metrics", "batch", "generations"):
        files[name].unlink(missing_ok=True)
    overrides = [
        "+platform=cpu",
        f"data.train_files={train}",
        f"data.val_files={train}",
        f"data.train_batch_size={per_step}",
        f"actor_rollout_ref.actor.ppo_mini_batch_size={per_step}",
        f"actor_rollout_ref.model.path={model}",
        f"actor_rollout_ref.rollout.n={opts.n}",
        f"actor_rollout_ref.rollout.agent.agent_loop_config_path={loops_yaml}",
        f"actor_rollout_ref.rollout.agent.default_agent_loop={opts.loops[0]}",
        f"trainer.total_training_steps={opts.steps}",
        f"trainer.v1.trainer_mode={RECORD_MODE}",
        "trainer.logger=[console,file]",
        f"trainer.default_local_dir={files['checkpoints']}",
        f"hydra.run.dir={out / 'hydra'}",  # not ./outputs/<date> in the caller's working directory
        *opts.verl_overrides,
    ]
    env = {
        **os.environ,
        **plugin_env(),
        "VERL_FILE_LOGGER_PATH": str(files["metrics"]),
        BATCH_ENV: str(files["batch"]),
        GENERATIONS_ENV: str(files["generations"]),
        "HARBOR_RAY_TRIALS_DIR": str(files["trials"]),
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",
        "TOKENIZERS_PARALLELISM": "false",
        "RAY_DEDUP_LOGS": "0",
        "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p),
    }
    env.pop("HARBOR_RAY_TASK_ROOT", None)
    env.pop("RAY_ADDRESS", None)
    command = [
        sys.executable,
        "-m",
        "verl.trainer.main_ppo",
        f"--config-path={opts.conf_dir.resolve()}",
        "--config-name=harbor_ppo",
        *overrides,
    ]
    return SmokeRun(command=command, env=env, files=files, run_label=opts.run_label)


def run(smoke: SmokeRun) -> dict[str, Any]:
    """Run `main_ppo`; its return code, wall time, the peak RSS summed over its process tree, and the processes
    of that tree (Ray's raylet, verl's workers…) still alive 30 s after it exited (a clean run leaves none)."""
    import psutil

    started = time.monotonic()
    peak = 0
    seen: dict[int, psutil.Process] = {}
    with open(smoke.files["log"], "wb") as log:
        proc = subprocess.Popen(smoke.command, env=smoke.env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
        stop = threading.Event()

        def sample() -> None:
            nonlocal peak
            root = psutil.Process(proc.pid)
            while not stop.wait(0.5):
                total = 0
                try:
                    for p in [root, *root.children(recursive=True)]:
                        seen.setdefault(p.pid, p)
                        try:
                            total += p.memory_info().rss
                        except psutil.Error:
                            continue
                except psutil.Error:
                    return
                peak = max(peak, total)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        try:
            code = proc.wait()
        finally:
            stop.set()
            if proc.poll() is None:
                proc.terminate()
                proc.wait(30)
    wall = round(time.monotonic() - started, 1)
    _, alive = psutil.wait_procs([p for pid, p in seen.items() if pid != proc.pid], timeout=30)
    left = sorted(f"{p.pid}:{_name(p)}" for p in alive)
    return {"returncode": code, "wall_s": wall, "peak_rss_mib": peak // 2**20, "processes_left": left}


def _name(p: Any) -> str:
    try:
        return str(p.name())
    except Exception:
        return "?"


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


_TIMES = {
    "generation": "timing_s/gen",
    "old_log_prob": "timing_s/old_log_prob",
    "update": "timing_s/update_actor",
    "weight_sync": "timing_s/update_weights",
    "step": "timing_s/step",
}


def summarize(smoke: SmokeRun) -> list[dict[str, Any]]:
    """One dict per step from verl's own metrics and recorded batch."""
    metrics = {row["step"]: row["data"] for row in read_jsonl(smoke.files["metrics"])}
    batch = read_jsonl(smoke.files["batch"])
    steps = []
    for step in sorted(metrics):
        data = metrics[step]
        samples = [b for b in batch if b["step"] == step]
        infos = [b.get("reward_extra_info", {}) for b in samples]
        phases: dict[str, float] = {}
        for name in ("generate_sequences", "tool_calls", "compute_score"):  # verl's agent-loop metrics
            values = [float(b["metrics"][name]) for b in samples if name in b.get("metrics", {})]
            if values:
                phases[name] = round(sum(values) / len(values), 2)
        phases.update(_trial_phases(infos))
        steps.append(
            {
                "step": step,
                "rewards": [round(float(sum(b["rm_scores"])), 3) for b in samples],
                "reward_mean": data.get("critic/score/mean"),
                "terminations": [i.get("harbor_termination", "?") for i in infos],
                "masked": sum(bool(i.get("harbor_masked")) for i in infos),
                "times_s": {name: round(float(data[key]), 2) for name, key in _TIMES.items() if key in data},
                "trial_phases_mean_s": phases,
            }
        )
    return steps


def _trial_phases(infos: list[dict[str, Any]]) -> dict[str, float]:
    """Mean seconds of each Harbor trial phase, from the trials' own result.json (harbor_trial samples)."""
    from datetime import datetime

    sums: dict[str, list[float]] = {}
    for info in infos:
        path = Path(str(info.get("harbor_trial_dir") or "")) / "result.json"
        if not info.get("harbor_trial_dir") or not path.exists():
            continue
        result = json.loads(path.read_text())
        for phase in ("environment_setup", "agent_setup", "agent_execution", "verifier"):
            span = result.get(phase) or {}
            if span.get("started_at") and span.get("finished_at"):
                start = datetime.fromisoformat(span["started_at"].replace("Z", "+00:00"))
                end = datetime.fromisoformat(span["finished_at"].replace("Z", "+00:00"))
                sums.setdefault(f"trial.{phase}", []).append((end - start).total_seconds())
    return {name: round(sum(v) / len(v), 2) for name, v in sums.items()}
