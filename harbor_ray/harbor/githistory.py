"""The repository's git history out of the agent's reach (`sandbox.hide_git_history`, issue 27).

`hide` (before the agent runs) takes the sandbox repository's `.git` out to the host, as a tar in a private
temporary directory, and leaves in its place a new repository holding one parentless commit of the same tree
(same branch name, index reset to it, working tree untouched): `git log --all`, the reflog and the object store
show nothing of what came before or after. `restore` (before the verifier runs) puts the original `.git` back,
byte for byte as it was (owners and modes kept by tar), over whatever the agent made of the squashed one; the
agent's edits to the working tree stay and show as changes against the original HEAD. `HiddenHistory.discard`
deletes the host copy (always called when the trial ends, also when it is killed).

Why the host and not a root-only path in the sandbox: Harbor's agents run as root unless the task says otherwise,
so nothing inside the sandbox is out of their reach. The only copy left in the sandbox is the short-lived tar
written before the agent starts (removed before `hide` returns) and the one uploaded after it ends, both staged
in the repository's top directory (not /tmp, which gVisor covers with a tmpfs of its own that uploads miss).

The repository is the one containing `repo` (default: the task's workdir, else the image's WORKDIR); `.git` must
be a directory (a worktree's or submodule's `.git` file is refused). Its tar must fit within
`sandbox.download_limit_bytes` (one clear error otherwise, so a capped download can never corrupt it).
"""

from __future__ import annotations

import asyncio
import logging
import shlex
import shutil
import tempfile
import tomllib
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harbor_ray.errors import HarborRayError

log = logging.getLogger(__name__)

SQUASH_MESSAGE = "harbor-ray: the task's tree (its history is hidden during the agent phase)"
_GIT = "git -c safe.directory='*'"

# Prints the repository's top directory, then the tar's size; exit 3: not a repository, 4: .git not a directory.
# The tar is staged in the top directory itself (as `{name}`), never in /tmp: gVisor mounts its own tmpfs at /tmp,
# where a file put from outside (the restore's upload) is not seen inside.
_PACK = """set -e
cd {cwd}
top=$({git} rev-parse --show-toplevel 2>/dev/null) || {{ echo "no git repository at {cwd_raw}" >&2; exit 3; }}
[ -d "$top/.git" ] || {{ echo "$top/.git is not a directory (a worktree or submodule)" >&2; exit 4; }}
tar -C "$top" -cf "$top/{name}" .git || {{ rm -f "$top/{name}"; exit 5; }}
echo "$top"
wc -c < "$top/{name}"
"""

# One parentless commit of HEAD's tree in a fresh .git; the original .git (and the tar) removed.
_SQUASH = """set -e
rm -f {tar}
cd {top}
branch=$({git} symbolic-ref -q HEAD || echo refs/heads/main)
tree=$({git} rev-parse 'HEAD^{{tree}}')
export GIT_AUTHOR_NAME=harbor-ray GIT_AUTHOR_EMAIL=harbor-ray@localhost GIT_COMMITTER_NAME=harbor-ray
export GIT_COMMITTER_EMAIL=harbor-ray@localhost GIT_AUTHOR_DATE='2000-01-01T00:00:00Z'
export GIT_COMMITTER_DATE='2000-01-01T00:00:00Z'
commit=$({git} commit-tree "$tree" -m {message})
{git} update-ref refs/harbor-ray/squashed "$commit"
new={top}/.git.harbor-ray-new
rm -rf "$new"
{git} init -q "$new.tmp" && mv "$new.tmp/.git" "$new" && rm -rf "$new.tmp"
GIT_DIR="$new" {git} fetch -q --no-tags {top}/.git "refs/harbor-ray/squashed:$branch"
GIT_DIR="$new" {git} symbolic-ref HEAD "$branch"
rm -rf {top}/.git
mv "$new" {top}/.git
{git} reset -q
chown -R --reference={top} {top}/.git 2>/dev/null || true
"""

_UNPACK = """set -e
rm -rf {top}/.git
tar -C {top} -xpf {tar}
rm -f {tar}
"""


