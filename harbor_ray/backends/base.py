"""What every backend offers: the sandbox spec, its handle, exec results and the Backend protocol.

Backends are plain synchronous Python over their SDK. They know nothing of Ray or Harbor; the
actor runs them in a thread so their blocking calls never stall an event loop.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Protocol, runtime_checkable

from harbor_ray.errors import (
    BackendUnavailable,
    CircuitOpen,
    ExecTimeout,
    HarborRayError,
    ImageBuildError,
    SandboxGone,
    SandboxStartError,
    TransferError,
)

__all__ = [
    "Backend",
    "BackendUnavailable",
    "CircuitOpen",
    "ExecResult",
    "ExecTimeout",
    "HarborRayError",
    "ImageBuildError",
    "SandboxGone",
    "SandboxHandle",
    "SandboxSpec",
    "SandboxStartError",
    "TransferError",
]

# Capabilities a shell, package managers and test runners need; everything else is dropped.
DEFAULT_CAP_ADD = ("CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "SETGID", "SETUID", "KILL")


@dataclass(frozen=True)
class SandboxSpec:
    """Everything needed to create one sandbox.

    Either `image` names an image the backend can run, or `build_context` is a directory with a
    Dockerfile that `ensure_image` turns into one (once per content hash).

    >>> SandboxSpec(image="harbor-ray/base:bookworm", run_label="demo").network
    False
    """

    run_label: str
    image: str | None = None
    build_context: str | None = None
    cpus: float = 1.0
    memory_mb: int = 2048
    pids_limit: int = 512
    network: bool = False
    ttl_s: int = 3600
    workdir: str = "/"
    env: tuple[tuple[str, str], ...] = ()
    pool: str = "default"
    owner: str = ""
    cap_add: tuple[str, ...] = DEFAULT_CAP_ADD
    read_only_root: bool = False
    no_new_privileges: bool = True
    force_build: bool = False
    labels: tuple[tuple[str, str], ...] = ()  # extra labels, e.g. the owning actor's id


@dataclass(frozen=True)
class SandboxHandle:
    """A created sandbox: enough to reach it again from any process."""

    kind: str  # "docker" | "k8s"
    id: str  # container id / pod name
    name: str
    host: str  # docker base_url or k8s namespace
    image: str
    labels: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ExecResult:
    """The outcome of a command. A non-zero exit is data, not an exception."""

    stdout: str
    stderr: str
    return_code: int
    truncated: bool = False


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


@runtime_checkable
class Backend(Protocol):
    """Sandbox I/O for one kind of host. Eight members; errors are `HarborRayError` leaves."""

    kind: str

    def ping(self) -> str:
        """Reach the daemon/API; return its version string or raise BackendUnavailable."""
        ...

    def ensure_image(self, spec: SandboxSpec) -> str:
        """Return an image reference for the spec, building it once if needed."""
        ...

    def create(self, spec: SandboxSpec, image: str) -> SandboxHandle:
        """Create and start one sandbox from the image; raise SandboxStartError."""
        ...

    def exec(
        self,
        handle: SandboxHandle,
        cmd: str | list[str],
        *,
        cwd: str | None = None,
        env: dict[str, str] | None = None,
        timeout_s: float | None = None,
        user: str | None = None,
    ) -> ExecResult:
        """Run a command (a string goes through `bash -c`); raise ExecTimeout after killing it."""
        ...

    def upload(self, handle: SandboxHandle, local_path: str, remote_path: str) -> None:
        """Copy a local file or directory to remote_path (the full target path)."""
        ...

    def download(self, handle: SandboxHandle, remote_path: str, local_path: str) -> None:
        """Copy a remote file or directory to local_path (the full target path)."""
        ...

    def destroy(self, handle: SandboxHandle) -> None:
        """Remove the sandbox; idempotent."""
        ...

    def list(self, labels: dict[str, str]) -> list[SandboxHandle]:
        """Sandboxes whose labels include all of `labels`."""
        ...
