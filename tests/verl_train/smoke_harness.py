"""Helpers of the training tier: the smoke run's result as the tests read it."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@dataclass
class SmokeResult:
    out: Path
    returncode: int
    stdout: str
    summary: dict[str, Any]
    metrics: dict[int, dict[str, Any]]
    batch: list[dict[str, Any]]
    server: list[dict[str, Any]]

    def samples(self, step: int) -> list[dict[str, Any]]:
        return [b for b in self.batch if b["step"] == step]
