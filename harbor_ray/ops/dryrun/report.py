"""The dryrun report: one `Check` per line, the order checks run in, and how the report prints.

Every backend's checks module and the Ray checks build on this module only (never on the package
`__init__`), so `harbor_ray.ops.dryrun` can import them without a circle.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from harbor_ray.errors import HarborRayError

log = logging.getLogger(__name__)

SYMBOLS = {"pass": "✓", "warn": "⚠", "fail": "✗", "skip": "–"}


@dataclass
class Check:
    """One line of the report. status: pass | warn | fail | skip (not run: a check it needs failed)."""

    status: str
    detail: str
    fix: str = ""
    name: str = ""


def ok(detail: str) -> Check:
    return Check("pass", detail)


def warn(detail: str, fix: str = "") -> Check:
    return Check("warn", detail, fix)


def fail(detail: str, fix: str = "") -> Check:
    return Check("fail", detail, fix)


# (line name, check, names of the checks it needs) in report order
CheckSpec = tuple[str, Callable[[Any], Check], tuple[str, ...]]


@dataclass
class Report:
    """All the lines, for printing or as one JSON object.

    >>> print(Report("docker", "unix:///var/run/docker.sock", "my-run", [ok("fine")]).render())  # doctest: +SKIP
    dryrun: backend docker at unix:///var/run/docker.sock (run_label my-run)
    ...
    """

    backend: str
    target: str
    run_label: str
    checks: list[Check] = field(default_factory=list)
    reason: str = ""  # why the config selects this backend

    @property
    def ok(self) -> bool:
        return not any(c.status == "fail" for c in self.checks)

    def counts(self) -> dict[str, int]:
        return {s: sum(c.status == s for c in self.checks) for s in SYMBOLS}

    def to_dict(self) -> dict[str, Any]:
        fields = asdict(self)
        checks = fields.pop("checks")
        return {"ok": self.ok, **fields, "counts": self.counts(), "checks": checks}

    def render(self) -> str:
        why = f"; chosen because {self.reason}" if self.reason else ""
        lines = [f"dryrun: backend {self.backend} at {self.target} (run_label {self.run_label}){why}"]
        for c in self.checks:
            fix = f"  → fix: {c.fix}" if c.fix and c.status in ("fail", "warn") else ""
            lines.append(f"  {SYMBOLS[c.status]} {c.name}: {c.detail}{fix}")
        n = self.counts()
        verdict = "READY" if self.ok else "NOT READY"
        lines.append(f"{verdict}: {n['pass']} passed, {n['warn']} warnings, {n['fail']} failed, {n['skip']} not run")
        return "\n".join(lines)


def run_checks(specs: Sequence[CheckSpec], state: Any) -> list[Check]:
    """Run each check unless one it needs failed or was not run; a crash becomes that check's ✗ line."""
    done: dict[str, Check] = {}
    for name, check, needs in specs:
        blocked = [n for n in needs if done.get(n) is None or done[n].status in ("fail", "skip")]
        if blocked:
            result = Check("skip", f"not run: needs {blocked[0]}")
        else:
            try:
                result = check(state)
            except HarborRayError as e:
                result = fail(str(e))
            except Exception as e:  # an unexpected answer must still give a line, not a traceback
                log.debug("check %s crashed", name, exc_info=True)
                result = fail(
                    f"{type(e).__name__}: {str(e).strip().splitlines()[0][:200] if str(e).strip() else ''}",
                    "unexpected; rerun with the same config and report it",
                )
        done[name] = replace(result, name=name)
    return list(done.values())
