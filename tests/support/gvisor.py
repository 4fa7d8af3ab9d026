"""gVisor (Debian's `runsc`) registered on a Docker daemon of the tests' own, never on the machine's daemon.

`runsc_wrapper(dir)` writes the runtime to register: runsc with the flags this machine needs (why, below); plain
`/usr/bin/runsc` runs no container here. A test host of the multi-host harness (support.hosts) could take it as
`runtimes={"h2": {"runsc": str(wrapper)}}` (dockerd `--add-runtime` has no place for runtime arguments, hence a
wrapper). `GvisorDockerd` is a daemon of the tests' own with that wrapper registered as `runsc`: in a test host's
network namespace (`ns`, entered with nsenter as the harness does) or, without one, in a namespace of its own, with
no bridge and no iptables rules (its sandboxes run without network, as a task's default), its data root, exec root,
socket and pid file in a private directory, everything removed by `remove()`. Never in the root namespace: a
dockerd started with `--bridge=none` deletes the interface `docker0` it finds (moby's removeDefaultBridgeInterface),
which is the machine's daemon's bridge there.

Why these flags, found on this machine (kernel 6.18 in a VM, cgroup v1, fuse-overlayfs; runsc 0.0~20221219):
- `--platform=ptrace`: the kvm platform hangs here (/dev/kvm is present but nested KVM never runs the sentry).
- `--network=none`: this runsc decides "am I in the root network namespace?" by whether
  /proc/sys/net/core/rmem_default exists, which newer kernels show in every namespace, so it refuses every
  container ("cannot run with network enabled in root network namespace"); with its own network off the
  sandbox has loopback only. Newer gVisor releases fixed the check; Debian bookworm ships this one.
- `--file-access=shared`: Docker's put_archive/get_archive (uploads, downloads) change the container's root
  filesystem from outside; gVisor's default (exclusive) caches it and never sees an upload.
gVisor mounts its own tmpfs at /tmp when the image's /tmp is empty, so files put into /tmp from outside are not
seen inside (docs/config.md says so; hide_git_history stages its tar elsewhere for that reason).
"""

from __future__ import annotations

import contextlib
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from support.dockerd import copy_images
from support.netns import in_ns, ns_argv, run
from support.procs import die_with_parent, wait_ready

RUNSC_FLAGS = ("--platform=ptrace", "--network=none", "--file-access=shared")
GVISOR_BANNER = "Starting gVisor"  # the first line of a gVisor sandbox's dmesg
GVISOR_UNAME = "4.4.0"  # the kernel release gVisor reports
OWN_NS_PREFIX = "hrgv-"  # the namespace of a daemon started without a test host's


def runsc_wrapper(directory: Path) -> Path:
    """An executable that runs /usr/bin/runsc (or the one on PATH) with RUNSC_FLAGS before Docker's arguments."""
    import shutil

    runsc = shutil.which("runsc")
    if runsc is None:
        msg = "runsc is not installed: scripts/ensure_runsc.sh installs Debian's package (the test command runs it)"
        raise RuntimeError(msg)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "runsc-harbor-ray"
    path.write_text(f'#!/bin/sh\nexec {runsc} {" ".join(RUNSC_FLAGS)} "$@"\n')
    path.chmod(0o755)
    return path


class GvisorDockerd:
    """A private dockerd with runsc registered; `url` is its socket. Start with `start()`, end with `remove()`."""

    def __init__(self, ns: str | None = None) -> None:
        # short: the socket path of its containerd (under exec-root) must fit a unix socket name
        self.root = Path(tempfile.mkdtemp(prefix="hr-gv-", dir="/tmp"))
        self.own_ns = "" if ns else f"{OWN_NS_PREFIX}{self.root.name.removeprefix('hr-gv-')}"
        self.ns = ns or self.own_ns
        self.url = f"unix://{self.root / 'docker.sock'}"
        self.log = self.root / "dockerd.log"
        self.wrapper = runsc_wrapper(self.root / "bin")
        (self.root / "daemon.json").write_text("{}")  # never the machine's /etc/docker/daemon.json
        self.argv = [
            "dockerd",
            f"--config-file={self.root / 'daemon.json'}",
            f"--data-root={self.root / 'data'}",
            f"--exec-root={self.root / 'exec'}",
            f"--pidfile={self.root / 'docker.pid'}",
            f"--host={self.url}",
            "--bridge=none",
            "--iptables=false",
            "--ip-masq=false",
            f"--storage-driver={_main_storage_driver()}",
            f"--add-runtime=runsc={self.wrapper}",
        ]
        self.proc: subprocess.Popen[bytes] | None = None

    def client(self, timeout: int = 120) -> Any:
        import docker

        return docker.DockerClient(base_url=self.url, timeout=timeout)

    def start(self, images: list[str], timeout: float = 60.0) -> None:
        """Start the daemon and `docker load` the given images from the machine's daemon (no registry)."""
        if self.own_ns:
            run("ip", "netns", "add", self.own_ns)
            in_ns(self.own_ns, "ip", "link", "set", "lo", "up")
        argv = ns_argv(self.ns, self.argv)
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out, preexec_fn=die_with_parent,
                start_new_session=True,
            )  # fmt: skip
        wait_ready("the gVisor test dockerd", lambda: bool(self.client(5).ping()), timeout, self.proc, self.log)
        copy_images(self.client(300), images, self.root)

    def remove(self) -> None:
        """Remove its containers, stop it (SIGTERM, then SIGKILL), kill what still runs from its directory
        (containerd, shims, runsc), unmount what is mounted under it, delete it."""
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(Exception):
                for c in self.client(30).containers.list(all=True):
                    c.remove(force=True)
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        _kill_under(self.root)
        mounts = [line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()]
        for mount in sorted((m for m in mounts if m.startswith(f"{self.root}/")), key=len, reverse=True):
            subprocess.run(["umount", "-l", mount], capture_output=True, check=False)
        subprocess.run(["rm", "-rf", "--one-file-system", str(self.root)], capture_output=True, check=False)
        if self.own_ns:
            run("ip", "netns", "del", self.own_ns, check=False)


def _main_storage_driver() -> str:
    import docker

    return str(docker.from_env().info().get("Driver") or "overlay2")


def _kill_under(root: Path) -> None:
    """Processes whose command line names a path under `root` (our containerd, its shims, runsc), and children."""
    import psutil

    deadline = time.monotonic() + 10
    while True:
        found: dict[int, psutil.Process] = {}
        for p in psutil.process_iter(["cmdline"]):
            if any(str(root) in arg for arg in p.info["cmdline"] or []):
                found[p.pid] = p
                with contextlib.suppress(psutil.Error):
                    found |= {c.pid: c for c in p.children(recursive=True)}
        if not found or time.monotonic() > deadline:
            break
        time.sleep(0.2)  # dockerd's own stop ends them; give it a moment before killing
    for p in found.values():
        with contextlib.suppress(psutil.Error):
            p.kill()
    psutil.wait_procs(list(found.values()), timeout=10)
