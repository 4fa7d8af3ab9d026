"""Image identity: a content hash of a task's environment directory, and build-once bookkeeping.

Two tasks whose environment directories hold the same bytes get the same tag and so share one
image; changing any file (or its mode) changes the tag and forces a rebuild.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from harbor_ray.errors import TaskError

ENV_REPO = "harbor-ray/env"
BASE_IMAGE = "harbor-ray/base:bookworm"
BUSYBOX_IMAGE = "harbor-ray/busybox:latest"
_IGNORED = {".git", "__pycache__", ".DS_Store"}


def context_hash(context: str | os.PathLike[str]) -> str:
    """sha256 over every file's relative path, mode and bytes, in a stable order."""
    root = Path(context)
    if not (root / "Dockerfile").is_file():
        msg = f"{root}/Dockerfile: missing; a task's environment/ directory needs a Dockerfile"
        raise TaskError(msg)
    digest = hashlib.sha256()
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in _IGNORED)
        for name in sorted(f for f in filenames if f not in _IGNORED):
            path = Path(dirpath) / name
            rel = path.relative_to(root).as_posix()
            digest.update(f"{rel}\0{path.lstat().st_mode & 0o777:o}\0".encode())
            if path.is_symlink():
                digest.update(os.readlink(path).encode())
            else:
                digest.update(path.read_bytes())
            digest.update(b"\0")
    return digest.hexdigest()


def env_image_tag(context: str | os.PathLike[str]) -> str:
    return f"{ENV_REPO}:{context_hash(context)[:20]}"


class KeyedLocks:
    """One lock per key, so concurrent builds of one image in this process happen once."""

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._locks: dict[str, threading.Lock] = {}

    @contextmanager
    def hold(self, key: str) -> Iterator[None]:
        with self._guard:
            lock = self._locks.setdefault(key, threading.Lock())
        with lock:
            yield
