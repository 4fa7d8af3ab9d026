"""Harbor's own oracle Trial, with every sandbox on the remote daemon through the mutual-TLS listener."""

from __future__ import annotations

from pathlib import Path

import pytest

from harbor_ray.config import load_config
from harbor_ray.harbor.runner import run_trials

pytestmark = [pytest.mark.harbor, pytest.mark.ray, pytest.mark.docker, pytest.mark.slow]

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "tasks"


async def test_oracle_trials_through_tls(ray_local, run_label, tls_listener, tls_certs, tmp_path, monkeypatch):
    # The environment's CA bundles must not matter: point them at a CA that signed nothing of ours.
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(tls_certs.dir("other-ca") / "ca.pem"))
    cfg = load_config(
        [
            "backend=docker_remote",
            f"backend.host={tls_listener.url}",
            f"backend.tls.cert_path={tls_certs.dir('good')}",
            f"run_label={run_label}",
            f"jobs_dir={tmp_path}",
            "job_name=job",
            "agent=oracle",
            "n_concurrent=2",
            f"tasks=[{EXAMPLES / 'hello-file'},{EXAMPLES / 'sum-numbers'}]",
        ]
    )
    assert cfg.backend.kind == "docker_remote"
    records = await run_trials(cfg)
    assert {r.task: (r.reward, r.error) for r in records} == {"hello-file": (1.0, None), "sum-numbers": (1.0, None)}
    assert all(r.sandbox and r.sandbox.startswith(run_label) for r in records)
    assert (tmp_path / "job" / "results.jsonl").read_text().count("\n") == 2
