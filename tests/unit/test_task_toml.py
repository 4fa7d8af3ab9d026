"""A task.toml Harbor cannot read is one line naming its file (malformed TOML) or its field (a wrong type),
before anything starts (`find_task_dirs`, which `run` uses to discover tasks)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from harbor_ray.errors import TaskError
from harbor_ray.harbor.spec import find_task_dirs

pytestmark = pytest.mark.unit
EXAMPLE = Path(__file__).resolve().parents[2] / "examples/tasks/hello-file"


def task_with(tmp_path: Path, toml: str) -> Path:
    task = tmp_path / "tasks" / "bad-task"
    shutil.copytree(EXAMPLE, task)
    (task / "task.toml").write_text(toml)
    return task


def test_good_tasks_are_found() -> None:
    assert find_task_dirs(EXAMPLE) == [EXAMPLE]


def test_malformed_task_toml_names_the_file(tmp_path: Path) -> None:
    task = task_with(tmp_path, "[environment\ncpus = 1\n")
    with pytest.raises(TaskError) as info:
        find_task_dirs(tmp_path / "tasks")
    message = str(info.value)
    assert message.startswith(f"{task / 'task.toml'}: not valid TOML (")
    assert "\n" not in message


@pytest.mark.parametrize(
    ("toml", "field"),
    [
        ('[environment]\nmemory_mb = "lots"\n', "[environment] memory_mb:"),
        ("[verifier]\ntimeout_sec = [1]\n", "[verifier] timeout_sec:"),
        ('[agent]\ntimeout_sec = "soon"\n', "[agent] timeout_sec:"),
    ],
)
def test_task_toml_type_error_names_the_field(toml: str, field: str, tmp_path: Path) -> None:
    task = task_with(tmp_path, 'schema_version = "1.4"\n' + toml)
    with pytest.raises(TaskError) as info:
        find_task_dirs(task)
    assert str(info.value).startswith(f"{task / 'task.toml'}: {field}"), str(info.value)
    assert "\n" not in str(info.value)