def wanted(task_dir: Path, default: bool) -> bool:
    """`[metadata.harbor_ray] hide_git_history` in the task's task.toml, else the config's default."""
    try:
        data = tomllib.loads((task_dir / "task.toml").read_text())
    except (OSError, tomllib.TOMLDecodeError):
        return default
    value = ((data.get("metadata") or {}).get("harbor_ray") or {}).get("hide_git_history")
    return default if value is None else bool(value)


@dataclass
class HiddenHistory:
    """A repository whose history is held on the host: its top directory in the sandbox and the host tar."""

    top: str
    archive: Path
    restored: bool = False

    def discard(self) -> None:
        """Delete the host copy (idempotent)."""
        shutil.rmtree(self.archive.parent, ignore_errors=True)


async def _run(sandbox: Any, script: str, what: str) -> str:
    result = await sandbox.exec(script, user="0")
    if result.return_code != 0:
        detail = (result.stderr or result.stdout or "").strip().splitlines()
        msg = f"hide_git_history: {what} failed (exit {result.return_code}): {detail[-1] if detail else ''}"
        raise HarborRayError(msg)
    return str(result.stdout)


async def hide(sandbox: Any, repo: str, *, limit_bytes: int) -> HiddenHistory:
    """Take the history of the repository containing `repo` out of the sandbox; see the module docstring."""
    name = _staged_name()
    q = shlex.quote
    try:
        out = await _run(
            sandbox, _PACK.format(cwd=q(repo), cwd_raw=repo.replace('"', ""), git=_GIT, name=name), "packing .git"
        )
    except BaseException:  # cancelled mid-pack, say: the staged tar, wherever the top directory is
        await _quietly(sandbox, f'cd {q(repo)} && rm -f "$({_GIT} rev-parse --show-toplevel)/{name}"')
        raise
    lines = out.strip().splitlines()
    top, size = lines[-2], int(lines[-1].strip())
    tar = f"{top}/{name}"
    try:
        if size > limit_bytes:
            msg = (
                f"hide_git_history: {top}/.git is {size} bytes as a tar, above sandbox.download_limit_bytes="
                f"{limit_bytes}; raise it to at least {size}"
            )
            raise HarborRayError(msg)
        host_dir = Path(tempfile.mkdtemp(prefix="harbor-ray-git-"))  # mode 700: this user's only
        hidden = HiddenHistory(top=top, archive=host_dir / "git.tar")
        try:
            await sandbox.download(tar, hidden.archive)
            await _run(
                sandbox,
                _SQUASH.format(top=q(top), tar=q(tar), git=_GIT, message=q(SQUASH_MESSAGE)),
                "squashing the history",
            )
        except BaseException:
            hidden.discard()
            raise
    except BaseException:
        await _quietly(sandbox, f"rm -f {shlex.quote(tar)}")
        raise
    log.debug("history of %s hidden (%d bytes kept on the host)", top, size)
    return hidden


async def restore(sandbox: Any, hidden: HiddenHistory) -> None:
    """Put the original `.git` back (once; later calls do nothing), then delete the host copy."""
    if hidden.restored:
        return
    tar = f"{hidden.top}/{_staged_name()}"  # not /tmp: see _PACK
    try:
        await sandbox.upload(hidden.archive, tar)
        await _run(sandbox, _UNPACK.format(top=shlex.quote(hidden.top), tar=shlex.quote(tar)), "restoring .git")
    except BaseException:
        await _quietly(sandbox, f"rm -f {shlex.quote(tar)}")
        raise
    hidden.restored = True
    hidden.discard()


def _staged_name() -> str:
    """The name of the tar staged in the repository's top directory while it crosses to or from the host."""
    return f".harbor-ray-git-{uuid.uuid4().hex}.tar"


async def _quietly(sandbox: Any, script: str) -> None:
    """Run a clean-up (a staged tar's removal): best effort, never masking the error being raised (a dead sandbox
    takes its files with it)."""
    try:
        await asyncio.shield(sandbox.exec(script, user="0"))
    except (HarborRayError, asyncio.CancelledError) as e:
        log.debug("clean-up %r failed: %s", script, e)
