"""What every backend offers: the sandbox spec, its handle, exec results and the Backend protocol.

Backends are plain synchronous Python over their SDK. They know nothing of Ray or Harbor; the
actor runs them in a thread so their blocking calls never stall an event loop.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import IO, Any, ClassVar, Protocol, runtime_checkable

__all__ = ["DEFAULT_CAP_ADD", "Backend", "BackendSettings", "ExecResult", "SandboxHandle", "SandboxSpec"]

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
    storage_mb: int = 0  # 0: not limited (Kubernetes: ephemeral-storage; Docker: not applied, as in Harbor)
    gpus: int = 0
    pids_limit: int = 512
    network: bool = False
    ttl_s: int = 3600
    workdir: str | None = None  # None: the image's WORKDIR, as Harbor's Docker environment leaves it
    env: tuple[tuple[str, str], ...] = ()
    pool: str = "default"
    owner: str = ""
    cap_add: tuple[str, ...] = DEFAULT_CAP_ADD
    read_only_root: bool = False
    no_new_privileges: bool = True
    force_build: bool = False
    labels: tuple[tuple[str, str], ...] = ()  # extra labels, e.g. the owning actor's id
    # "HOST:PORT" of the model gateway: without `network`, the sandbox reaches it (as
    # gateway.harbor-ray.internal:PORT) and nothing else; `egress` adds "HOSTNAME:PORT"s. See docs/network.md.
    gateway: str | None = None
    egress: tuple[str, ...] = ()
    # an agent runtime recipe (harbor_ray.runtimes): its tree mounted read-only at /opt/harbor-agent/<name>, its
    # launchers last on PATH; built once per host by `ensure_image`
    agent_runtime: str = ""
    # the OCI runtime (Docker `runtime`, Kubernetes runtimeClassName), e.g. runsc; "" -> the host's default
    runtime: str = ""


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


@runtime_checkable
class Backend(Protocol):
    """Sandbox I/O for one kind of host. Ten members; errors are `HarborRayError` leaves."""

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

    def put_archive(self, handle: SandboxHandle, archive: IO[bytes], size: int) -> None:
        """Extract at '/' the tar `archive` (`size` bytes, members named by full path without the leading '/',
        as `transfer.pack_for_target` makes them), streamed from the file, never read whole."""
        ...

    def get_archive(self, handle: SandboxHandle, remote_path: str, sink: IO[bytes]) -> str:
        """Write a tar of remote_path into sink as it arrives; return the name of its top member."""
        ...

    def destroy(self, handle: SandboxHandle) -> None:
        """Remove the sandbox; idempotent."""
        ...

    def list(self, labels: dict[str, str]) -> list[SandboxHandle]:
        """Sandboxes whose labels include all of `labels`."""
        ...

    def settle(self, timeout_s: float) -> bool:
        """Wait (at most `timeout_s`) for the clean-up this process still does in the background for sandboxes
        it destroyed: call it before the process ends. False when some was left (to a sweep)."""
        ...


class BackendSettings(Protocol):
    """What the pool, dryrun and clean ask of any backend's config dataclass (no I/O, no SDK).

    `kind` selects the registry entry; `slots` bounds sandboxes per host (0: only pool.max_sandboxes);
    `host_name()` is the one place sandboxes go, or None for the local daemon of whichever Ray node runs
    the sandbox actor (so actors are pinned per node); `supports_hosts` says whether `pool.hosts` may list
    several of them (`at_url` then makes each one's config).
    """

    supports_hosts: ClassVar[bool]
    image_tar: ClassVar[bool]  # uploads are extracted by the sandbox image's own tar (`pack_for_target`)
    kind: Any
    max_concurrent_creates: int
    build_timeout_s: float

    @property
    def slots(self) -> int: ...

    def validate(self) -> None:
        """Raise ConfigError naming the field when the settings cannot work."""
        ...

    def host_name(self) -> str | None: ...

    def target(self) -> str:
        """Where sandboxes are created, in a few words, for reports."""
        ...

    def builds_on_local_docker(self) -> bool:
        """Whether task images are built on this machine's Docker daemon for this backend."""
        ...
