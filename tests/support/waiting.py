"""Waiting for something the system does on its own time (a reaper pass, a daemon's auto-remove)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import pytest


async def eventually(check: Callable[[], Any], what: str, seconds: float = 120.0) -> Any:
    """Poll an (async or plain) check until it returns something truthy; fail naming `what` after `seconds`."""
    deadline = time.monotonic() + seconds
    while True:
        value = check()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"never happened within {seconds:.0f}s: {what}")
        await asyncio.sleep(0.1)
