#!/usr/bin/env bash
# Refresh requirements.lock: resolve pyproject.toml's dependencies (every extra) into a scratch venv with the
# project's Python 3.12, then freeze it. Commit the new lock only after scripts/test.sh passes with it.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_env.sh"
py="$(find_python312)" || { echo "scripts/lock.sh: no Python 3.12 found; set HARBOR_RAY_PYTHON" >&2; exit 1; }
scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT
"$py" -m venv "$scratch/venv"
"$scratch/venv/bin/python" -m pip install -q -U pip
requirements "$py" "$LOCK_EXTRAS" > "$scratch/requirements.in"
"$scratch/venv/bin/python" -m pip install -q -r "$scratch/requirements.in"
{
  echo "# The exact versions CI tested: every package of harbor-ray's dependencies with all extras (test, k8s, verl)."
  echo "# Generated from pyproject.toml by scripts/lock.sh (a fresh venv resolves the lower bounds, then pip freeze);"
  echo "# scripts/test.sh and scripts/demo.sh install from this file. Refresh: scripts/lock.sh, then run scripts/test.sh."
  "$scratch/venv/bin/python" -m pip freeze --all | grep -v -E '^(pip|wheel)=='
} > "$ROOT/requirements.lock"
echo "wrote $ROOT/requirements.lock ($(grep -vc '^#' "$ROOT/requirements.lock") packages)"
