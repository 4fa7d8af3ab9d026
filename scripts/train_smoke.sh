#!/usr/bin/env bash
# A CPU dry run of the whole RL pipeline: verl's own trainer (python -m verl.trainer.main_ppo with
# conf/verl/harbor_ppo.yaml + conf/verl/platform/cpu.yaml) runs GRPO steps through harbor_ray with a tiny
# warm-started model, both agent loops, each sample a real Harbor trial in a fresh sandbox on local Docker.
# Prints per step the rewards, termination reasons and time split, then sandboxes left and peak memory.
# Extra arguments: python -m harbor_ray train-smoke --help (e.g. steps=3 n=4, or any verl key=value).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_env.sh"
ensure_venv
cd "$ROOT"
python -m harbor_ray images >&2
export LITELLM_LOCAL_MODEL_COST_MAP="${LITELLM_LOCAL_MODEL_COST_MAP:-True}"  # offline: LiteLLM's bundled cost map
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"  # a tiny model on a few cores: one thread per process is fastest
exec python -m harbor_ray train-smoke "$@"
