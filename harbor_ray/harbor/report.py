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


COLUMNS = ("task", "reward", "rewards", "reason", "try", "error", "sandbox", "total s")
FORMATS = ("table", "plain", "json")
WIDEST_LOG = 10_000  # columns a table printed to a log may take (a row wider than this is folded)


def summary_rows(records: list[TrialRecord]) -> list[tuple[str, ...]]:
    """One row of cells (COLUMNS) per try, sorted by task and trial."""
    rows: list[tuple[str, ...]] = []
    for r in sorted(records, key=lambda r: (r.task, r.trial)):
        extra = ", ".join(f"{k}={v:g}" for k, v in r.rewards.items()) if len(r.rewards) > 1 else ""
        rows.append(
            (
                r.task,
                "-" if r.reward is None else f"{r.reward:g}",
                extra,
                r.reason,
                str(r.try_number),
                r.error or "",
                r.sandbox or "",
                f"{r.timings_s.get('total', 0):.1f}",
            )
        )
    return rows


def summary_caption(records: list[TrialRecord]) -> str:
    finals = final_tries(records)
    rewards = [r.reward for r in finals if r.reward is not None]
    mean = f"{statistics.fmean(rewards):.3f}" if rewards else "-"
    retried = f" ({len(records)} tries)" if len(records) > len(finals) else ""
    return (
        f"{len(finals)} trials{retried}, {sum(not r.ok for r in finals)} errors, mean reward {mean}; "
        f"{reason_counts(finals)}"
    )


def summary_table(records: list[TrialRecord]) -> Table:
    table = Table(title="harbor_ray trials")
    for col in COLUMNS:
        table.add_column(col)
    for row in summary_rows(records):
        table.add_row(*row)
    table.caption = summary_caption(records)
    return table


def summary_plain(records: list[TrialRecord]) -> str:
    """The table as aligned plain text: whole cells, no box drawing, the caption last (for logs and grep)."""
    rows = [COLUMNS, *summary_rows(records)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows]
    return "\n".join([*lines, summary_caption(records)])


def summary_json(records: list[TrialRecord]) -> str:
    """One JSON object: every try's record (as in results.jsonl) and the counts of the caption."""
    finals = final_tries(records)
    rewards = [r.reward for r in finals if r.reward is not None]
    summary = {
        "trials": len(finals),
        "tries": len(records),
        "errors": sum(not r.ok for r in finals),
        "mean_reward": statistics.fmean(rewards) if rewards else None,
        "reasons": dict(collections.Counter(r.reason for r in finals)),
    }
    tries = [r.to_json() for r in sorted(records, key=lambda r: (r.task, r.trial))]
    return json.dumps({"summary": summary, "trials": tries}, sort_keys=True)


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


def print_summary(records: list[TrialRecord], console: Console | None = None, fmt: str = "table") -> None:
    """The summary on stdout (or `console`): `table` (rich), `plain` (aligned text) or `json` (one object).

    A table printed where no terminal is (a pipe, a file, `ray job submit`'s job log, CI) is as wide as its
    widest row, never cut to 80 columns: a log must show whole task and sandbox names. On a terminal it fits
    the terminal, as rich draws it.
    """
    console = console or Console()
    if fmt == "json":
        console.out(summary_json(records), highlight=False)  # as is: no markup, emoji codes or wrapping
        return
    if fmt == "plain":
        console.out(summary_plain(records), highlight=False)
        return
    table = summary_table(records)
    if not console.is_terminal:
        unbounded = console.options.update_width(WIDEST_LOG)  # rich measures within the console's width
        console.width = max(console.width, console.measure(table, options=unbounded).maximum)
    console.print(table)
