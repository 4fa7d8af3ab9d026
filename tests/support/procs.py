"""Helper processes for the harnesses: free ports, children that die with us, readiness, teardown.

A helper either prints `listening <port>` on stdout once it accepts connections (`Listener`), or is
polled for some sign of readiness while it is checked to be still alive (`wait_ready`).
"""

from __future__ import annotations

import contextlib
import ctypes
import shlex
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any


class HarnessError(RuntimeError):
    """A harness could not be made or started; the message says why (ending with the relevant log's tail)."""


def free_port() -> int:
    """A 127.0.0.1 port that was free a moment ago (and is closed now: nothing listens on it)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def die_with_parent() -> None:
    """preexec_fn: the child gets SIGTERM if our process dies without its teardown."""
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def stop(proc: subprocess.Popen[Any], timeout: float = 10) -> None:
    """Terminate, and kill what does not exit within timeout."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def tail(path: Path) -> str:
    return path.read_text(errors="replace")[-2500:] if path.exists() else "(no log)"


def wait_ready(what: str, cond: Callable[[], bool], timeout: float, proc: subprocess.Popen[Any], log: Path) -> None:
    """Poll cond (an exception counts as not yet) until true; fail early if proc exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            msg = f"{what} exited with {proc.returncode}:\n{tail(log)}"
            raise HarnessError(msg)
        with contextlib.suppress(Exception):
            if cond():
                return
        time.sleep(0.1)
    msg = f"{what} not ready after {timeout}s:\n{tail(log)}"
    raise HarnessError(msg)


class Listener:
    """A running helper that printed `listening <port>`; `url` is tcp://127.0.0.1:<port>."""

    def __init__(self, argv: Sequence[str]) -> None:
        self.proc = subprocess.Popen(
            list(argv), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, preexec_fn=die_with_parent
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().strip()  # "listening <port>", or "" if it died
        if not line.startswith("listening "):
            self.stop()
            msg = f"{shlex.join(argv)} did not start (exit {self.proc.returncode}): {line!r}"
            raise HarnessError(msg)
        self.port = int(line.split()[1])
        self.url = f"tcp://127.0.0.1:{self.port}"

    def stop(self) -> None:
        stop(self.proc)
