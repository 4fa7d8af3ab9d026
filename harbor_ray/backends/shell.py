"""The in-sandbox command wrapper both backends run: a string command under bash (sh where the image has
no bash), a token that marks the command's process tree, and the one command that kills that tree.

The wrapper is a `/bin/sh` prelude ending in `exec "$@"`, so the command keeps the prelude's pid. It
records that pid under `PID_DIR` (Docker makes every exec'd process a group leader: killing the group
gets every child) and exports `TOKEN_ENV`, which every descendant inherits (so a process that left the
group, or a runtime whose exec is no group leader, is still found through /proc). Where the backend's
API cannot apply cwd, env or user (Kubernetes `pods/exec`), the prelude does that too.
"""

from __future__ import annotations

import math
import re
import secrets
import shlex
from collections.abc import Sequence

__all__ = ["PID_DIR", "TOKEN_ENV", "command_argv", "kill_command", "new_token", "timeout_message", "wrap_command"]

TOKEN_ENV = "HARBOR_RAY_EXEC"
PID_DIR = "/tmp/.harbor-ray"
# String commands run under bash like Harbor's own environments; images without bash fall back to sh.
_BASH_OR_SH = 'if command -v bash >/dev/null 2>&1; then exec bash -c "$1"; else exec sh -c "$1"; fi'
_ENV_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_NUMERIC_USER = re.compile(r"^(\d+)(?::(\d+))?$")


def new_token() -> str:
    """A fresh token for one command."""
    return secrets.token_hex(8)


def command_argv(cmd: str | Sequence[str]) -> list[str]:
    """argv of the command itself: a string goes through `bash -c` (`sh -c` without bash), a list as is."""
    if isinstance(cmd, str):
        return ["/bin/sh", "-c", _BASH_OR_SH, "sh", cmd]
    if not cmd:
        msg = "exec: empty command"
        raise ValueError(msg)
    return list(cmd)


def wrap_command(
    cmd: str | Sequence[str],
    *,
    token: str,
    cwd: str | None = None,
    env: dict[str, str] | None = None,
    user: str | None = None,
    timeout_s: float | None = None,
    path_tail: str | None = None,
) -> list[str]:
    """argv for the exec: `/bin/sh -c <prelude; exec "$@"> sh <command...>`.

    The prelude marks the process tree with `token`; cwd, env and user are applied by it only when given
    (a backend whose API applies them passes None), `path_tail` is appended to the image's PATH (an agent
    runtime's launchers; an env PATH still wins), and `timeout_s` runs the command under `timeout -s KILL`
    when the image has `timeout`. ValueError for an env name a shell cannot export.
    """
    lines = [
        f"mkdir -p {PID_DIR} 2>/dev/null; echo $$ > {PID_DIR}/{token} 2>/dev/null",
        f"{TOKEN_ENV}={token}; export {TOKEN_ENV}",
    ]
    if path_tail:
        lines.append(f'PATH="${{PATH:+$PATH:}}"{shlex.quote(path_tail)}; export PATH')
    for key, value in (env or {}).items():
        if not _ENV_KEY.match(key):
            msg = f"exec: invalid environment variable name {key!r}"
            raise ValueError(msg)
        lines.append(f"export {key}={shlex.quote(str(value))}")
    if cwd:
        lines.append(f"cd {shlex.quote(cwd)} || exit 126")
    if user:
        lines.append(_switch_user(user))
    if timeout_s:
        secs = max(1, math.ceil(timeout_s))
        lines.append(f'if command -v timeout >/dev/null 2>&1; then set -- timeout -s KILL {secs} "$@"; fi')
    lines.append('exec "$@"')
    return ["/bin/sh", "-c", "\n".join(lines), "sh", *command_argv(cmd)]


def _switch_user(user: str) -> str:
    need = (
        "command -v setpriv >/dev/null 2>&1 || "
        '{ echo "harbor-ray: running as another user needs setpriv (util-linux) in the image" >&2; exit 126; }'
    )
    # Already that uid and gid (Harbor asks root for its verifier; most images run as root): nothing to switch,
    # so images without a setpriv that can (busybox's cannot) still serve it.
    same = '[ "$(id -u)" = "$u_" ] && [ "$(id -g)" = "$g_" ] || '
    numeric = _NUMERIC_USER.match(user)
    if numeric:
        uid, gid = numeric.group(1), numeric.group(2) or numeric.group(1)
        switch = f'{need}; set -- setpriv --reuid="$u_" --regid="$g_" --clear-groups -- "$@"'
        return f"u_={uid}; g_={gid}; {same}{{ {switch}; }}"
    q = shlex.quote(user)
    return (
        f"u_=$(id -u {q} 2>/dev/null) && g_=$(id -g {q} 2>/dev/null) || "
        f'{{ echo "harbor-ray: no user {user} in the sandbox" >&2; exit 126; }}\n'
        f'{same}{{ {need}; set -- setpriv --reuid="$u_" --regid="$g_" --init-groups -- "$@"; }}'
    )


def kill_command(token: str) -> list[str]:
    """argv that SIGKILLs the command's process group (by its pid file) and every process whose
    environment carries its token; it always exits 0."""
    pidfile = f"{PID_DIR}/{token}"
    script = (
        f'p=$(cat {pidfile} 2>/dev/null) && [ -n "$p" ] && {{ kill -9 -"$p"; kill -9 "$p"; }} 2>/dev/null; '
        f"rm -f {pidfile}\n"
        f'for f in $(grep -l "{TOKEN_ENV}={token}" /proc/[0-9]*/environ 2>/dev/null); do '
        'p=${f#/proc/}; kill -KILL "${p%/environ}" 2>/dev/null; done; true'
    )
    return ["/bin/sh", "-c", script]


def timeout_message(cmd: str | Sequence[str], timeout_s: float | None) -> str:
    """The one line of an ExecTimeout."""
    shown = cmd if isinstance(cmd, str) else " ".join(cmd)
    return f"command timed out after {timeout_s or 0:g}s and was killed: {shown[:200]}"
