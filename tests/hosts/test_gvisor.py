"""Harbor's own Trial under gVisor on a test host: `sandbox.runtime=runsc` on host h2's own daemon, which registers
Debian's runsc with the flags it needs here (support.gvisor.runsc_wrapper, tests/hosts/conftest.py), its sandbox
actors on h2's Ray node.

The kernel each sandbox sees says where it ran: under gVisor `uname -r` is 4.4.0 and dmesg starts with "Starting
gVisor"; the same task with the default runtime, on h2's own daemon, sees this machine's kernel and cannot read
its log. Both score reward 1.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from support.gvisor import GVISOR_BANNER, GVISOR_UNAME
from support.hosts import TestHosts

from harbor_ray.config import load_config
from harbor_ray.harbor.runner import run_trials

pytestmark = [pytest.mark.hosts, pytest.mark.docker, pytest.mark.ray, pytest.mark.harbor, pytest.mark.slow]
TASK = Path(__file__).resolve().parents[1] / "docker" / "tasks" / "kernel-report"


async def trial(hosts: TestHosts, label: str, jobs: Path, runtime: str, entry: dict[str, Any]) -> tuple[str, str]:
    """One oracle trial of the kernel-report task on the pool host `entry`: (uname -r, dmesg) the sandbox saw."""
    cfg = load_config(
        [
            f"run_label={label}",
            f"jobs_dir={jobs}",
            f"job_name=job-{runtime or 'default'}",
            "agent=oracle",
            f"tasks=[{TASK}]",
            "pool.shared=false",
            f"pool.name=gv-{label}-{runtime or 'default'}",
            "pool.sandbox_resource=sandbox_slot",
            f"sandbox.runtime={runtime}",
        ]
    )
    cfg.pool.hosts = [entry]
    [record] = await run_trials(cfg)
    assert (record.reward, record.error) == (1.0, None), record.error_message
    verifier = Path(str(record.trial_dir)) / "verifier"
    return (verifier / "uname.txt").read_text().strip(), (verifier / "dmesg.txt").read_text()


async def test_a_trial_on_a_test_host_runs_under_gvisor(hosts, hosts_label, tmp_path) -> None:
    h2 = hosts["h2"]
    assert "runsc" in h2.client().info()["Runtimes"]
    uname, dmesg = await trial(hosts, hosts_label, tmp_path, "runsc", h2.node_entry(1))
    assert uname == GVISOR_UNAME
    assert dmesg.startswith(f"[    0.000000] {GVISOR_BANNER}")
    made = h2.client().containers.list(all=True, filters={"label": f"harbor-run={hosts_label}"})
    assert made == []  # removed at the trial's end
    uname, dmesg = await trial(hosts, hosts_label, tmp_path, "", hosts["h2"].node_entry(1))  # h2's own daemon
    assert uname == os.uname().release
    assert GVISOR_BANNER not in dmesg
