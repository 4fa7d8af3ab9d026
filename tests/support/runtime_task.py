"""A Harbor task for installed agents run from an agent runtime: a busybox image (no Python, no libc) that the
agent must change, and a scripted policy's commands that do it and check that the runtime is read-only. The
Docker (tests/harbor/test_agent_runtime.py) and Kubernetes (tests/k8s_real/test_agent_runtime_pods.py) trials
share it."""

from __future__ import annotations

from pathlib import Path

from harbor_ray.backends.egress import GATEWAY_HOSTNAME

COMMANDS = [
    "echo 'Hello from mini' > /app/hello.txt; "
    "(touch /opt/harbor-agent/mini-swe-agent/bin/x 2>/dev/null && echo writable || echo read-only) > /app/ro.txt",
    "echo COMPLETE_TASK_AND_SUBMIT_FINAL_OUTPUT",
]

TEST_SH = """#!/bin/sh
ok=1
[ "$(cat /app/hello.txt)" = "Hello from mini" ] || ok=0
[ "$(cat /app/ro.txt)" = "read-only" ] || ok=0
command -v python3 >/dev/null 2>&1 && ok=0
command -v python >/dev/null 2>&1 && ok=0
echo $ok > /logs/verifier/reward.txt
"""


def busybox_task(root: Path) -> Path:
    task = root / "hello-mini"
    (task / "environment").mkdir(parents=True)
    (task / "environment" / "Dockerfile").write_text(
        "FROM harbor-ray/busybox:latest\nRUN mkdir -p /app\nWORKDIR /app\n"
    )
    (task / "tests").mkdir()
    (task / "tests" / "test.sh").write_text(TEST_SH)
    (task / "instruction.md").write_text("Write 'Hello from mini' to /app/hello.txt.\n")
    (task / "task.toml").write_text(
        'schema_version = "1.4"\n\n[verifier]\ntimeout_sec = 60.0\n\n[agent]\ntimeout_sec = 300.0\n\n'
        '[environment]\nnetwork_mode = "no-network"\n'
    )
    return task


def trial_overrides(root: Path, run_label: str, policy_address: str) -> list[str]:
    """One trial of `busybox_task` (made under `root`) by Harbor's installed mini-swe-agent from its runtime, its
    model calls going through the gateway's name to the scripted policy at `policy_address` (HOST:PORT)."""
    port = policy_address.rsplit(":", 1)[1]
    return [
        f"run_label={run_label}",
        f"jobs_dir={root / 'jobs'}",
        "job_name=job",
        f"tasks=[{busybox_task(root / 'tasks')}]",
        "agent=mini-swe-agent",
        "agent.model_name=openai/policy",
        "+agent.env.OPENAI_API_KEY=sk-test",
        f"+agent.env.OPENAI_BASE_URL='http://{GATEWAY_HOSTNAME}:{port}/v1'",
        f"+sandbox.gateway={policy_address}",
    ]
