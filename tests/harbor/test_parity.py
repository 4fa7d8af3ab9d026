"""Harbor 0.26's DockerEnvironment contract, field by field, on harbor_ray's sandbox (real engine).

What Harbor's DockerEnvironment does (harbor/environments/docker/docker.py and its compose files): the `main`
service runs the image with only its command replaced (`sh -c "sleep infinity"`), so the image's USER, WORKDIR,
ENV and ENTRYPOINT stay; the task's [environment] env goes into the container's environment; cpus and memory
become `cpus` / `mem_limit` (`write_resources_compose_file`); `exec` passes `-w` only for a cwd (or the task's
workdir) and `-u` only for a user (or the phase's default user), so None means the image's; the output dirs
are made by root with mode 777 (`BaseEnvironment._ensure_dirs_command`). Each test holds one of those against
our container, and the last one runs Harbor's own Trial with the oracle on such an image.
"""

from __future__ import annotations

import json
import logging
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from harbor_ray.backends.base import SandboxHandle, SandboxSpec
from harbor_ray.backends.docker.backend import DockerBackend
from harbor_ray.config import load_config
from harbor_ray.errors import TaskError
from harbor_ray.harbor.spec import task_spec

pytestmark = [pytest.mark.harbor, pytest.mark.docker]

TASK = Path(__file__).parent / "data" / "user-workdir"


@pytest.fixture(scope="module")
def parity(docker_client) -> Iterator[tuple[DockerBackend, SandboxHandle, SandboxSpec]]:
    """One sandbox of the parity task's image, as RayEnvironment would ask for it; none left at the end."""
    label = f"t-{uuid.uuid4().hex[:10]}"
    cfg = load_config([f"run_label={label}", "sandbox.ttl_s=600"])
    spec = task_spec(cfg, TASK)
    backend = DockerBackend(cfg.backend)
    handle = backend.create(spec, backend.ensure_image(spec))
    yield backend, handle, spec
    backend.destroy(handle)
    assert not docker_client.containers.list(all=True, filters={"label": f"harbor-run={label}"})


def run(parity, command: str, **kw) -> str:
    backend, handle, _ = parity
    result = backend.exec(handle, command, **kw)
    assert result.return_code == 0, result
    return result.stdout.strip()


def test_image_user_is_the_default_user(parity, docker_client) -> None:
    # Harbor: no `user:` on the main service, no `-u` for user=None -> the image's USER
    assert docker_client.api.inspect_container(parity[1].id)["Config"]["User"] == "agent"
    assert run(parity, "id -un") == "agent"


def test_image_workdir_is_the_default_cwd(parity, docker_client) -> None:
    # Harbor: no `working_dir:` on the main service, no `-w` for cwd=None -> the image's WORKDIR
    assert docker_client.api.inspect_container(parity[1].id)["Config"]["WorkingDir"] == "/home/agent/work"
    assert run(parity, "pwd") == "/home/agent/work"
    assert run(parity, "touch mine && stat -c %U mine") == "agent"  # where that user can write


def test_explicit_user_and_cwd_are_applied(parity) -> None:
    # Harbor: `-u <user>` and `-w <cwd>` when given
    assert run(parity, "id -u", user="root") == "0"
    assert run(parity, "id -u", user="0") == "0"
    assert run(parity, "pwd", cwd="/tmp") == "/tmp"


def test_image_env_and_task_env_are_in_the_container(parity) -> None:
    # Harbor: the image's ENV stays; the task's [environment] env goes into the service's environment
    assert ("TASK_VAR", "from-task") in parity[2].env
    assert run(parity, 'echo "$IMAGE_GREETING $TASK_VAR"') == "from-image from-task"


def test_image_entrypoint_runs(parity, docker_client) -> None:
    # Harbor: only the command is replaced, so the image's ENTRYPOINT runs with the keep-alive as its arguments
    config = docker_client.api.inspect_container(parity[1].id)["Config"]
    assert config["Entrypoint"] == ["/usr/local/bin/entrypoint.sh"]
    assert config["Cmd"] == ["sleep", "600"]
    assert run(parity, "cat /tmp/entrypoint-ran") == "ran as agent"


def test_upload_dir_keeps_the_targets_owner(parity, tmp_path: Path) -> None:
    # Harbor: `docker compose cp dir/. main:target` puts the contents in; the target keeps its owner and mode
    backend, handle, _ = parity
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "f.txt").write_text("x")
    backend.upload(handle, str(tmp_path / "src"), "/home/agent/work")
    assert run(parity, "stat -c '%U %a' /home/agent/work && cat f.txt") == "agent 755\nx"


def test_limits_are_harbors_compose_limits(parity, docker_client, tmp_path: Path) -> None:
    from harbor.environments.docker import write_resources_compose_file

    # what Harbor's DockerEnvironment would write for this task's cpus = 1, memory_mb = 512
    compose = json.loads(
        write_resources_compose_file(tmp_path / "r.json", cpu_limit=1, memory_limit_mb=512).read_text()
    )
    main = compose["services"]["main"]
    host = docker_client.api.inspect_container(parity[1].id)["HostConfig"]
    assert host["NanoCpus"] == int(main["cpus"] * 1e9)
    assert host["Memory"] == int(main["mem_limit"].rstrip("m")) * 1024 * 1024


