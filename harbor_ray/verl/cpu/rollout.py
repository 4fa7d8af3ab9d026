"""verl's `hf` async rollout: token-in/token-out `generate` with log-probs on Hugging Face transformers, on CPU.

Three pieces, each the counterpart of one of verl's vLLM classes, so verl's own trainer drives them unchanged:

- `HFRolloutServer` (a Ray actor, like `vLLMHttpServer`): `generate(prompt_ids, sampling_params, request_id)`
  returns verl's `TokenOutput` (sampled ids and their log-probs). It samples token by token with the KV cache;
  a log-prob is `log_softmax(logits / temperature)` of the sampled token, the quantity verl's actor computes
  for the same token (`rollout_log_probs` and `old_log_probs` agree up to float error). Requests are served
  one at a time (a CPU has no batch speed-up worth the complexity here). `update_weights` loads a state dict;
  `score` returns the log-probs of a given sequence under the served weights (what a test uses to see that
  the rollout serves the updated policy).
- `HFReplica` (a `RolloutReplica`, like `vLLMReplica`): in hybrid mode it starts one server beside its
  training ranks (same node) and hands verl the handle and an address.
- `HFServerAdapter` (a `BaseRollout`, like vLLM's `ServerAdapter`): lives in the training rank; verl's weight
  sync (`ActorRolloutRefWorker.update_weights`, checkpoint backend `naive`) calls its `update_weights` with the
  engine's per-tensor parameters after every update, and it pushes them to the server.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import threading
import time
from collections.abc import Iterable
from typing import Any

import ray
import torch
from verl.workers.rollout.base import BaseRollout
from verl.workers.rollout.replica import RolloutReplica, TokenOutput

from harbor_ray.verl.cpu import HF_RECORD_ENV

logger = logging.getLogger(__name__)

RECORD_ENV = HF_RECORD_ENV  # a JSONL file: every generation and weight update of the server
PROBE = list(range(1, 33))  # a fixed token sequence scored after each weight load ("probe_log_prob")


def server_name(replica_rank: int) -> str:
    """The Ray actor name of replica `replica_rank`'s server (found again by the adapter and by tests)."""
    return f"harbor_hf_rollout_server_{replica_rank}"


