"""Exec and file transfer into a pod over the API server's websocket (`pods/exec`), for the Kubernetes backend.

A command runs inside a small `/bin/sh` wrapper that applies cwd, env and user, tags the process tree
with a token in its environment (so a timeout can find and kill every process of it), and runs it
under `timeout -s KILL` when the image has `timeout`. The client side keeps a monotonic deadline and
never blocks past it. Files move as tar archives on stdin/stdout of the same exec channel.
"""

from __future__ import annotations

import json
import math
import re
import shlex
import shutil
import tarfile
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO, Any

from harbor_ray.backends.base import upload_paths
from harbor_ray.errors import TransferError

TOKEN_ENV = "HARBOR_RAY_EXEC"
KILL_GRACE_S = 2.0  # after the command's own timeout, the client gives up and kills it from outside
_CHUNK = 256 * 1024
_ENV_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_NUMERIC_USER = re.compile(r"^(\d+)(?::(\d+))?$")


@dataclass
class StreamResult:
    return_code: int | None  # None: the stream ended without an exit status (pod gone, connection cut)
    stdout: bytes
    stderr: bytes
    dropped: int  # bytes beyond the output limit
    timed_out: bool
    failure: str = ""  # the exec's own failure message (e.g. the executable was not found)


def wrap_command(
    cmd: str | Sequence[str],
    *,
    token: str,
    cwd: str | None = None,
    env: dict[str, str] | None = None,
    user: str | None = None,
    timeout_s: float | None = None,
) -> list[str]:
    """argv for the exec: `/bin/sh -c <prelude; exec "$@"> sh <command...>`.

    A string command runs through `bash -c` (`sh -c` when the image has no bash).
    """
    lines = [f"{TOKEN_ENV}={token}; export {TOKEN_ENV}"]
    if isinstance(cmd, str):
        inner = ["bash", "-c", cmd]
        lines.append('command -v bash >/dev/null 2>&1 || { shift; set -- /bin/sh "$@"; }')
    else:
        inner = list(cmd)
        if not inner:
            msg = "exec: empty command"
            raise ValueError(msg)
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
    return ["/bin/sh", "-c", "\n".join(lines), "sh", *inner]


def _switch_user(user: str) -> str:
    need = (
        "command -v setpriv >/dev/null 2>&1 || "
        '{ echo "harbor-ray: running as another user needs setpriv (util-linux) in the image" >&2; exit 126; }'
    )
    numeric = _NUMERIC_USER.match(user)
    if numeric:
        uid, gid = numeric.group(1), numeric.group(2) or numeric.group(1)
        return f'{need}; set -- setpriv --reuid={uid} --regid={gid} --clear-groups -- "$@"'
    q = shlex.quote(user)
    return (
        f"u_=$(id -u {q} 2>/dev/null) && g_=$(id -g {q} 2>/dev/null) || "
        f'{{ echo "harbor-ray: no user {user} in the sandbox" >&2; exit 126; }}\n'
        f'{need}; set -- setpriv --reuid="$u_" --regid="$g_" --init-groups -- "$@"'
    )


def kill_command(token: str) -> list[str]:
    """argv that SIGKILLs every process whose environment carries the exec's token."""
    script = (
        f'for f in $(grep -l "{TOKEN_ENV}={token}" /proc/[0-9]*/environ 2>/dev/null); do '
        'p=${f#/proc/}; kill -KILL "${p%/environ}" 2>/dev/null; done; true'
    )
    return ["/bin/sh", "-c", script]


def connect_within[T](connect: Callable[[], T], timeout_s: float, close: Callable[[T], None]) -> T:
    """Run a blocking connect (the websocket handshake has no timeout of its own) for at most timeout_s.

    On timeout raise TimeoutError; if the connection is made later anyway, it is closed at once.
    """
    done = threading.Event()
    box: dict[str, Any] = {}
    abandoned = threading.Event()

    def run() -> None:
        try:
            box["value"] = connect()
        except BaseException as e:  # handed to the caller below
            box["error"] = e
        done.set()
        if abandoned.is_set() and "value" in box:
            close(box["value"])

    threading.Thread(target=run, name="k8s-exec-connect", daemon=True).start()
    if not done.wait(timeout_s):
        abandoned.set()
        if done.is_set() and "value" in box:  # it finished just now: do not leak it
            close(box["value"])
        msg = f"no exec connection within {timeout_s:g}s"
        raise TimeoutError(msg)
    if "error" in box:
        raise box["error"]
    return box["value"]  # type: ignore[no-any-return]


