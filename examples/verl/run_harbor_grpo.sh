#!/usr/bin/env bash
# GRPO with verl on Harbor tasks: every episode runs in a fresh harbor_ray sandbox (a Docker container owned by
# a Ray actor) and is rewarded by the task's own tests/test.sh. Run it from the repository root.
#
# The Ray cluster (see docs/verl.md):
#   head / GPU nodes:  ray start --head                       (verl's actor, rollout and reference workers)
#   CPU nodes:         ray start --address=HEAD:6379 --resources='{"sandbox_slot": 32}'
#                      (each with a Docker daemon; sandbox actors ask for sandbox_slot and no GPU, so they
#                      never take a slot of verl's GPU placement groups)
# Every node needs `pip install 'harbor-ray[verl]'` (or ship it with the runtime env below), and the task
# images' base image (harbor-ray/base:bookworm here) on its Docker daemon.
#
# Before GPU hours: scripts/train_smoke.sh runs the same trainer and config on CPU (tiny model, 2 steps).
#
# Environment knobs: MODEL_PATH, TASKS (a directory of Harbor tasks, inside this repository), RAY_ADDRESS,
# N_GPUS. Anything else: add a verl override at the end of OVERRIDES.
set -euo pipefail

MODEL_PATH=${MODEL_PATH:-Qwen/Qwen2.5-Coder-7B-Instruct}
TASKS=${TASKS:-examples/tasks}
RAY_ADDRESS=${RAY_ADDRESS:-http://127.0.0.1:8265}
N_GPUS=${N_GPUS:-8}

# verl overrides on top of conf/verl/harbor_ppo.yaml (verl's ppo_trainer + the harbor_sandbox loop's needs).
# tests/verl/test_config.py composes exactly these with verl's Hydra config and runs verl's validate_config.
OVERRIDES=(
  data.train_files=data/harbor/train.parquet
  data.val_files=data/harbor/val.parquet
  data.train_batch_size=16
  data.max_prompt_length=2048
  data.max_response_length=8192
  actor_rollout_ref.model.path=$MODEL_PATH
  actor_rollout_ref.model.use_remove_padding=true
  actor_rollout_ref.actor.optim.lr=1e-6
  actor_rollout_ref.actor.ppo_mini_batch_size=16
  actor_rollout_ref.actor.use_dynamic_bsz=true
  actor_rollout_ref.actor.ppo_max_token_len_per_gpu=12288
  actor_rollout_ref.actor.use_kl_loss=true
  actor_rollout_ref.actor.kl_loss_coef=0.001
  actor_rollout_ref.rollout.name=vllm
  actor_rollout_ref.rollout.mode=async
  actor_rollout_ref.rollout.n=8
  actor_rollout_ref.rollout.tensor_model_parallel_size=2
  actor_rollout_ref.rollout.gpu_memory_utilization=0.6
  actor_rollout_ref.rollout.calculate_log_probs=true
  actor_rollout_ref.rollout.multi_turn.format=hermes
  actor_rollout_ref.rollout.multi_turn.max_assistant_turns=30
  actor_rollout_ref.rollout.multi_turn.max_tool_response_length=4096
  actor_rollout_ref.rollout.agent.num_workers=8
  actor_rollout_ref.rollout.agent.default_agent_loop=harbor_sandbox
  actor_rollout_ref.rollout.agent.agent_loop_config_path=conf/verl/agent_loop.yaml
  algorithm.adv_estimator=harbor_grpo
  trainer.n_gpus_per_node=$N_GPUS
  trainer.nnodes=1
  trainer.total_epochs=20
  trainer.project_name=harbor_ray
  trainer.experiment_name=grpo-harbor-tasks
  trainer.logger=[console]
  trainer.val_before_train=true
  trainer.test_freq=5
  trainer.save_freq=-1
)

# The entrypoint runs in the job's working directory (this repository, uploaded by --working-dir) on the head
# node: it writes the datasets there, then starts verl's trainer with harbor_ray's config directory.
# HARBOR_RAY_TASK_ROOT makes every agent-loop worker read the tasks from its own copy of the working directory.
ray job submit --address="$RAY_ADDRESS" --working-dir=. \
  --runtime-env-json="{\"env_vars\": {\"HARBOR_RAY_TASK_ROOT\": \"$TASKS\", \"RAY_USAGE_STATS_ENABLED\": \"0\", \"VERL_USE_EXTERNAL_MODULES\": \"harbor_ray.verl.advantage,harbor_ray.verl.trainer\"}}" \
  -- bash -c "python -m harbor_ray verl-dataset tasks=$TASKS out=data/harbor/train.parquet \
    && python -m harbor_ray verl-dataset tasks=$TASKS out=data/harbor/val.parquet split=val \
    && python -m verl.trainer.main_ppo --config-path=\$PWD/conf/verl --config-name=harbor_ppo $(printf '%q ' "${OVERRIDES[@]}")"
