#!/usr/bin/env bash
# The main job on its embedded default: set up (venv, base images), start Ray in this process, run the
# example Harbor tasks with the oracle agent on local Docker, print the rewards table.
# Extra arguments are Hydra overrides (and -v for more output), e.g. scripts/demo.sh agent=nop n_concurrent=2
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_env.sh"
ensure_venv
cd "$ROOT"
python -m harbor_ray images >&2
# A person sees the progress bar, warnings and the table; -v (or -vv) anywhere in the arguments shows more.
quiet=-q
for arg in "$@"; do case "$arg" in -v | -vv | --verbose) quiet= ;; esac; done
exec python -m harbor_ray $quiet run tasks=examples/tasks agent=oracle jobs_dir="${HARBOR_RAY_JOBS:-$ROOT/jobs}" "$@"
