"""What a finished trial leaves behind: one results.jsonl record, a progress line, a summary table.

Every try of a trial is one record with its termination `reason` (harbor_ray.harbor.outcome.Reason) and its
`try` number (1 for the first); the summary counts trials by reason.
"""

from __future__ import annotations

import collections
import json
import statistics
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from harbor_ray.errors import strip_ansi
from harbor_ray.harbor.outcome import Reason, reason_for

MESSAGE_LIMIT = 300  # characters of an error message kept in a record (head and tail, see one_line)


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
    reason: str = Reason.COMPLETED.value
    try_number: int = 1  # "try" in results.jsonl

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["try"] = data.pop("try_number")
        return data


def one_line(text: str | None, limit: int = MESSAGE_LIMIT) -> str | None:
    """An error message as one readable line: terminal colour codes dropped, the first line that says
    something, and when that is too long its start and its tail (a build log's failing step is at its end)."""
    if not text:
        return None
    lines = [line.strip() for line in strip_ansi(str(text)).splitlines() if line.strip()]
    if not lines:
        return None
    line = lines[0]
    if len(line) <= limit:
        return line
    head = limit // 3
    return f"{line[:head]} … {line[-(limit - head - 3) :]}"


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
        error_message=one_line(info.exception_message) if info else None,
        sandbox=sandbox,
        timings_s=timings,
        trial_dir=str(trial_dir) if trial_dir else None,
        reason=reason_for(info.exception_type if info else None).value,
    )


def append_jsonl(path: Path, record: TrialRecord) -> None:
    with path.open("a") as f:
        f.write(json.dumps(record.to_json(), sort_keys=True) + "\n")


def progress_text(records: list[TrialRecord], running: int) -> str:
    done = sum(r.ok for r in records)
    failed = len(records) - done
    rewards = [r.reward for r in records if r.reward is not None]
    mean = f"{statistics.fmean(rewards):.3f}" if rewards else "-"
    return f"done {done} · failed {failed} · running {running} · mean reward {mean}"


def summary_table(records: list[TrialRecord]) -> Table:
    table = Table(title="harbor_ray trials")
    for col in ("task", "reward", "rewards", "reason", "try", "error", "sandbox", "total s"):
        table.add_column(col)
    for r in sorted(records, key=lambda r: (r.task, r.trial)):
        extra = ", ".join(f"{k}={v:g}" for k, v in r.rewards.items()) if len(r.rewards) > 1 else ""
        table.add_row(
            r.task,
            "-" if r.reward is None else f"{r.reward:g}",
            extra,
            r.reason,
            str(r.try_number),
            r.error or "",
            r.sandbox or "",
            f"{r.timings_s.get('total', 0):.1f}",
        )
    finals = final_tries(records)
    rewards = [r.reward for r in finals if r.reward is not None]
    mean = f"{statistics.fmean(rewards):.3f}" if rewards else "-"
    retried = f" ({len(records)} tries)" if len(records) > len(finals) else ""
    table.caption = (
        f"{len(finals)} trials{retried}, {sum(not r.ok for r in finals)} errors, mean reward {mean}; "
        f"{reason_counts(finals)}"
    )
    return table


def final_tries(records: list[TrialRecord]) -> list[TrialRecord]:
    """The last try of each trial (tries of one trial share its name up to `__try<n>`)."""
    last: dict[str, TrialRecord] = {}
    for r in records:
        key = r.trial.rsplit("__try", 1)[0]
        if key not in last or r.try_number >= last[key].try_number:
            last[key] = r
    return list(last.values())


def reason_counts(records: list[TrialRecord]) -> str:
    """'completed 3, tail_killed 1': records counted by reason, in Reason order."""
    counts = collections.Counter(r.reason for r in records)
    return ", ".join(f"{reason} {counts[reason]}" for reason in Reason if counts[reason]) or "no trials"


def print_summary(records: list[TrialRecord], console: Console | None = None) -> None:
    (console or Console()).print(summary_table(records))
