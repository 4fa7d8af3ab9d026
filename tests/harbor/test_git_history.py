"""`sandbox.hide_git_history` on Harbor's own Trial, real Docker and real Ray: the agent sees one commit of the
tree and nothing of the repository's future fix (log, reflog, object store, refs); the verifier sees the original
.git byte for byte (its commit hashes unchanged); a trial killed mid-agent leaves no copy of the history in the
sandbox's writable paths, nor on the host."""

from __future__ import annotations

import asyncio
import json
import tempfile
from pathlib import Path

import docker
import pytest
from support.git_task import make_task

from harbor_ray.config import load_config
from harbor_ray.harbor.runner import run_trials

pytestmark = [pytest.mark.harbor, pytest.mark.ray, pytest.mark.docker, pytest.mark.slow]

AGENT = "agent.import_path=tests.harbor.agents:GitProbeAgent"


def config(run_label: str, tmp_path: Path, *overrides: str):
    return load_config([f"run_label={run_label}", f"jobs_dir={tmp_path}", "job_name=job", *overrides])


def trial_dir(tmp_path: Path) -> Path:
    [found] = [p for p in (tmp_path / "job").iterdir() if p.is_dir()]
    return found


def _host_copies() -> set[str]:
    return {p.name for p in Path(tempfile.gettempdir()).glob("harbor-ray-git-*")}


async def test_agent_sees_one_commit_and_the_verifier_the_original_history(
    ray_local, run_label: str, tmp_path: Path
) -> None:
    repo = make_task(tmp_path / "tasks")
    before = _host_copies()
    overrides = (f"tasks=[{repo['task']}]", AGENT, "sandbox.hide_git_history=true")
    [record] = await run_trials(config(run_label, tmp_path / "jobs", *overrides))
    assert record.error is None, record.error_message
    assert record.reward == 1.0
    out = trial_dir(tmp_path / "jobs")
    probe = json.loads((out / "agent" / "probe.json").read_text())
    assert len(probe["log"]) == 1  # one commit, and not one the repository had
    assert probe["log"][0] not in repo["log_all"]  # type: ignore[operator]
    for key in ("log", "reflog", "objects"):
        assert repo["fix"] not in probe[key], key
    assert repo["fix_blob"] not in probe["objects"]
    assert repo["head"] not in probe["objects"]  # not even the current commit: its parents would lead on
    assert probe["refs"] == ["refs/heads/work"]
    assert not [p for p in probe["git_dirs"] if "harbor-ray" in p]  # no hidden copy anywhere in the sandbox
    # the verifier saw the original .git, byte for byte
    digest = (out / "verifier" / "git_digest.txt").read_text()
    assert digest == (out / "verifier" / "expected_digest.txt").read_text()
    assert len(digest.strip()) == 64
    assert (out / "verifier" / "log.txt").read_text().split() == repo["log_all"]
    assert (out / "verifier" / "head.txt").read_text().strip() == repo["head"]
    assert _host_copies() == before


async def test_off_by_default_and_a_task_may_turn_it_on_or_off(ray_local, run_label: str, tmp_path: Path) -> None:
    shown = make_task(tmp_path / "default")
    [record] = await run_trials(config(run_label, tmp_path / "jobs", f"tasks=[{shown['task']}]", AGENT))
    probe = json.loads((trial_dir(tmp_path / "jobs") / "agent" / "probe.json").read_text())
    assert repo_fix_seen(probe, shown)
    assert record.reward == 1.0
    on = make_task(tmp_path / "on", hide=True)
    [record] = await run_trials(config(run_label, tmp_path / "jobs-on", f"tasks=[{on['task']}]", AGENT))
    probe = json.loads((trial_dir(tmp_path / "jobs-on") / "agent" / "probe.json").read_text())
    assert not repo_fix_seen(probe, on)
    assert record.reward == 1.0
    off = make_task(tmp_path / "off", hide=False)
    overrides = (f"tasks=[{off['task']}]", AGENT, "sandbox.hide_git_history=true")
    await run_trials(config(run_label, tmp_path / "jobs-off", *overrides))
    probe = json.loads((trial_dir(tmp_path / "jobs-off") / "agent" / "probe.json").read_text())
    assert repo_fix_seen(probe, off)


def repo_fix_seen(probe: dict[str, list[str]], repo: dict[str, object]) -> bool:
    return repo["fix"] in probe["log"] and repo["fix"] in probe["objects"]


async def test_a_trial_killed_mid_agent_leaves_no_copy_of_the_history(
    ray_local, run_label: str, tmp_path: Path, docker_client: docker.DockerClient
) -> None:
    repo = make_task(tmp_path / "tasks", sleep_agent=True)
    before = _host_copies()
    overrides = (
        f"tasks=[{repo['task']}]",
        AGENT,
        "sandbox.hide_git_history=true",
        "delete=false",  # keep the sandbox, to look inside it after the kill
        "+agent.kwargs.sleep_s=600",
    )
    run = asyncio.ensure_future(run_trials(config(run_label, tmp_path / "jobs", *overrides)))
    for _ in range(600):
        await asyncio.sleep(0.5)
        if list((tmp_path / "jobs").glob("job/*/agent/started")):
            break
    assert not run.done()
    run.cancel()
    with pytest.raises(asyncio.CancelledError):
        await run
    [container] = docker_client.containers.list(all=True, filters={"label": f"harbor-run={run_label}"})
    try:
        if container.status != "running":
            container.start()
        # every git object store in the sandbox's filesystem, and every tar: none holds the fix
        script = (
            "for d in $(find / -xdev -type d -name objects 2>/dev/null); do "
            f"git --git-dir=$(dirname $d) cat-file -e {repo['fix']} 2>/dev/null && echo FOUND $d; done; "
            "find / -xdev -name '*.tar' 2>/dev/null; git -C /app log --all --format=%H"
        )
        code, output = container.exec_run(["bash", "-c", script], user="0")
        lines = output.decode().split()
        assert code == 0
        assert "FOUND" not in lines
        assert not [line for line in lines if line.endswith(".tar")]
        assert len(lines) == 1
        assert lines[0] not in repo["log_all"]  # type: ignore[operator]
    finally:
        container.remove(force=True)
    assert _host_copies() == before
