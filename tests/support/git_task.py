"""A Harbor task whose repository (/app) sits one commit before its fix: `main`, a tag and the reflog hold the fix,
HEAD is the branch `work` at the buggy commit (for `sandbox.hide_git_history`). Its verifier gives 1 when
calc.txt is fixed and /app/.git is byte for byte the original (a digest of every file, taken when the image was
built). The repository is made by one script, in the image and on the host alike: its commits (fixed authors and
dates) have the same hashes in both, which the tests compare against."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

_DIGEST = (
    'find .git -type f | LC_ALL=C sort | while read -r f; do printf \'%s \' "$f"; sha256sum < "$f"; done'
    " | sha256sum | cut -d' ' -f1"
)

MAKE_REPO = """#!/bin/sh
set -e
export GIT_AUTHOR_NAME=dev GIT_AUTHOR_EMAIL=dev@example.com GIT_COMMITTER_NAME=dev
export GIT_COMMITTER_EMAIL=dev@example.com GIT_AUTHOR_DATE=2020-01-01T00:00:00Z
export GIT_COMMITTER_DATE=2020-01-01T00:00:00Z GIT_CONFIG_NOSYSTEM=1 HOME=/nonexistent
git init -q -b main
echo 'answer = 41' > calc.txt
git add calc.txt
git commit -q -m 'the bug'
echo 'answer = 42  # FIX' > calc.txt
git commit -q -am 'the fix'
git tag v-fixed
git checkout -q -b work HEAD~1
git gc -q
"""

TEST_SH = f"""#!/bin/bash
cd /app
# before any git command (git status may rewrite the index): a digest of every file under .git
{_DIGEST} > /logs/verifier/git_digest.txt
cp /opt/git_digest /logs/verifier/expected_digest.txt
git log --all --format=%H | sort > /logs/verifier/log.txt
git rev-parse HEAD > /logs/verifier/head.txt
# reward 1: the fix is in the tree and the history is the original one
if grep -q 'answer = 42' calc.txt && [ "$(cat /logs/verifier/git_digest.txt)" = "$(cat /opt/git_digest)" ]; then
  echo 1 > /logs/verifier/reward.txt
else
  echo 0 > /logs/verifier/reward.txt
fi
"""


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True, text=True).stdout


def make_task(root: Path, *, hide: bool | None = None, sleep_agent: bool = False) -> dict[str, object]:
    """The task dir, and the host's view of its repository (made by the same script): hashes of the fix commit
    and blob, HEAD, every commit of `git log --all`."""
    task = root / "git-task"
    env = task / "environment"
    env.mkdir(parents=True)
    (env / "make_repo.sh").write_text(MAKE_REPO)
    (env / "Dockerfile").write_text(
        "FROM harbor-ray/base:bookworm\n"
        "RUN apt-get update -qq && apt-get install -y -qq --no-install-recommends git >/dev/null"
        " && rm -rf /var/lib/apt/lists/*\n"
        "WORKDIR /app\nCOPY make_repo.sh /opt/make_repo.sh\n"
        f"RUN sh /opt/make_repo.sh && rm /opt/make_repo.sh && ({_DIGEST}) > /opt/git_digest\n"
    )
    repo = root / "host-repo"
    repo.mkdir()
    subprocess.run(["sh", "-c", MAKE_REPO], cwd=repo, check=True, env={"PATH": os.environ["PATH"]})
    (task / "tests").mkdir()
    (task / "tests" / "test.sh").write_text(TEST_SH)
    (task / "instruction.md").write_text("Make calc.txt give the right answer.\n")
    metadata = "" if hide is None else f"[metadata.harbor_ray]\nhide_git_history = {str(hide).lower()}\n\n"
    agent_timeout = 600 if sleep_agent else 120
    (task / "task.toml").write_text(
        f'schema_version = "1.4"\n\n{metadata}[verifier]\ntimeout_sec = 120.0\n\n[agent]\ntimeout_sec = '
        f'{agent_timeout}.0\n\n[environment]\nbuild_timeout_sec = 300.0\nnetwork_mode = "no-network"\n'
    )
    return {
        "task": task,
        "fix": _git(repo, "rev-parse", "main").strip(),
        "fix_blob": _git(repo, "rev-parse", "main:calc.txt").strip(),
        "head": _git(repo, "rev-parse", "HEAD").strip(),
        "log_all": sorted(_git(repo, "log", "--all", "--format=%H").split()),
    }
