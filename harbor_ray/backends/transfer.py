"""Files in and out of sandboxes as tar archives: one way to pack, unpack and copy into place.

Every path here is a full target path: uploading `a.txt` to `/work/b.txt` creates `/work/b.txt`. Nothing is
lost on the way: symlinks stay links, modes are kept, a directory merges into an existing directory, and
a file replaces a directory (or a file) at its target. `cap_archive` caps what a download brings back:
files past the budget keep their tail, after a one-line marker.

An upload is one archive end to end (`pack_for_target` by the caller, extracted at '/' by the daemon); a
download is the daemon's archive, capped only when over the limit, extracted once by the caller (`extract_member`).
"""

from __future__ import annotations

import copy
import io
import os
import shutil
import tarfile
import tempfile
from pathlib import Path, PurePosixPath
from typing import IO, Any

from harbor_ray.errors import TransferError

__all__ = [
    "archive_content_bytes",
    "cap_archive",
    "extract_member",
    "move_into",
    "pack_for_target",
    "truncation_marker",
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


def truncation_marker(limit: int, dropped: int) -> bytes:
    """The line that starts a file cut by `cap_archive`."""
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


def pack_for_target(
    local_path: str, remote_path: str, *, image_tar: bool = False, into: IO[bytes] | None = None
) -> tuple[IO[bytes], int]:
    """A tar of local_path whose member is remote_path without its leading '/', to extract at '/'.

    Extracting at '/' then creates the target's missing parents. With `image_tar` the sandbox image's own
    `tar` (busybox or GNU, as root) extracts it: GNU headers, which both read, and members owned by root
    rather than by this machine's uid. Written to `into` (an open file at its start) or to a spooled
    temporary file; returns the archive (rewound; the caller closes it) and its size.
    """
    src, target = upload_paths(local_path, remote_path)
    buf = into if into is not None else tempfile.SpooledTemporaryFile(max_size=_SPOOL_BYTES)  # noqa: SIM115
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


def _content_bytes(members: list[tarfile.TarInfo]) -> int:
    return sum(m.size for m in members if m.isreg())


def _path_order(member: tarfile.TarInfo) -> list[str]:
    # A depth-first walk taking each directory's entries by name: the same files keep content whatever order
    # the daemon wrote them in.
    return member.name.rstrip("/").split("/")


def cap_archive(archive: IO[bytes], limit: int, into: IO[bytes]) -> int:
    """Copy the tar `archive` (a seekable file) to `into` capped: at most `limit` bytes of
    file content, files taken in name order, each past the budget keeping only its last bytes after a
    `truncation_marker` line. Returns the bytes dropped. Only headers are held; content is copied in blocks,
    and a cut file's dropped head is seeked past, never read.
    """
    with tarfile.open(fileobj=archive, mode="r:") as src:
        members = src.getmembers()
        keep: dict[int, int] = {}
        budget = limit
        for m in sorted((m for m in members if m.isreg()), key=_path_order):
            keep[id(m)] = min(m.size, max(budget, 0))
            budget -= keep[id(m)]
        dropped = 0
        with tarfile.open(fileobj=into, mode="w", format=src.format) as out:
            for m in members:
                if not m.isreg():
                    out.addfile(m)
                    continue
                f = src.extractfile(m)
                assert f is not None  # a regular member always has a file object
                kept = keep[id(m)]
                if kept == m.size:
                    out.addfile(m, f)
                    continue
                cut = m.size - kept
                dropped += cut
                marker = truncation_marker(limit, cut)
                f.seek(cut)
                info = copy.copy(m)
                info.size = kept + len(marker)
                out.addfile(info, io.BufferedReader(_Prefixed(marker, f)))
    return dropped


def archive_content_bytes(archive: IO[bytes]) -> int:
    """The file content a tar holds (headers only are read); the file is rewound after."""
    with tarfile.open(fileobj=archive, mode="r:") as tar:
        total = _content_bytes(tar.getmembers())
    archive.seek(0)
    return total


def extract_member(archive: Path | IO[bytes], member: str, dest: Path) -> None:
    """Extract the entry `member` of a downloaded tar (a path, or a file at its start) to dest (the full
    target path), a directory merging into a directory there, anything else replacing what is there.

    The archive is extracted once, into a temporary directory beside dest (so on its filesystem), and the
    entry is then moved into place: renamed, not copied again.
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".harbor-ray-dl-", dir=dest.parent) as tmp:
        root = Path(tmp) / "x"  # the entry may be "." (a download of '/'): never the temporary directory itself
        opened = tarfile.open(archive) if isinstance(archive, Path) else tarfile.open(fileobj=archive, mode="r:")
        with opened as tar:
            top = member.rstrip("/") or "."
            wanted = [m for m in tar if top == "." or m.name == top or m.name.startswith(f"{top}/")]
            if not wanted:
                msg = f"download: {member} is not in the archive"
                raise TransferError(msg)
            tar.extractall(root, members=wanted, filter="tar")
        move_into(root / top, dest)
    os.utime(dest, follow_symlinks=False)  # arrived now, whatever the sandbox's clock said


def move_into(src: Path, dest: Path) -> None:
    """Put src at dest by renames (src and dest on one filesystem): a directory merges into a directory at dest,
    anything else replaces what is there."""
    src_dir = src.is_dir() and not src.is_symlink()
    dest_dir = dest.is_dir() and not dest.is_symlink()
    if src_dir and dest.is_dir():  # a link to a directory is merged into
        for child in sorted(os.listdir(src)):
            move_into(src / child, dest / child)
        return
    if dest_dir:
        shutil.rmtree(dest)
    elif dest.is_symlink() or dest.exists():
        dest.unlink()
    os.replace(src, dest)
