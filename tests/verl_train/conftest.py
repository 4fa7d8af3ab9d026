"""The training tier: verl's own `main_ppo` on CPU through harbor_ray (harbor_ray.verl.cpu), run once per
session by the smoke command itself (`python -m harbor_ray train-smoke`), then checked against what verl
produced: its metrics (`trainer.logger=file`), the batch it trained on (recorded from its TransferQueue just
before `update_actor`), the rollout server's generations and weight loads, and the trials on disk.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from smoke_harness import SmokeResult, read_jsonl  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
HELLO = ROOT / "examples" / "tasks" / "hello-file"
BROKEN = ROOT / "tests" / "verl" / "fixtures" / "tasks" / "broken-build"  # its image build fails on purpose


@pytest.fixture(scope="session")
def smoke(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SmokeResult]:
    """A 3-step run of the smoke command: steps 1 and 2 hello-file under both loops (GRPO, n=4; step 2 samples
    from the weights step 1 trained), step 3 a task whose sandbox cannot start (every sample masked)."""
    out = tmp_path_factory.mktemp("train-smoke")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "harbor_ray",
            "train-smoke",
            "steps=3",
            "n=4",
            f"out={out}",
            f"tasks={HELLO},{HELLO},{BROKEN}",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=1500,
        check=False,
    )
    summary_path = out / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    return SmokeResult(
        out=out,
        returncode=proc.returncode,
        stdout=proc.stdout + proc.stderr[-4000:],
        summary=summary,
        metrics={row["step"]: row["data"] for row in read_jsonl(out / "metrics.jsonl")},
        batch=read_jsonl(out / "batch.jsonl"),
        server=read_jsonl(out / "generations.jsonl"),
    )
