"""Image identity: a content hash of a task's environment directory, and build-once bookkeeping.

Two tasks whose environment directories hold the same bytes get the same tag and so share one
image; changing any file (or its mode) changes the tag and forces a rebuild. The hash covers exactly what
`docker build` sends: every path the directory's `.dockerignore` does not exclude (`.git` included, so a
repository's new commit is a new image).
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


def context_hash(context: str | os.PathLike[str]) -> str:
    """sha256 over every path the build context sends (`context_paths`): relative path, mode, bytes (a link's
    target), in a stable order."""
    root = Path(context)
    digest = hashlib.sha256()
    for rel in context_paths(root):
        path = root / rel
        digest.update(f"{rel}\0{path.lstat().st_mode & 0o777:o}\0".encode())
        if path.is_symlink():
            digest.update(os.readlink(path).encode())
        elif path.is_file():
            digest.update(path.read_bytes())
        else:
            digest.update(b"/")  # a directory: its mode counts (an empty one is in the image too)
        digest.update(b"\0")
    return digest.hexdigest()


def context_paths(root: Path) -> list[str]:
    """What the Docker SDK puts in the build context of `root`: every path its `.dockerignore` (read as the SDK
    reads it) does not exclude, the Dockerfile always; TaskError when there is no Dockerfile."""
    from docker.utils.build import exclude_paths

    if not (root / "Dockerfile").is_file():
        msg = f"{root}/Dockerfile: missing; a task's environment/ directory needs a Dockerfile"
        raise TaskError(msg)
    ignore = root / ".dockerignore"
    lines = [line.strip() for line in ignore.read_text().splitlines()] if ignore.is_file() else []
    patterns = [line for line in lines if line and not line.startswith("#")]
    return sorted(p.replace(os.sep, "/") for p in exclude_paths(str(root), patterns))


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
