# Sourced by the other scripts: find Python 3.12, create or reuse the project's virtual environment.
# The venv is installed from requirements.lock (the exact versions CI tested; scripts/lock.sh refreshes it
# from pyproject.toml) and lives outside the checkout, keyed by a hash of the lock and the interpreter, so a
# fresh clone reuses it and only a changed lock pays for a new one. The checkout itself goes on PYTHONPATH.
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="${HARBOR_RAY_CACHE:-$HOME/.cache/harbor_ray}"
LOCK="$ROOT/requirements.lock"
LOCK_EXTRAS="test,k8s,verl"  # what requirements.lock covers

find_python312() {
  local c
  for c in "${HARBOR_RAY_PYTHON:-}" python3.12 "$HOME/.pyenv/versions"/3.12*/bin/python3.12 \
           /usr/local/bin/python3.12 /usr/bin/python3.12; do
    [ -n "$c" ] || continue
    command -v "$c" >/dev/null 2>&1 || [ -x "$c" ] || continue
    if "$c" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 12))' 2>/dev/null; then
      command -v "$c" 2>/dev/null || echo "$c"; return 0
    fi
  done
  return 1
}

requirements() {  # the dependency lines of pyproject.toml for the given extras, one per line
  "$1" - "$ROOT/pyproject.toml" "$2" <<'PY'
import sys, tomllib
project = tomllib.load(open(sys.argv[1], "rb"))["project"]
reqs = list(project["dependencies"])
for extra in filter(None, sys.argv[2].split(",")):
    reqs += project["optional-dependencies"][extra]
print("\n".join(dict.fromkeys(reqs)))
PY
}

ensure_venv() {
  local py key venv
  py="$(find_python312)" || {
    echo "harbor_ray needs Python 3.12 (Harbor needs >=3.12, verl <3.13); none found. Install one (e.g. 'pyenv install 3.12') or set HARBOR_RAY_PYTHON=/path/to/python3.12." >&2
    return 1
  }
  [ -f "$LOCK" ] || { echo "requirements.lock is missing; run scripts/lock.sh" >&2; return 1; }
  key="$( (cat "$LOCK"; "$py" -V) | sha256sum | cut -c1-16)"
  venv="$CACHE/venv-$key"
  if [ ! -f "$venv/.ready" ]; then
    mkdir -p "$CACHE"
    exec 9>"$CACHE/venv-$key.lock"
    flock 9  # several scripts may start at once; one builds, the others wait for it
    if [ ! -f "$venv/.ready" ]; then
      echo "setting up $venv from requirements.lock ..." >&2
      rm -rf "$venv"
      "$py" -m venv "$venv"
      "$venv/bin/python" -m pip install -q -U pip >&2
      "$venv/bin/python" -m pip install -q --no-deps -r "$LOCK" >&2
      "$venv/bin/python" -m pip check >&2 || { echo "requirements.lock is inconsistent; refresh it with scripts/lock.sh" >&2; return 1; }
      touch "$venv/.ready"
    fi
    flock -u 9
  fi
  export HARBOR_RAY_VENV="$venv"
  export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
  export PATH="$venv/bin:$PATH"
  # Ray 2.60 turns token auth on by default; this project's local clusters are on loopback only.
  export RAY_AUTH_MODE="${RAY_AUTH_MODE:-disabled}"
  export RAY_USAGE_STATS_ENABLED=0
}
