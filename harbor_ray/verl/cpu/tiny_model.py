"""A tiny Qwen2-shaped model and a byte-level BPE tokenizer with a ChatML template, made offline (no hub).

`build_tiny_model(out)` writes the tokenizer and a `config.json` (the shape the verl tests' scripted server
needs); `save_weights=True` also writes freshly initialised weights, which verl's FSDP engine and the `hf`
rollout load. `warm_start.py` turns that into a model that sometimes solves a trivial task.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

# Qwen2.5-style ChatML with tools rendered in the system turn and hermes <tool_call> blocks.
CHAT_TEMPLATE = """\
{%- if tools %}
{{- '<|im_start|>system\\n' }}
{%- if messages[0].role == 'system' %}{{- messages[0].content + '\\n\\n' }}{%- endif %}
{{- '# Tools\\n\\nYou may call functions. Their signatures:\\n<tools>' }}
{%- for tool in tools %}{{- '\\n' + (tool | tojson) }}{%- endfor %}
{{- '\\n</tools>\\n\\nCall one as <tool_call>\\n{"name": <name>, "arguments": <json object>}\\n' }}
{{- '</tool_call><|im_end|>\\n' }}
{%- elif messages[0].role == 'system' %}
{{- '<|im_start|>system\\n' + messages[0].content + '<|im_end|>\\n' }}
{%- endif %}
{%- for message in messages %}
{%- if message.role == 'user' or (message.role == 'system' and not loop.first) %}
{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' }}
{%- elif message.role == 'assistant' %}
{{- '<|im_start|>assistant' }}
{%- if message.content %}{{- '\\n' + message.content }}{%- endif %}
{%- for call in message.tool_calls | default([]) %}
{%- set fn = call.function if call.function is defined else call %}
{{- '\\n<tool_call>\\n{"name": "' + fn.name + '", "arguments": ' }}
{{- fn.arguments if fn.arguments is string else (fn.arguments | tojson) }}
{{- '}\\n</tool_call>' }}
{%- endfor %}
{{- '<|im_end|>\\n' }}
{%- elif message.role == 'tool' %}
{%- if loop.first or messages[loop.index0 - 1].role != 'tool' %}{{- '<|im_start|>user' }}{%- endif %}
{{- '\\n<tool_response>\\n' + message.content + '\\n</tool_response>' }}
{%- if loop.last or messages[loop.index0 + 1].role != 'tool' %}{{- '<|im_end|>\\n' }}{%- endif %}
{%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}
"""

CORPUS = [
    "Create the file /app/hello.txt containing exactly the line Hello, world!",
    'printf "Hello, world!\\n" > /app/hello.txt && cat /app/hello.txt',
    '{"name": "bash", "arguments": {"command": "ls -la /app"}}',
    "[exit code: 0] (no output) You are a helpful assistant. Run a bash command in the sandbox.",
    'python3 -c \'import json; json.dump({"lines": 3, "words": 15}, open("/app/stats.json", "w"))\'',
]


def build_tiny_model(
    out: Path,
    *,
    corpus: Sequence[str] = CORPUS,
    vocab_size: int = 800,
    hidden_size: int = 16,
    intermediate_size: int = 32,
    num_layers: int = 1,
    num_heads: int = 2,
    num_kv_heads: int = 1,
    save_weights: bool = False,
    seed: int = 0,
) -> Path:
    """A byte-level BPE tokenizer (any text encodes and decodes exactly) plus a tiny Qwen2 config.json,
    and, with `save_weights`, randomly initialised weights (seeded)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast, Qwen2Config

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
    )
    tok.train_from_iterator(list(corpus) * 30, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>", chat_template=CHAT_TEMPLATE
    )
    fast.add_tokens(["<tool_call>", "</tool_call>", "<tool_response>", "</tool_response>"])
    fast.save_pretrained(out)
    config = Qwen2Config(
        vocab_size=len(fast),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads,
        max_position_embeddings=32768,
        architectures=["Qwen2ForCausalLM"],
        eos_token_id=fast.convert_tokens_to_ids("<|im_end|>"),
        pad_token_id=fast.pad_token_id,
        bos_token_id=None,
        tie_word_embeddings=True,
    )
    if not save_weights:
        config.save_pretrained(out)
        return out
    _save_random_weights(config, out, seed)
    return out


def _save_random_weights(config: Any, out: Path, seed: int) -> None:
    import torch
    from transformers import GenerationConfig, Qwen2ForCausalLM

    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(config)
    model.save_pretrained(out)
    GenerationConfig(
        eos_token_id=config.eos_token_id, pad_token_id=config.pad_token_id, do_sample=True, temperature=1.0
    ).save_pretrained(out)