class HFRolloutServer:
    """One transformers model on CPU serving verl's token-in/token-out `generate`."""

    def __init__(self, config: Any, model_config: Any, replica_rank: int) -> None:
        from transformers import AutoModelForCausalLM

        torch.set_num_threads(max(1, int(os.environ.get("HARBOR_RAY_HF_THREADS", "1"))))
        self.config = config
        self.replica_rank = replica_rank
        # verl hands replicas the model config as a DictConfig (its `path`), ranks as HFModelConfig (`local_path`)
        path = getattr(model_config, "local_path", None) or model_config.path
        self.model = AutoModelForCausalLM.from_pretrained(path, torch_dtype=torch.float32, attn_implementation="sdpa")
        self.model.eval()
        eos = self.model.generation_config.eos_token_id
        eos_ids = eos if isinstance(eos, list) else [eos]
        self.eos_ids = {int(i) for i in eos_ids if i is not None}
        self.max_model_len = int(config.prompt_length + config.response_length)
        if getattr(config, "max_model_len", None):
            self.max_model_len = int(config.max_model_len)
        self.generator = torch.Generator().manual_seed(int(getattr(config, "seed", 0) or 0) + replica_rank)
        self.lock = threading.Lock()
        self.global_steps: int | None = None
        self.weight_version = 0
        self.stats = {"requests": 0, "tokens": 0, "generate_s": 0.0, "weight_updates": 0, "update_s": 0.0}
        self.record_path = os.environ.get(RECORD_ENV) or None
        self._record({"event": "loaded", "weight_version": 0, "probe_log_prob": self._probe()})

    # --- generation ---------------------------------------------------------------------------------------
    async def generate(
        self,
        prompt_ids: list[int],
        sampling_params: dict[str, Any],
        request_id: str,
        image_data: Any = None,
        video_data: Any = None,
        **kwargs: Any,
    ) -> TokenOutput:
        if image_data is not None or video_data is not None:
            msg = "the hf rollout serves text only: image_data/video_data must be None"
            raise ValueError(msg)
        params = dict(sampling_params)
        room = self.max_model_len - len(prompt_ids)
        if room < 1:
            msg = f"prompt of {len(prompt_ids)} tokens leaves no room within max_model_len={self.max_model_len}"
            raise ValueError(msg)
        max_tokens = params.pop("max_tokens", None) or params.pop("max_new_tokens", None)
        if max_tokens is None:
            max_tokens = min(
                self.config.response_length,
                self.config.prompt_length + self.config.response_length - len(prompt_ids),
            )
        max_tokens = max(1, min(int(max_tokens), room))
        ids, log_probs, stop = await asyncio.to_thread(self._sample, list(prompt_ids), params, max_tokens)
        self._record(
            {
                "event": "generate",
                "request_id": request_id,
                "weight_version": self.weight_version,
                "global_steps": self.global_steps,
                "prompt_ids": list(prompt_ids),
                "token_ids": ids,
                "log_probs": log_probs,
            }
        )
        return TokenOutput(
            token_ids=ids,
            log_probs=log_probs if params.get("logprobs") else None,
            stop_reason=stop,
            extra_fields={"global_steps": self.global_steps, "weight_version": self.weight_version},
        )

    def _sample(
        self, prompt_ids: list[int], params: dict[str, Any], max_tokens: int
    ) -> tuple[list[int], list[float], str]:
        temperature = float(params.get("temperature", 1.0))
        top_p = float(params.get("top_p", 1.0))
        top_k = int(params.get("top_k", -1) or -1)
        ignore_eos = bool(params.get("ignore_eos", False))
        out_ids: list[int] = []
        out_lp: list[float] = []
        with self.lock, torch.inference_mode():
            started = time.monotonic()
            out = self.model(input_ids=torch.tensor([prompt_ids]), use_cache=True)
            for _ in range(max_tokens):
                logits = out.logits[0, -1].float()
                token, log_prob = _pick(logits, temperature, top_p, top_k, self.generator)
                out_ids.append(token)
                out_lp.append(log_prob)
                if token in self.eos_ids and not ignore_eos:
                    break
                out = self.model(input_ids=torch.tensor([[token]]), past_key_values=out.past_key_values, use_cache=True)
            self.stats["requests"] += 1
            self.stats["tokens"] += len(out_ids)
            self.stats["generate_s"] += time.monotonic() - started
        return out_ids, out_lp, "completed"

    async def score(self, token_ids: list[int], prompt_length: int, temperature: float = 1.0) -> list[float]:
        """Log-probs of token_ids[prompt_length:] under the served weights (as `generate` reports them)."""
        return await asyncio.to_thread(self._score, list(token_ids), prompt_length, temperature)

    def _score(self, token_ids: list[int], prompt_length: int, temperature: float) -> list[float]:
        with self.lock, torch.inference_mode():
            logits = self.model(input_ids=torch.tensor([token_ids])).logits[0].float() / temperature
        log_probs = torch.log_softmax(logits[:-1], dim=-1)
        targets = torch.tensor(token_ids[1:])
        picked = log_probs.gather(1, targets[:, None])[:, 0]
        return picked[prompt_length - 1 :].tolist()

    # --- weights ------------------------------------------------------------------------------------------
    async def update_weights(self, state: dict[str, torch.Tensor], global_steps: int | None = None) -> int:
        """Load the trainer's parameters (HF names); every model parameter must be in `state`."""
        started = time.monotonic()
        with self.lock:
            own = dict(self.model.named_parameters())
            missing = [name for name in own if name not in state and not _tied(name, self.model)]
            if missing:
                msg = f"weight update lacks {len(missing)} parameters, e.g. {missing[:3]}"
                raise ValueError(msg)
            with torch.no_grad():
                for name, param in own.items():
                    if name in state:
                        param.copy_(state[name].to(param.dtype))
            self.weight_version += 1
            self.global_steps = global_steps
            self.stats["weight_updates"] += 1
            self.stats["update_s"] += time.monotonic() - started
        logger.info("hf rollout %d: weights v%d (step %s)", self.replica_rank, self.weight_version, global_steps)
        self._record(
            {
                "event": "weights",
                "weight_version": self.weight_version,
                "global_steps": global_steps,
                "probe_log_prob": self._probe(),
            }
        )
        return self.weight_version

    def _probe(self) -> float:
        return float(sum(self._score(PROBE, 1, 1.0)))

    def _record(self, row: dict[str, Any]) -> None:
        if self.record_path:
            with open(self.record_path, "a") as out:
                out.write(json.dumps({"replica": self.replica_rank, **row}) + "\n")

    async def get_stats(self) -> dict[str, Any]:
        return {**self.stats, "weight_version": self.weight_version, "global_steps": self.global_steps}

    # --- verl's server controls: nothing to free or resume on CPU ----------------------------------------
    async def wake_up(self, tags: list[str] | None = None) -> None:
        return None

    async def sleep(self) -> None:
        return None

    async def clear_kv_cache(self) -> None:
        return None

    async def release_kv_cache(self) -> None:
        return None

    async def resume_kv_cache(self) -> None:
        return None

    async def wait_for_requests_to_drain(self) -> None:
        return None

    async def abort_all_requests(self, reset_prefix_cache: bool = True, reject_request: bool = False) -> dict:
        return {"aborted_count": 0, "request_ids": []}

    async def abort_request(self, request_id: str, reset_prefix_cache: bool = True) -> dict:
        return {"aborted": False, "request_id": request_id}

    async def resume_generation(self) -> None:
        return None

    async def set_global_steps(self, global_steps: int) -> None:
        self.global_steps = global_steps

    async def start_profile(self, **kwargs: Any) -> None:
        return None

    async def stop_profile(self) -> None:
        return None


