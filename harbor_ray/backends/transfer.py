"""Files in and out of sandboxes as tar archives: one way to pack, unpack and copy into place.

Every path here is a full target path: uploading `a.txt` to `/work/b.txt` creates `/work/b.txt`. Nothing is
lost on the way: symlinks stay links, modes are kept, a directory merges into an existing directory, and
a file replaces a directory (or a file) at its target. `pack_bounded` caps what a download brings back:
files past the budget keep their tail, after a one-line marker.
"""

from __future__ import annotations

import io
import os
import shutil
import tarfile
import tempfile
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import IO, Any

from harbor_ray.errors import TransferError

__all__ = [
    "copy_into",
    "pack",
    "pack_bounded",
    "pack_for_target",
    "pack_into",
    "truncation_marker",
    "unpack_member",
    "unpack_then",
    "upload_paths",
]

_SPOOL_BYTES = 64 << 20  # archives up to this size stay in memory


def upload_paths(local_path: str, remote_path: str) -> tuple[Path, PurePosixPath]:
    """Check an upload's source exists and its target is absolute; TransferError otherwise."""
    src = Path(local_path)
    if not src.exists() and not src.is_symlink():
        msg = f"upload: {local_path} does not exist"
        raise TransferError(msg)
    target = PurePosixPath(remote_path)
    if not target.is_absolute():
        msg = f"upload: remote path {remote_path!r} must be absolute"
        raise TransferError(msg)
    return src, target


def _as_root(info: tarfile.TarInfo) -> tarfile.TarInfo:
    info.uid = info.gid = 0
    info.uname = info.gname = "root"
    return info


def pack(path: Path) -> bytes:
    """A tar of one file or directory, the entry named after the path's last component."""
    buf = io.BytesIO()
    pack_into(path, buf)
    return buf.getvalue()


def pack_into(path: Path, into: IO[bytes]) -> None:
    """`pack`, written to an open file as it is read."""
    with tarfile.open(fileobj=into, mode="w") as tar:
        tar.add(str(path), arcname=path.name or "root", recursive=True)


def truncation_marker(limit: int, dropped: int) -> bytes:
    """The line that starts a file cut by `pack_bounded`."""
    return f"[harbor-ray: download capped at {limit} bytes; the first {dropped} bytes of this file dropped]\n".encode()


class _Prefixed(io.RawIOBase):
    """A marker, then the rest of an open file: what tarfile reads as a cut file's content."""

    def __init__(self, head: bytes, rest: IO[bytes]) -> None:
        self._head, self._rest = head, rest

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer)
        if self._head:
            out, self._head = self._head[: len(view)], self._head[len(view) :]
        else:
            out = self._rest.read(len(view))
        view[: len(out)] = out
        return len(out)


def pack_bounded(path: Path, limit: int, into: Path) -> int:
    """Write a tar of `path` (entry named like `pack`'s) to the file `into`, with at most `limit` bytes of file
    content: files are taken in name order, and each one past the budget keeps only its last bytes that fit,
    after a `truncation_marker` line. Returns the bytes dropped. The archive is written as it is read, so
    neither the files nor the archive are ever held in memory.
    """
    budget, dropped = limit, 0
    with tarfile.open(into, mode="w") as tar:

        def add(p: Path, arcname: str) -> None:
            nonlocal budget, dropped
            info = tar.gettarinfo(str(p), arcname=arcname)
            if not info.isreg():
                tar.addfile(info)
                if info.isdir():
                    for child in sorted(os.listdir(p)):
                        add(p / child, f"{arcname}/{child}")
                return
            keep = min(info.size, max(budget, 0))
            budget -= keep
            with p.open("rb") as f:
                if keep == info.size:
                    tar.addfile(info, f)
                    return
                cut = info.size - keep
                dropped += cut
                marker = truncation_marker(limit, cut)
                f.seek(cut)
                info.size = keep + len(marker)
                tar.addfile(info, io.BufferedReader(_Prefixed(marker, f)))

        add(path, path.name or "root")
    return dropped


def pack_for_target(local_path: str, remote_path: str, *, image_tar: bool = False) -> tuple[IO[bytes], int]:
    """A tar of local_path whose member is remote_path without its leading '/', to extract at '/'.

    Extracting at '/' then creates the target's missing parents. With `image_tar` the sandbox image's own
    `tar` (busybox or GNU, as root) extracts it: GNU headers, which both read, and members owned by root
    rather than by this machine's uid. Returns the archive (rewound; the caller closes it) and its size.
    """
    src, target = upload_paths(local_path, remote_path)
    buf = tempfile.SpooledTemporaryFile(max_size=_SPOOL_BYTES)  # noqa: SIM115 - returned to the caller
    fmt, owner = (tarfile.GNU_FORMAT, _as_root) if image_tar else (tarfile.DEFAULT_FORMAT, None)
    root = str(target).lstrip("/") or "."
    # A directory goes in by its contents, like Harbor's `docker cp dir/. main:target`: an existing target keeps
    # its owner and mode (a non-root image's WORKDIR stays its user's); a missing one is made by the extraction.
    children = sorted(src.iterdir()) if src.is_dir() and root != "." else []
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tar:
        for child in children:
            tar.add(str(child), arcname=f"{root}/{child.name}", recursive=True, filter=owner)
        if not children:
            tar.add(str(src), arcname=root, recursive=True, filter=owner)
    size = buf.tell()
    buf.seek(0)
    return buf, size  # type: ignore[return-value]


def _extract(archive: Path | bytes, into: str) -> list[str]:
    with tarfile.open(archive) if isinstance(archive, Path) else tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        names = tar.getnames()
        tar.extractall(into, filter="tar")
    return names


def unpack_member(archive: Path, member: str, dest: Path) -> None:
    """Extract a downloaded tar and copy its entry `member` to dest (the full target path)."""
    with tempfile.TemporaryDirectory(prefix="harbor-ray-dl-") as tmp:
        _extract(archive, tmp)
        copy_into(Path(tmp) / member, dest)


def unpack_then(data: bytes | Path, use: Callable[[str], None]) -> None:
    """Extract a tar made by `pack` (bytes, or a file) into a temporary directory; call `use` with its entry's path."""
    with tempfile.TemporaryDirectory(prefix="harbor-ray-actor-") as tmp:
        names = _extract(data, tmp)
        if not names:
            msg = "upload: empty archive"
            raise TransferError(msg)
        use(str(Path(tmp) / names[0].split("/")[0]))


def copy_into(src: Path, dest: Path) -> None:
    """Copy src to dest, the full target path: a directory merges into a directory there (or a link to one),
    anything else replaces what is there; links inside src are copied as links."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    if src.is_dir() and not src.is_symlink():
        if (dest.is_symlink() or dest.exists()) and not dest.is_dir():
            dest.unlink()
        shutil.copytree(src, dest, symlinks=True, dirs_exist_ok=True)
        return
    if dest.is_dir() and not dest.is_symlink():
        shutil.rmtree(dest)
    shutil.copy2(src, dest, follow_symlinks=False)
