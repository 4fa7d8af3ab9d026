"""`python -m harbor_ray train-smoke [steps=2] [out=DIR] [key=value ...]`: verl's own trainer on this machine's
CPU for a few GRPO steps on Harbor tasks (harbor_ray.verl.cpu), then what each step did.

A dry run of the whole RL pipeline before GPU hours: verl's `main_ppo` with conf/verl/harbor_ppo.yaml and
`+platform=cpu`, a warm-started tiny model, both agent loops (each sample a Harbor trial in a fresh sandbox,
rewarded by the task's verifier), the gradient step and the weight sync to the rollout. Exit 0 when every
step completed and no sandbox was left behind.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

from harbor_ray.errors import ConfigError

log = logging.getLogger(__name__)

USAGE = """usage: python -m harbor_ray train-smoke [key=value ...] [verl.key=value ...]

Run verl's main_ppo on CPU (harbor_ray.verl.cpu) for a few GRPO steps and print, per step, the rewards,
termination reasons, time split, sandboxes started and left, and the run's peak memory.

keys:
  steps     training steps (default 2)
  n         responses per prompt (default 2)
  out       the run's directory (default jobs/train-smoke-<time>)
  tasks     Harbor task directories, comma-separated (default examples/tasks/hello-file)
  loops     agent loops, one dataset row per loop and task (default harbor_trial,harbor_sandbox)
  model     a model directory (default: the warm-started tiny model, built once and cached)
  harbor.*  a harbor_ray override for the loops' pool, e.g. harbor.pool.start_timeout_s=30
Any other key with a dot is a verl override, e.g. actor_rollout_ref.actor.optim.lr=1e-4
"""

_KEYS = {"steps", "n", "out", "tasks", "loops", "model"}


def parse(argv: list[str]) -> object:
    from harbor_ray.verl.cpu.smoke import SmokeOptions

    values: dict[str, str] = {}
    harbor: list[str] = []
    verl: list[str] = []
    for item in argv:
        key, sep, value = item.partition("=")
        if not sep:
            msg = f"{item!r}: expected key=value, e.g. steps=2"
            raise ConfigError(msg)
        if key.startswith("harbor."):
            harbor.append(f"{key.removeprefix('harbor.')}={value}")
        elif key in _KEYS:
            values[key] = value
        elif "." in key or key.startswith("+"):
            verl.append(item)
        else:
            msg = f"{key}: unknown key; known keys: {', '.join(sorted(_KEYS))}, harbor.*, or a verl key with a dot"
            raise ConfigError(msg)
    out = Path(values.get("out") or f"jobs/train-smoke-{time.strftime('%Y%m%d-%H%M%S')}")
    opts = SmokeOptions(out=out, harbor_overrides=harbor, verl_overrides=verl)
    for key in ("steps", "n"):
        if key in values:
            if not values[key].isdigit() or int(values[key]) < 1:
                msg = f"{key}={values[key]!r}: expected a positive integer"
                raise ConfigError(msg)
            setattr(opts, key, int(values[key]))
    if "tasks" in values:
        opts.tasks = values["tasks"]
    if "loops" in values:
        opts.loops = tuple(x for x in values["loops"].split(",") if x)
    if "model" in values:
        opts.model = Path(values["model"])
    return opts


def leftover_sandboxes(run_label: str) -> list[str]:
    """Sandboxes still labeled with this run's label on the Docker daemon (a clean run leaves none)."""
    from harbor_ray.config import load_config
    from harbor_ray.ops.clean import clean_sandboxes

    return clean_sandboxes(load_config(["backend=docker"]).backend, run_label, dry_run=True)


def main(argv: list[str]) -> int:
    if any(a in ("-h", "--help") for a in argv):
        print(USAGE)
        return 0
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # harbor imports LiteLLM: no network fetch
    from harbor_ray.verl.cpu.smoke import prepare, run, summarize

    opts = parse(argv)
    smoke = prepare(opts)  # type: ignore[arg-type]
    print(f"train-smoke: {smoke.files['log'].parent} (log: {smoke.files['log']}, run label {smoke.run_label})")
    result = run(smoke)
    steps = summarize(smoke)
    left = leftover_sandboxes(smoke.run_label)
    started = len(list(smoke.files["trials"].glob("*/"))) if smoke.files["trials"].exists() else 0
    for step in steps:
        print(
            f"step {step['step']}: rewards {step['rewards']} (mean {step['reward_mean']}), "
            f"terminations {step['terminations']}, masked {step['masked']}"
        )
        print(f"  time s: {step['times_s']}")
        if step["trial_phases_mean_s"]:
            print(f"  trial phases (mean s): {step['trial_phases_mean_s']}")
    sandbox_samples = sum(len(s["rewards"]) for s in steps)
    print(
        f"samples {sandbox_samples} (harbor_trial trials on disk: {started}), sandboxes left: {len(left)}; "
        f"wall {result['wall_s']} s, peak RSS {result['peak_rss_mib']} MiB (whole process tree), "
        f"processes left {len(result['processes_left'])}"
    )
    summary = {**result, "steps": steps, "sandboxes_left": left, "run_label": smoke.run_label}
    (smoke.files["log"].parent / "summary.json").write_text(json.dumps(summary, indent=2))
    if result["returncode"] != 0:
        print(f"main_ppo failed (exit {result['returncode']}): see {smoke.files['log']}")
        return 1
    if len(steps) < opts.steps or left or result["processes_left"]:  # type: ignore[attr-defined]
        return 1
    return 0
