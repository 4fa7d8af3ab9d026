"""`python -m harbor_ray verl-dataset tasks=<dir> out=train.parquet`: Harbor tasks -> a verl RLHFDataset parquet.

One row per task, with the columns verl's `RLHFDataset` and agent-loop workers read:

- `prompt`: the chat messages (an optional system prompt, then instruction.md as the user turn);
  the agent loop renders them with the bash tool through the model's chat template.
- `data_source`: groups validation metrics (default `harbor`).
- `agent_name`: `harbor_sandbox`, so verl runs the sandbox agent loop for the row.
- `reward_model`: `{"style": "harbor_verifier", "ground_truth": ""}`; the loop's verifier gives the reward.
- `extra_info`: `index`, `split`, `task_name`, `task_path` (absolute) and `task_rel` (relative to `tasks=`,
  for the loop's `task_root` option when nodes mount the tasks elsewhere).

Every task is read with Harbor's own model first, so a broken task fails here, not hours into training.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from harbor_ray.errors import ConfigError
from harbor_ray.harbor.spec import find_task_dirs
from harbor_ray.verl import AGENT_NAME
from harbor_ray.verl.task import load_task

log = logging.getLogger(__name__)

USAGE = """usage: python -m harbor_ray verl-dataset tasks=DIR[,DIR...] out=FILE.parquet [key=value ...]

Write a verl RLHFDataset parquet with one row per Harbor task.

keys:
  tasks          a task directory, or a directory of tasks; several separated by commas (required)
  out            the parquet file to write (required)
  split          extra_info.split value (default: train)
  data_source    the data_source column (default: harbor)
  system_prompt  a system message put before each instruction (default: none)
  agent_name     the agent loop verl runs per row: harbor_sandbox (default) or harbor_trial
"""

_KEYS = {"tasks", "out", "split", "data_source", "system_prompt", "agent_name"}


def parse_args(argv: list[str]) -> dict[str, str]:
    """key=value arguments; unknown or missing keys are a ConfigError naming the key."""
    args: dict[str, str] = {"split": "train", "data_source": "harbor", "system_prompt": "", "agent_name": AGENT_NAME}
    for item in argv:
        key, sep, value = item.partition("=")
        if not sep:
            msg = f"{item!r}: expected key=value, e.g. tasks=examples/tasks out=train.parquet"
            raise ConfigError(msg)
        if key not in _KEYS:
            msg = f"{key}: unknown key; known keys: {', '.join(sorted(_KEYS))}"
            raise ConfigError(msg)
        args[key] = value
    for key in ("tasks", "out"):
        if not args.get(key):
            msg = f"{key}: missing; e.g. python -m harbor_ray verl-dataset tasks=examples/tasks out=train.parquet"
            raise ConfigError(msg)
    if not args["out"].endswith(".parquet"):
        msg = f"out={args['out']}: verl's RLHFDataset reads .parquet files; name the output *.parquet"
        raise ConfigError(msg)
    return args


def build_rows(
    task_roots: list[str],
    *,
    split: str = "train",
    data_source: str = "harbor",
    system_prompt: str = "",
    agent_name: str = AGENT_NAME,
) -> list[dict[str, Any]]:
    """One verl row per task found under the given roots, in a stable order."""
    rows: list[dict[str, Any]] = []
    for root in task_roots:
        base = Path(root).resolve()
        for task_dir in find_task_dirs(base):
            task = load_task(task_dir.resolve())
            messages = [{"role": "system", "content": system_prompt}] if system_prompt else []
            messages.append({"role": "user", "content": task.instruction})
            rel = task_dir.resolve().relative_to(base).as_posix()
            rows.append(
                {
                    "data_source": data_source,
                    "prompt": messages,
                    "agent_name": agent_name,
                    "reward_model": {"style": "harbor_verifier", "ground_truth": ""},
                    "extra_info": {
                        "index": len(rows),
                        "split": split,
                        "task_name": task.name,
                        "task_path": str(task.path),
                        "task_rel": task.path.name if rel == "." else rel,
                    },
                }
            )
    return rows


def write_parquet(rows: list[dict[str, Any]], out: str | os.PathLike[str]) -> Path:
    import pandas as pd

    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_parquet(path, index=False)
    return path


def main(argv: list[str]) -> int:
    if any(a in ("-h", "--help") for a in argv):
        print(USAGE)
        return 0
    args = parse_args(argv)
    roots = [r for r in args["tasks"].split(",") if r]
    rows = build_rows(
        roots,
        split=args["split"],
        data_source=args["data_source"],
        system_prompt=args["system_prompt"],
        agent_name=args["agent_name"],
    )
    path = write_parquet(rows, args["out"])
    print(f"wrote {len(rows)} rows ({len({r['extra_info']['task_name'] for r in rows})} tasks) to {path}")
    return 0
