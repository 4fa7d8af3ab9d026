"""What a finished trial leaves behind: one results.jsonl record, a progress line, a summary table."""

from __future__ import annotations

import json
import statistics
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table


@dataclass
class TrialRecord:
    task: str
    trial: str
    reward: float | None = None
    rewards: dict[str, float] = field(default_factory=dict)
    error: str | None = None  # exception class, e.g. VerifierTimeoutError, SandboxGone
    error_message: str | None = None
    sandbox: str | None = None
    timings_s: dict[str, float] = field(default_factory=dict)
    trial_dir: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


def _seconds(timing: Any) -> float | None:
    if timing is None or timing.started_at is None or timing.finished_at is None:
        return None
    return round((timing.finished_at - timing.started_at).total_seconds(), 3)


def record_from_result(result: Any, *, sandbox: str | None, trial_dir: Path | None) -> TrialRecord:
    """Build a record from Harbor's TrialResult."""
    rewards = dict((result.verifier_result.rewards or {}) if result.verifier_result else {})
    reward = rewards.get("reward", next(iter(rewards.values()), None)) if rewards else None
    timings = {
        name: value
        for name in ("environment_setup", "agent_setup", "agent_execution", "verifier")
        if (value := _seconds(getattr(result, name, None))) is not None
    }
    if result.started_at and result.finished_at:
        timings["total"] = round((result.finished_at - result.started_at).total_seconds(), 3)
    info = result.exception_info
    return TrialRecord(
        task=result.task_name,
        trial=result.trial_name,
        reward=None if reward is None else float(reward),
        rewards={k: float(v) for k, v in rewards.items()},
        error=info.exception_type if info else None,
        error_message=(info.exception_message.strip().splitlines() or [""])[0][:300] if info else None,
        sandbox=sandbox,
        timings_s=timings,
        trial_dir=str(trial_dir) if trial_dir else None,
    )


def append_jsonl(path: Path, record: TrialRecord) -> None:
    with path.open("a") as f:
        f.write(json.dumps(asdict(record), sort_keys=True) + "\n")


def progress_text(records: list[TrialRecord], running: int) -> str:
    done = sum(r.ok for r in records)
    failed = len(records) - done
    rewards = [r.reward for r in records if r.reward is not None]
    mean = f"{statistics.fmean(rewards):.3f}" if rewards else "-"
    return f"done {done} · failed {failed} · running {running} · mean reward {mean}"


def summary_table(records: list[TrialRecord]) -> Table:
    table = Table(title="harbor_ray trials")
    for col in ("task", "reward", "rewards", "error", "sandbox", "total s"):
        table.add_column(col)
    for r in sorted(records, key=lambda r: (r.task, r.trial)):
        extra = ", ".join(f"{k}={v:g}" for k, v in r.rewards.items()) if len(r.rewards) > 1 else ""
        table.add_row(
            r.task,
            "-" if r.reward is None else f"{r.reward:g}",
            extra,
            r.error or "",
            r.sandbox or "",
            f"{r.timings_s.get('total', 0):.1f}",
        )
    rewards = [r.reward for r in records if r.reward is not None]
    mean = f"{statistics.fmean(rewards):.3f}" if rewards else "-"
    table.caption = f"{len(records)} trials, {sum(not r.ok for r in records)} errors, mean reward {mean}"
    return table


def print_summary(records: list[TrialRecord], console: Console | None = None) -> None:
    (console or Console()).print(summary_table(records))
