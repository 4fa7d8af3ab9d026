"""Commands in a container: the exec call, its output stream read against a deadline, the kill on timeout.

The command runs inside the shared wrapper (`harbor_ray.backends.shell`); cwd, env and user go through the
Docker API, which applies them better than a shell prelude could. On timeout the wrapper's kill command
ends the whole process tree, then ExecTimeout is raised.
"""

from __future__ import annotations

import logging
import struct
import time
from collections.abc import Iterator, Sequence
from typing import Any

from harbor_ray.backends import shell
from harbor_ray.backends.base import ExecResult, SandboxHandle
from harbor_ray.backends.docker.endpoint import DockerEndpoint, connection_error, first_line
from harbor_ray.errors import ExecTimeout, SandboxGone

__all__ = ["ExecFrames", "run"]

log = logging.getLogger(__name__)


class ExecFrames:
    """Iterate (stream, bytes) frames of a non-tty exec stream, raising TimeoutError at the deadline.

    It reads through http.client's buffered reader, not the socket beneath it: output that arrived in
    the same packet as the response headers is already in that buffer (the SDK's own raw-socket
    reader loses it, which a remote daemon makes common).
    """

    def __init__(self, exec_socket: Any, deadline: float | None) -> None:
        """`exec_socket` is what `exec_start(socket=True)` returns: the SDK keeps the HTTP response on it."""
        self.stream = exec_socket._response.raw._fp.fp  # urllib3 response -> http.client response -> BufferedReader
        self.deadline = deadline
        self.pending = bytearray()
        self.eof = False

    def _fill(self, need: int) -> bool:
        while len(self.pending) < need and not self.eof:
            timeout = None if self.deadline is None else self.deadline - time.monotonic()
            if timeout is not None and timeout <= 0:
                raise TimeoutError
            self.stream.raw._sock.settimeout(timeout)  # a socket timeout is a TimeoutError too
            chunk = self.stream.read1(65536)
            if not chunk:
                self.eof = True
            self.pending.extend(chunk)
        return len(self.pending) >= need

    def __iter__(self) -> Iterator[tuple[int, bytes]]:
        while self._fill(8):
            stream, size = self.pending[0], struct.unpack(">I", self.pending[4:8])[0]
            if not self._fill(8 + size):
                return
            data = bytes(self.pending[8 : 8 + size])
            del self.pending[: 8 + size]
            yield stream, data


def run(
    api: Any,
    endpoint: DockerEndpoint,
    handle: SandboxHandle,
    cmd: str | Sequence[str],
    *,
    cwd: str | None,
    env: dict[str, str] | None,
    timeout_s: float | None,
    user: str | None,
    limit: int,
) -> ExecResult:
    """Run one command in the container over `api` (a docker APIClient); each stream is capped at `limit`."""
    token = shell.new_token()
    exec_id = _create(api, endpoint, handle, shell.wrap_command(cmd, token=token), cwd=cwd, env=env, user=user)
    deadline = None if not timeout_s else time.monotonic() + timeout_s
    try:
        out, err, truncated = _read(api, exec_id, deadline, limit)
    except TimeoutError as e:
        _kill(api, handle, token)
        raise ExecTimeout(shell.timeout_message(cmd, timeout_s)) from e
    code = api.exec_inspect(exec_id).get("ExitCode")
    if code is None:
        code = -1
    return ExecResult(out, err, int(code), truncated)


def _create(
    api: Any,
    endpoint: DockerEndpoint,
    handle: SandboxHandle,
    argv: list[str],
    *,
    cwd: str | None,
    env: dict[str, str] | None,
    user: str | None,
) -> str:
    import docker.errors
    import requests

    try:
        return str(
            api.exec_create(
                handle.id, argv, stdout=True, stderr=True, workdir=cwd, environment=env or None, user=user or ""
            )["Id"]
        )
    except docker.errors.NotFound as e:
        msg = f"sandbox {handle.name}: the container is gone"
        raise SandboxGone(msg) from e
    except docker.errors.APIError as e:
        if e.status_code == 409:  # container not running
            msg = f"sandbox {handle.name}: the container is not running ({first_line(e)})"
            raise SandboxGone(msg) from e
        raise connection_error(endpoint, e) from e
    except requests.ConnectionError as e:
        raise connection_error(endpoint, e) from e


def _read(api: Any, exec_id: str, deadline: float | None, limit: int) -> tuple[str, str, bool]:
    sock = api.exec_start(exec_id, socket=True)
    # The SDK's own frame reader has no deadline and can lose early output; read the stream ourselves.
    reader = ExecFrames(sock, deadline)
    buffers = {1: bytearray(), 2: bytearray()}
    dropped = 0
    try:
        for stream, data in reader:
            buf = buffers.get(stream, buffers[1])
            room = max(0, limit - len(buf))
            buf.extend(data[:room])
            dropped += len(data) - min(room, len(data))
    finally:
        sock.close()
    texts = []
    for buf in buffers.values():
        text = buf.decode(errors="replace")
        if len(buf) >= limit and dropped:
            text += f"\n[harbor-ray: output capped at {limit} bytes, {dropped} bytes dropped]"
        texts.append(text)
    return texts[0], texts[1], dropped > 0


def _kill(api: Any, handle: SandboxHandle, token: str) -> None:
    try:
        exec_id = api.exec_create(handle.id, shell.kill_command(token), user="0")["Id"]
        api.exec_start(exec_id)
    except Exception as e:  # the sandbox may be gone already, which also ends the command
        log.debug("kill after timeout in %s: %s", handle.name, e)
