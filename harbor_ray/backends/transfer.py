"""Files in and out of sandboxes as tar archives: one way to pack, unpack and copy into place.

Every path here is a full target path: uploading `a.txt` to `/work/b.txt` creates `/work/b.txt`. Nothing is
lost on the way: symlinks stay links, modes are kept, a directory merges into an existing directory, and
a file replaces a directory (or a file) at its target.
"""

from __future__ import annotations

import io
import shutil
import tarfile
import tempfile
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import IO

from harbor_ray.errors import TransferError

__all__ = ["copy_into", "pack", "pack_for_target", "unpack_member", "unpack_then", "upload_paths"]

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
    with tarfile.open(fileobj=buf, mode="w") as tar:
        tar.add(str(path), arcname=path.name or "root", recursive=True)
    return buf.getvalue()


def pack_for_target(local_path: str, remote_path: str, *, image_tar: bool = False) -> tuple[IO[bytes], int]:
    """A tar of local_path whose member is remote_path without its leading '/', to extract at '/'.

    Extracting at '/' then creates the target's missing parents. With `image_tar` the sandbox image's own
    `tar` (busybox or GNU, as root) extracts it: GNU headers, which both read, and members owned by root
    rather than by this machine's uid. Returns the archive (rewound; the caller closes it) and its size.
    """
    src, target = upload_paths(local_path, remote_path)
    buf = tempfile.SpooledTemporaryFile(max_size=_SPOOL_BYTES)  # noqa: SIM115 - returned to the caller
    fmt, owner = (tarfile.GNU_FORMAT, _as_root) if image_tar else (tarfile.DEFAULT_FORMAT, None)
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tar:
        tar.add(str(src), arcname=str(target).lstrip("/") or ".", recursive=True, filter=owner)
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


def unpack_then(data: bytes, use: Callable[[str], None]) -> None:
    """Extract a tar made by `pack` into a temporary directory and call `use` with its one entry's path."""
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
