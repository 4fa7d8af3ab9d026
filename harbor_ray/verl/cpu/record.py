"""verl's sync trainer, writing down each step's trained batch as verl holds it (for the CPU smoke run's checks).

`trainer.v1.trainer_mode=harbor_record` selects `RecordingSyncTrainer`, harbor_ray's trainer mode `harbor` (registered
through verl's `register_trainer`) that, just before `update_actor`, reads the batch back from verl's
TransferQueue (the very tensors the actor is about to train on: prompts, responses, response_mask, rewards,
rollout and old log-probs, advantages) and appends one JSON line per sample to `$HARBOR_RAY_BATCH_RECORD`.
The training itself is unchanged.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any

import transfer_queue as tq
from verl.trainer.ppo.v1.trainer_base import register_trainer

from harbor_ray.verl.cpu import BATCH_RECORD_ENV, RECORD_MODE
from harbor_ray.verl.trainer import HarborSyncTrainer

logger = logging.getLogger(__name__)

MODE = RECORD_MODE
ENV = BATCH_RECORD_ENV
_TENSORS = ["prompts", "responses", "response_mask", "rm_scores", "rollout_log_probs", "old_log_probs", "advantages"]


def _rows(value: Any, count: int) -> list[Any]:
    if getattr(value, "is_nested", False) is True:
        return [t.tolist() for t in value.unbind()]
    if hasattr(value, "tolist"):
        rows = value.tolist()
    else:
        try:
            rows = list(value)
        except TypeError:
            return [value] * count
    return [getattr(row, "data", row) for row in rows]  # NonTensorData wraps each object (as verl unwraps it)


@register_trainer(MODE)
class RecordingSyncTrainer(HarborSyncTrainer):
    """`HarborSyncTrainer` (trainer mode `harbor`) + one JSON line per trained sample (see the module docstring)."""

    def _update_actor(self, batch: Any, metrics: dict) -> Any:
        path = os.environ.get(ENV)
        if path:
            self._record(batch, path)
        return super()._update_actor(batch, metrics)

    def _record(self, batch: Any, path: str) -> None:
        data = tq.kv_batch_get(keys=batch.keys, partition_id=batch.partition_id, select_fields=_TENSORS)
        count = len(batch.keys)
        columns = {name: _rows(data[name], count) for name in _TENSORS}
        extras = self._optional(batch, "extra_fields", count)
        loop_metrics = self._optional(batch, "metrics", count)
        with open(path, "a") as out:
            for i, key in enumerate(batch.keys):
                row = {name: columns[name][i] for name in _TENSORS}
                info = extras[i].get("reward_extra_info", {}) if isinstance(extras[i], dict) else {}
                out.write(
                    json.dumps(
                        {
                            "step": self.global_steps,
                            "key": key,
                            "tag": batch.tags[i],
                            **row,
                            "reward_extra_info": {k: _plain(v) for k, v in info.items()},
                            "metrics": _metrics(loop_metrics[i]),
                        }
                    )
                    + "\n"
                )

    @staticmethod
    def _optional(batch: Any, name: str, count: int) -> list[Any]:
        try:
            data = tq.kv_batch_get(keys=batch.keys, partition_id=batch.partition_id, select_fields=[name])
            return _rows(data[name], count)
        except Exception as e:  # a verl without the field: the tensors are what matter
            logger.warning("batch record: no %s (%s)", name, e)
            return [{}] * count


def _metrics(value: Any) -> dict[str, Any]:
    """The agent loop's per-sample metrics (verl's AgentLoopMetrics: generate_sequences, tool_calls, ...)."""
    if hasattr(value, "model_dump"):
        value = value.model_dump()
    if not isinstance(value, dict):
        return {}
    return {k: _plain(v) for k, v in value.items() if isinstance(v, (int, float))}


def _plain(value: Any) -> Any:
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)
