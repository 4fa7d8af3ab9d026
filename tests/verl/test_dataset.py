"""The dataset writer (read back by verl's own RLHFDataset), task loading, reward parsing, observations."""

from __future__ import annotations

from pathlib import Path

import pytest
from verl_harness import TASKS

from harbor_ray.backends.base import ExecResult
from harbor_ray.errors import ConfigError, TaskError
from harbor_ray.verl.dataset import main, parse_args
from harbor_ray.verl.task import load_task
from harbor_ray.verl.verifier import RewardParseError, parse_reward_json, parse_reward_text

pytestmark = [pytest.mark.unit, pytest.mark.verl]


def test_dataset_rows_are_what_verls_rlhfdataset_reads(tiny_model: Path, tmp_path: Path) -> None:
    from omegaconf import OmegaConf
    from verl.utils import hf_tokenizer
    from verl.utils.dataset.rl_dataset import RLHFDataset

    out = tmp_path / "train.parquet"
    assert main([f"tasks={TASKS}", f"out={out}", "system_prompt=You are an agent."]) == 0
    config = OmegaConf.create(
        {
            "max_prompt_length": 4096,
            "filter_overlong_prompts": True,
            "filter_overlong_prompts_workers": 1,
            "cache_dir": str(tmp_path / "cache"),
        }
    )
    dataset = RLHFDataset(data_files=[str(out)], tokenizer=hf_tokenizer(str(tiny_model)), config=config)

    names = sorted(p.name for p in TASKS.iterdir() if (p / "task.toml").is_file())
    assert len(dataset) == len(names)
    rows = [dataset[i] for i in range(len(dataset))]
    assert sorted(r["extra_info"]["task_name"] for r in rows) == names
    hello = next(r for r in rows if r["extra_info"]["task_name"] == "hello-file")
    assert hello["agent_name"] == "harbor_sandbox"
    assert hello["data_source"] == "harbor"
    assert [m["role"] for m in hello["raw_prompt"]] == ["system", "user"]
    assert hello["raw_prompt"][1]["content"] == (TASKS / "hello-file" / "instruction.md").read_text()
    assert Path(hello["extra_info"]["task_path"]) == (TASKS / "hello-file").resolve()
    assert hello["extra_info"]["task_rel"] == "hello-file"
    assert hello["index"] == hello["extra_info"]["index"]
    assert hello["reward_model"]["style"] == "harbor_verifier"


def test_dataset_arguments_fail_with_the_key_named() -> None:
    with pytest.raises(ConfigError, match="^colour: unknown key"):
        parse_args(["tasks=x", "out=y.parquet", "colour=red"])
    with pytest.raises(ConfigError, match="^out: missing"):
        parse_args(["tasks=x"])
    with pytest.raises(ConfigError, match="out=y.csv"):
        parse_args(["tasks=x", "out=y.csv"])


def test_rows_name_the_agent_loop() -> None:
    from harbor_ray.verl.dataset import build_rows

    assert {r["agent_name"] for r in build_rows([str(TASKS)])} == {"harbor_sandbox"}
    assert {r["agent_name"] for r in build_rows([str(TASKS)], agent_name="harbor_trial")} == {"harbor_trial"}
    assert parse_args(["tasks=x", "out=y.parquet", "agent_name=harbor_trial"])["agent_name"] == "harbor_trial"


def test_a_task_without_tests_fails_at_dataset_time(tmp_path: Path) -> None:
    task = tmp_path / "no-tests"
    (task / "environment").mkdir(parents=True)
    (task / "task.toml").write_text('schema_version = "1.4"\n')
    (task / "instruction.md").write_text("Do something.\n")
    (task / "environment" / "Dockerfile").write_text("FROM harbor-ray/base:bookworm\n")
    with pytest.raises(TaskError, match="no-tests"):
        main([f"tasks={tmp_path}", f"out={tmp_path / 'x.parquet'}"])


def test_task_settings_come_from_harbors_model() -> None:
    task = load_task((TASKS / "hello-file").resolve())
    assert (task.name, task.test_script, task.verifier_timeout_s) == ("hello-file", "test.sh", 60.0)
    assert task.instruction.startswith("Create the file `/app/hello.txt`")


@pytest.mark.parametrize(
    ("text", "rewards"),
    [("1\n", {"reward": 1.0}), ("0.25", {"reward": 0.25}), (" -1 ", {"reward": -1.0})],
)
def test_reward_txt(text: str, rewards: dict[str, float]) -> None:
    assert parse_reward_text(text) == rewards


@pytest.mark.parametrize("text", ["", "\n", "yes", "nan", "inf"])
def test_bad_reward_txt(text: str) -> None:
    with pytest.raises(RewardParseError):
        parse_reward_text(text)


def test_reward_json_keeps_every_key() -> None:
    assert parse_reward_json('{"reward": 0.5, "lines": 1, "words": 0}') == {"reward": 0.5, "lines": 1.0, "words": 0.0}
    assert parse_reward_json("0.75") == {"reward": 0.75}


@pytest.mark.parametrize("text", ["", "{", '{"reward": "1"}', '{"reward": true}', '{"reward": NaN}', "{}", "[1]"])
def test_bad_reward_json(text: str) -> None:
    with pytest.raises(RewardParseError):
        parse_reward_json(text)


def test_observation_format() -> None:
    from harbor_ray.verl.tool import format_observation

    assert format_observation(ExecResult("a\n", "b", 2)) == "a\nb\n[exit code: 2]"
    assert format_observation(ExecResult("", "", 0)) == "(no output)\n[exit code: 0]"
    assert format_observation(ExecResult("x", "", 0)) == "x\n[exit code: 0]"
