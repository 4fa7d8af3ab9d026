"""Waiting for something the system does on its own time (a reaper pass, a daemon's auto-remove, a released
network holder's end: the daemon ends it `holders.LINGER_S` after its sandbox, docs/network.md)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import pytest

from harbor_ray import labels as L
from harbor_ray.backends.docker.holders import LINGER_S


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


def released_holders(client: Any, label: str) -> list[str]:
    """Names of run `label`'s holders renamed for their sandbox (`<sandbox>-net`), as the daemon lists them."""
    found = client.api.containers(all=True, filters={"label": [f"{L.RUN}={label}", f"{L.KIND}=holder"]})
    return [c["Names"][0].lstrip("/") for c in found if c["Names"][0].endswith("-net")]


def wait_released_holders(client: Any, label: str, timeout_s: float = LINGER_S + 10) -> list[str]:
    """Wait until the released holders of run `label` are gone; the names still there after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while (left := released_holders(client, label)) and time.monotonic() < deadline:
        time.sleep(0.2)
    return left
