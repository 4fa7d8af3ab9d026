"""A tiny policy that solves `examples/tasks/hello-file` some of the time: a few seconds of supervised steps.

A randomly initialised model never writes a valid tool call, so every reward of a GRPO group would be 0, every
advantage 0 and the gradient 0. `warm_model()` builds the tiny Qwen2 model and tokenizer (tiny_model.py), then
trains it on CPU on two kinds of turns, for the two agent loops:

- `harbor_sandbox` (verl's ToolAgentLoop, hermes): the instruction with the bash tool -> one `<tool_call>`;
  after a tool response -> `Done.`;
- `harbor_trial` (Harbor's terminus-2, JSON): terminus-2's prompt -> a JSON reply whose command writes the file
  and sets `task_complete` (it repeats it when terminus-2 asks for confirmation).

Half of the training replies write the right line (`Hello, world!`), half a wrong one (`Hello world!`), so
sampled at temperature 1 the model solves the task about half of the time: rewards differ within a group.
The result is cached under `~/.cache/harbor_ray/tiny-models/<key>`, the key a hash of this recipe.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import shutil
import time
from pathlib import Path
from typing import Any

from harbor_ray.verl.cpu.tiny_model import CORPUS, build_tiny_model

logger = logging.getLogger(__name__)

INSTRUCTION = "Create the file `/app/hello.txt` containing exactly the line `Hello, world!`.\n"
GOOD, BAD = "Hello, world!", "Hello world!"
SHAPE: dict[str, int] = {
    "vocab_size": 1200,
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_layers": 2,
    "num_heads": 4,
}
RECIPE: dict[str, Any] = {"version": 4, "steps": 2400, "lr": 5e-3, "seed": 0, **SHAPE}


def _terminus_template() -> str:
    from importlib import resources

    path = resources.files("harbor.agents.terminus_2") / "templates" / "terminus-json-plain.txt"
    return path.read_text()


def _bash_tool() -> dict[str, Any]:
    from harbor_ray.verl.tool import bash_tool_schema

    return bash_tool_schema().model_dump(exclude_unset=True, exclude_none=True)


def _sandbox_reply(line: str) -> str:
    command = f"printf '{line}\\n' > /app/hello.txt"
    return "<tool_call>\n" + json.dumps({"name": "bash", "arguments": {"command": command}}) + "\n</tool_call>"


def _terminus_reply(line: str) -> str:
    keystrokes = f"printf '{line}\\n' > /app/hello.txt\n"
    reply = {
        "analysis": "",
        "plan": "",
        "commands": [{"keystrokes": keystrokes, "duration": 0.1}],
        "task_complete": True,
    }
    return json.dumps(reply)  # one line: the fewer tokens, the fewer chances to break the JSON at temperature 1


def _examples(tokenizer: Any) -> list[tuple[list[int], int]]:
    """(token ids, prompt length) pairs: the loss is on the reply only."""
    tool = _bash_tool()
    terminus = _terminus_template()
    out: list[tuple[list[int], int]] = []

    def add(messages: list[dict[str, Any]], reply: str, tools: list[dict[str, Any]] | None = None) -> None:
        prompt = tokenizer.apply_chat_template(messages, tools=tools, add_generation_prompt=True, tokenize=False)
        prompt_ids = tokenizer.encode(prompt, add_special_tokens=False)
        reply_ids = tokenizer.encode(reply + "<|im_end|>", add_special_tokens=False)
        out.append((prompt_ids + reply_ids, len(prompt_ids)))

    for line in (GOOD, BAD):
        first = [{"role": "user", "content": INSTRUCTION}]
        add(first, _sandbox_reply(line), [tool])
        call = {"role": "assistant", "content": _sandbox_reply(line)}
        for observation in ("(no output)\n[exit code: 0]", "[exit code: 0]"):
            add([*first, call, {"role": "tool", "content": observation}], "Done.", [tool])
        for screen in ("root@sandbox:/app# ", "root@4f2a9c1b7d3e:/app# \n\n", ""):
            user = {"role": "user", "content": terminus.format(instruction=INSTRUCTION, terminal_state=screen)}
            add([user], _terminus_reply(line))
            confirm = (
                f"Current terminal state:\n{screen}\n\nAre you sure you want to mark the task as complete? "
                "This will trigger your solution to be graded and you won't be able to make any further corrections. "
                'If so, include "task_complete": true in your JSON response again.'
            )
            add(
                [user, {"role": "assistant", "content": _terminus_reply(line)}, {"role": "user", "content": confirm}],
                _terminus_reply(line),
            )
    return out


def _corpus() -> list[str]:
    return [
        *CORPUS,
        _terminus_template(),
        INSTRUCTION,
        _terminus_reply(GOOD),
        _terminus_reply(BAD),
        _sandbox_reply(GOOD),
        _sandbox_reply(BAD),
        json.dumps(_bash_tool()),
    ]


def recipe_key() -> str:
    """A content key: the recipe, this module's and tiny_model's source, and the terminus-2 template."""
    from harbor_ray.verl.cpu import tiny_model

    h = hashlib.sha256(json.dumps(RECIPE, sort_keys=True).encode())
    for source in (Path(__file__), Path(tiny_model.__file__)):
        h.update(source.read_bytes())
    h.update(_terminus_template().encode())
    return h.hexdigest()[:16]


def cache_root() -> Path:
    return Path(os.environ.get("HARBOR_RAY_CACHE", Path.home() / ".cache" / "harbor_ray")) / "tiny-models"


def warm_model(cache: Path | None = None) -> Path:
    """The warm-started model directory (built once per recipe key, then reused)."""
    root = cache or cache_root()
    final = root / f"hello-{recipe_key()}"
    if (final / "model.safetensors").exists():
        return final
    tmp = root / f".build-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    started = time.monotonic()
    build_tiny_model(
        tmp,
        corpus=_corpus(),
        vocab_size=SHAPE["vocab_size"],
        hidden_size=SHAPE["hidden_size"],
        intermediate_size=SHAPE["intermediate_size"],
        num_layers=SHAPE["num_layers"],
        num_heads=SHAPE["num_heads"],
        num_kv_heads=2,
        save_weights=True,
        seed=RECIPE["seed"],
    )
    loss = _train(tmp)
    (tmp / "warm_start.json").write_text(json.dumps({**RECIPE, "final_loss": loss}, indent=2))
    try:
        tmp.rename(final)
    except OSError:  # another process built it first
        shutil.rmtree(tmp, ignore_errors=True)
    logger.info("warm-started %s in %.1fs (loss %.3f)", final, time.monotonic() - started, loss)
    return final


def _train(path: Path) -> float:
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a model this small trains ~10x faster on one thread than on two busy cores
    try:
        return _train_steps(path)
    finally:
        torch.set_num_threads(threads)


def _train_steps(path: Path) -> float:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(RECIPE["seed"])
    rng = random.Random(RECIPE["seed"])
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, torch_dtype=torch.float32, attn_implementation="sdpa")
    examples = _examples(tokenizer)
    optim = torch.optim.AdamW(model.parameters(), lr=RECIPE["lr"])
    # cosine to 0: the late small steps make each reply token's distribution sharp (few broken JSONs)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optim, T_max=RECIPE["steps"])
    model.train()
    loss_value = float("nan")
    terminus = [e for e in examples if e[1] > 500]  # the long-prompt JSON turns are the harder ones: 2 of 3 steps
    for step in range(RECIPE["steps"]):
        ids, prompt_len = rng.choice(terminus if step % 3 else examples)
        input_ids = torch.tensor([ids])
        labels = input_ids.clone()
        labels[0, :prompt_len] = -100
        loss = model(input_ids=input_ids, labels=labels).loss
        loss.backward()
        optim.step()
        schedule.step()
        optim.zero_grad()
        loss_value = float(loss)
    model.eval()
    model.save_pretrained(path)
    return loss_value
