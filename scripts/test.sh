#!/usr/bin/env bash
# The test command: set up (Python 3.12 venv from requirements.lock, base images, k8s test harness), lint,
# check the import layers, run every tier.
# Extra arguments go to pytest, e.g. scripts/test.sh -m docker -x
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_env.sh"
ensure_venv
cd "$ROOT"
python -m harbor_ray images
bash scripts/k8s_harness.sh prepare >/dev/null
bash scripts/ensure_runsc.sh  # gVisor, for the sandbox.runtime tests (tests/hosts)
python -m ruff check harbor_ray tests bench
python -m ruff format --check harbor_ray tests bench >/dev/null || { python -m ruff format --diff harbor_ray tests bench | head -40; exit 1; }
python -m mypy harbor_ray
lint-imports --no-cache >/dev/null || lint-imports --no-cache  # the layers of pyproject.toml [tool.importlinter]
# a test process killed by a signal prints each thread's Python stack (a CI run once ended in SIGSEGV after all passed)
export PYTHONFAULTHANDLER=1
exec python -m pytest "$@"