def _tied(name: str, model: Any) -> bool:
    return name == "lm_head.weight" and bool(getattr(model.config, "tie_word_embeddings", False))


def _pick(
    logits: torch.Tensor, temperature: float, top_p: float, top_k: int, generator: torch.Generator
) -> tuple[int, float]:
    """Sample one token (greedy at temperature 0) and its log-prob under logits / temperature."""
    if temperature <= 0:
        token = int(torch.argmax(logits))
        return token, float(torch.log_softmax(logits, dim=-1)[token])
    log_probs = torch.log_softmax(logits / temperature, dim=-1)
    probs = log_probs.exp()
    if 0 < top_k < probs.numel():
        kth = torch.topk(probs, top_k).values[-1]
        probs = torch.where(probs < kth, torch.zeros_like(probs), probs)
    if top_p < 1.0:
        sorted_probs, order = torch.sort(probs, descending=True)
        keep = torch.cumsum(sorted_probs, 0) - sorted_probs < top_p
        mask = torch.zeros_like(probs, dtype=torch.bool)
        mask[order[keep]] = True
        probs = torch.where(mask, probs, torch.zeros_like(probs))
    token = int(torch.multinomial(probs / probs.sum(), 1, generator=generator))
    return token, float(log_probs[token])


class HFReplica(RolloutReplica):
    """verl's rollout replica for `rollout.name=hf`: one `HFRolloutServer` on the node of its training ranks."""

    def rollout_worker_use_gpu(self) -> bool:
        return False

    async def launch_servers(self) -> None:
        options: dict[str, Any] = {
            "name": server_name(self.replica_rank),
            "num_cpus": 0,
            "max_concurrency": self.max_concurrency,
        }
        if self.workers:
            node_id = await self.workers[0].__ray_call__.remote(lambda _self: ray.get_runtime_context().get_node_id())
            options["scheduling_strategy"] = ray.util.scheduling_strategies.NodeAffinitySchedulingStrategy(
                node_id=node_id, soft=False
            )
        actor: Any = ray.remote(HFRolloutServer)
        server: Any = actor.options(**options).remote(self.config, self.model_config, self.replica_rank)
        await server.get_stats.remote()  # the model is loaded
        self.servers = [server]
        self._server_handle = server
        self._server_address = f"hf-{self.replica_rank}"


class HFServerAdapter(BaseRollout):
    """The training rank's side of the `hf` rollout: pushes the engine's weights to its replica's server."""

    def __init__(self, config: Any, model_config: Any, device_mesh: Any, replica_rank: int = -1) -> None:
        super().__init__(config, model_config, device_mesh)
        rank = int(os.environ.get("RANK", "0"))
        world = (
            self.config.tensor_model_parallel_size
            * self.config.data_parallel_size
            * self.config.pipeline_model_parallel_size
        )
        self.replica_rank = rank // world if replica_rank == -1 else replica_rank
        self.rollout_rank = rank % world
        self._server: Any = None

    def _handle(self) -> Any:
        if self._server is None:
            self._server = ray.get_actor(server_name(self.replica_rank))
        return self._server

    async def resume(self, tags: list[str]) -> None:
        await self._handle().wake_up.remote(tags)

    async def release(self) -> None:
        await self._handle().sleep.remote()

    async def update_weights(
        self, weights: Iterable[tuple[str, torch.Tensor]], wire_format: str = "named_tensors", **kwargs: Any
    ) -> None:
        if wire_format != "named_tensors":
            msg = f"the hf rollout takes full named tensors, not {wire_format!r}"
            raise ValueError(msg)
        state: dict[str, torch.Tensor] = {}
        for name, tensor in weights:
            full = tensor.full_tensor() if hasattr(tensor, "full_tensor") else tensor
            state[name] = full.detach().to("cpu", copy=True)
        if self.rollout_rank == 0:
            await self._handle().update_weights.remote(state, kwargs.get("global_steps"))