def _task_asking(tmp_path: Path, environment: str) -> Path:
    task = tmp_path / "greedy"
    shutil.copytree(TASK, task)
    toml = (task / "task.toml").read_text().replace("cpus = 1\nmemory_mb = 512\n", environment)
    (task / "task.toml").write_text(toml)
    return task


def test_config_is_the_ceiling_of_a_tasks_limits(docker_client, tmp_path: Path, caplog) -> None:
    task = _task_asking(tmp_path, "cpus = 64\nmemory_mb = 65536\nstorage_mb = 999999\n")
    label = f"t-{uuid.uuid4().hex[:10]}"
    cfg = load_config([f"run_label={label}", "sandbox.memory_mb=2048", "sandbox.cpus=1", "sandbox.storage_mb=4096"])
    with caplog.at_level(logging.WARNING, logger="harbor_ray.harbor.spec"):
        spec = task_spec(cfg, task)
    assert (spec.cpus, spec.memory_mb, spec.storage_mb) == (1.0, 2048, 4096)
    assert "memory_mb = 65536 is above sandbox.memory_mb=2048" in caplog.text
    backend = DockerBackend(cfg.backend)
    handle = backend.create(spec, backend.ensure_image(spec))
    try:
        host = docker_client.api.inspect_container(handle.id)["HostConfig"]
        assert host["Memory"] == 2048 * 1024 * 1024  # not the 64 GiB the task asked for
        assert host["NanoCpus"] == 1_000_000_000
    finally:
        backend.destroy(handle)
    # less than the ceiling is the task's to ask
    assert task_spec(cfg, _task_asking(tmp_path / "b", "cpus = 0.5\nmemory_mb = 256\n")).memory_mb == 256


def test_gpus_above_the_ceiling_are_refused(tmp_path: Path) -> None:
    cfg = load_config(["run_label=t-gpu"])
    with pytest.raises(TaskError, match=r"gpus = 1 is above sandbox.gpus=0; set sandbox.gpus=1"):
        task_spec(cfg, _task_asking(tmp_path, "cpus = 1\nmemory_mb = 512\ngpus = 1\n"))
    assert task_spec(load_config(["run_label=t-gpu", "sandbox.gpus=2"]), tmp_path / "greedy").gpus == 1


def _prebuilt_task(tmp_path: Path, image: str) -> Path:
    """A task on a prebuilt image (`[environment] docker_image`, no Dockerfile): Harbor uploads environment/ into
    the workdir after start, here the image's WORKDIR (the task gives none), before any exec runs there."""
    task = tmp_path / "prebuilt"
    for sub in ("environment", "solution", "tests"):
        (task / sub).mkdir(parents=True)
    (task / "instruction.md").write_text("Copy seed.txt to result.txt.\n")
    (task / "task.toml").write_text(
        f'schema_version = "1.4"\n[environment]\ndocker_image = "{image}"\nnetwork_mode = "no-network"\n'
        "[verifier]\ntimeout_sec = 60.0\n[agent]\ntimeout_sec = 60.0\n"
    )
    (task / "environment" / "seed.txt").write_text("uploaded\n")
    (task / "solution" / "solve.sh").write_text("#!/bin/bash\nset -e\ncp seed.txt result.txt\n")
    (task / "tests" / "test.sh").write_text(
        "#!/bin/bash\n"
        '[ "$(cat /home/agent/work/result.txt)" = uploaded ] && echo 1 > /logs/verifier/reward.txt '
        "|| echo 0 > /logs/verifier/reward.txt\n"
    )
    return task


@pytest.mark.ray
@pytest.mark.slow
async def test_oracle_scores_one_on_a_non_root_image_with_its_own_workdir(
    ray_local, run_label, tmp_path, parity
) -> None:
    from harbor_ray.harbor.runner import run_trials

    prebuilt = _prebuilt_task(tmp_path, parity[1].image)
    cfg = load_config(
        [
            f"run_label={run_label}",
            f"jobs_dir={tmp_path}",
            "job_name=job",
            f"tasks=[{TASK},{prebuilt}]",
            "n_concurrent=2",
        ]
    )
    records = {r.task: r for r in await run_trials(cfg)}
    record = records["user-workdir"]
    trial = tmp_path / "job" / record.trial
    assert record.error is None, record
    # test.sh checks every field (user, cwd, env, entrypoint, [verifier] user and env, /logs owner and mode)
    assert record.reward == 1.0, (trial / "verifier" / "test-stdout.txt").read_text()
    # the oracle, as the image's non-root user, wrote its log into /logs/agent (root's, mode 777 from the start)
    assert (trial / "agent" / "oracle.txt").is_file()
    assert (records["prebuilt"].error, records["prebuilt"].reward) == (None, 1.0)
