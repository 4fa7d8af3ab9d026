"""Streams of the API server's websocket (`pods/exec`), for the Kubernetes backend's exec and file transfer.

Commands run inside the shared wrapper (`harbor_ray.backends.shell`), which here also applies cwd, env and
user and runs the command under `timeout -s KILL`. The client side keeps a monotonic deadline and never
blocks past it. Files move as tar archives on stdin/stdout of the same exec channel.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import IO, Any

from harbor_ray.errors import TransferError

KILL_GRACE_S = 2.0  # after the command's own timeout, the client gives up and kills it from outside
_CHUNK = 256 * 1024


@dataclass
class StreamResult:
    return_code: int | None  # None: the stream ended without an exit status (pod gone, connection cut)
    stdout: bytes
    stderr: bytes
    dropped: int  # bytes beyond the output limit
    timed_out: bool
    failure: str = ""  # the exec's own failure message (e.g. the executable was not found)


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


# -- file transfer commands (the archives themselves: harbor_ray.backends.transfer) ---------------


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