def pump(
    ws: Any,
    *,
    deadline: float | None,
    limit: int,
    stdin: IO[bytes] | None = None,
    stdout_sink: IO[bytes] | None = None,
) -> StreamResult:
    """Drive an open exec websocket (binary mode) to its end or to the deadline.

    stdin is streamed in chunks and then closed (v5 protocol); stdout goes to `stdout_sink` when given,
    otherwise both streams are kept up to `limit` bytes each.
    """
    from websocket import WebSocketException

    out, err = bytearray(), bytearray()
    dropped = 0

    def remaining() -> float | None:
        return None if deadline is None else deadline - time.monotonic()

    def arm() -> bool:  # the socket never blocks past the deadline
        left = remaining()
        if left is not None and left <= 0:
            return False
        ws.sock.settimeout(None if left is None else max(0.05, left))
        return True

    def drain() -> None:
        nonlocal dropped
        for channel, buf in ((1, out), (2, err)):
            data = ws.read_channel(channel)
            if not data:
                continue
            if channel == 1 and stdout_sink is not None:
                stdout_sink.write(data)
                continue
            room = max(0, limit - len(buf))
            buf.extend(data[:room])
            dropped += max(0, len(data) - room)

    try:
        if stdin is not None:
            while chunk := stdin.read(_CHUNK):
                if not arm():
                    return StreamResult(None, bytes(out), bytes(err), dropped, True)
                ws.write_stdin(chunk)
                ws.update(timeout=0)
                drain()
            ws.close_channel(0)
        while ws.is_open():
            if not arm():
                return StreamResult(None, bytes(out), bytes(err), dropped, True)
            left = remaining()
            ws.update(timeout=1.0 if left is None else min(1.0, max(0.0, left)))
            drain()
    except (WebSocketException, OSError) as e:
        if isinstance(e, TimeoutError) or type(e).__name__ == "WebSocketTimeoutException":
            return StreamResult(None, bytes(out), bytes(err), dropped, True)
        return StreamResult(None, bytes(out), bytes(err), dropped, False, f"stream broken: {e}")
    drain()
    code, failure = _exit_status(ws.read_channel(3))
    return StreamResult(code, bytes(out), bytes(err), dropped, False, failure)


def why_failed(r: StreamResult) -> str:
    """One line for a failed transfer: timeout, the command's stderr, or the exec's own failure."""
    if r.timed_out:
        return "timed out"
    why = r.stderr.decode(errors="replace").strip() or r.failure
    return why.splitlines()[0] if why else f"exit code {r.return_code}"


def _exit_status(raw: bytes | str) -> tuple[int | None, str]:
    if not raw:
        return None, "the exec stream closed without an exit status"
    try:
        status = json.loads(raw)
    except ValueError:
        return None, str(raw[:200])
    if status.get("status") == "Success":
        return 0, ""
    for cause in (status.get("details") or {}).get("causes") or []:
        if cause.get("reason") == "ExitCode":
            return int(cause.get("message", "-1")), ""
    return None, str(status.get("message") or status)[:300]


# -- tar archives ---------------------------------------------------------------------------------


def _as_root(info: tarfile.TarInfo) -> tarfile.TarInfo:
    info.uid = info.gid = 0
    info.uname = info.gname = "root"
    return info


def pack(local_path: str, remote_path: str) -> tuple[IO[bytes], int]:
    """A tar of local_path whose member is remote_path without its leading '/', for `tar -x -C /`."""
    src, target = upload_paths(local_path, remote_path)
    buf = tempfile.SpooledTemporaryFile(max_size=64 << 20)  # noqa: SIM115 - returned to the caller
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        tar.add(str(src), arcname=str(target).lstrip("/") or ".", recursive=True, filter=_as_root)
    size = buf.tell()
    buf.seek(0)
    return buf, size


def upload_command(size: int) -> list[str]:
    # `head -c` reads exactly the archive, so the command ends even where stdin cannot be closed (v4).
    return ["/bin/sh", "-c", 'head -c "$1" | tar -x -f - -C /', "sh", str(size)]


def download_command(remote_path: str) -> tuple[list[str], str]:
    """argv that writes a tar of remote_path to stdout, and the member name it will have."""
    path = PurePosixPath(remote_path)
    if not path.is_absolute():
        msg = f"download: remote path {remote_path!r} must be absolute"
        raise TransferError(msg)
    parent, name = str(path.parent), path.name or "."
    script = (
        '[ -e "$1" ] || [ -L "$1" ] || { echo "$1: no such file or directory" >&2; exit 2; }\n'
        'cd "$2" && exec tar -c -f - "$3"'
    )
    return ["/bin/sh", "-c", script, "sh", str(path), parent, name], name


def unpack(archive: Path, member: str, dest: Path) -> None:
    """Extract the downloaded tar's one member to dest (the full target path), replacing a file there."""
    tmp = archive.parent / "x"
    with tarfile.open(archive) as tar:
        tar.extractall(tmp, filter="tar")
    extracted = tmp / member
    dest.parent.mkdir(parents=True, exist_ok=True)
    if extracted.is_dir() and not extracted.is_symlink():
        shutil.copytree(extracted, dest, symlinks=True, dirs_exist_ok=True)
    else:
        if dest.is_dir() and not dest.is_symlink():
            shutil.rmtree(dest)
        shutil.copy2(extracted, dest, follow_symlinks=False)
