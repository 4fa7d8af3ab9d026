"""A dockerd of a test host: its own data root, exec root, unix socket, pid file and config, in a network namespace.

It listens on `unix://<dir>/docker.sock` (for the harness and for the Ray node's sandbox actors) and, with
mutual TLS, on `tcp://<address>:2376` (for the pool's remote hosts). Its containers get a bridge of its own
inside the namespace (a namespace has its own interfaces and iptables). Storage: the driver the machine's main
daemon uses (fuse-overlayfs here), which works in a second daemon. `runtimes` registers extra OCI runtimes
(`--add-runtime name=path`, e.g. {"runsc": "/usr/bin/runsc"}).

Base images reach it by `docker save` on the main daemon and `docker load` here, through the SDK (no
registry). Everything it made lives under its directory; `remove()` stops it and deletes that directory.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

from support.netns import ns_argv
from support.procs import die_with_parent, wait_ready

TLS_PORT = 2376
_STOP_TIMEOUT_S = 30.0


def main_storage_driver() -> str:
    import docker

    return str(docker.from_env().info().get("Driver") or "overlay2")


class Dockerd:
    """One daemon in network namespace `ns`, rooted at `root` (short: unix socket paths are limited)."""

    def __init__(
        self,
        root: Path,
        ns: str,
        address: str,
        tls_dir: Path,
        *,
        storage_driver: str,
        runtimes: dict[str, str] | None = None,
    ) -> None:
        self.root = root
        self.ns = ns
        self.address = address
        self.socket = root / "docker.sock"
        self.url = f"unix://{self.socket}"
        self.tls_url = f"tcp://{address}:{TLS_PORT}"
        self.log = root / "dockerd.log"
        self.runtimes = dict(runtimes or {})
        root.mkdir(parents=True, exist_ok=True)
        (root / "daemon.json").write_text("{}")  # never the machine's /etc/docker/daemon.json
        self.argv = [
            "dockerd",
            f"--config-file={root / 'daemon.json'}",
            f"--data-root={root / 'data'}",
            f"--exec-root={root / 'exec'}",
            f"--pidfile={root / 'docker.pid'}",
            f"--host={self.url}",
            f"--host={self.tls_url}",
            "--tlsverify",
            f"--tlscacert={tls_dir / 'ca.pem'}",
            f"--tlscert={tls_dir / 'server-cert.pem'}",
            f"--tlskey={tls_dir / 'server-key.pem'}",
            f"--storage-driver={storage_driver}",
            *(f"--add-runtime={name}={path}" for name, path in self.runtimes.items()),
        ]
        self.proc: subprocess.Popen[bytes] | None = None

    # -- running ---------------------------------------------------------------------------------------------

    def start(self, timeout: float = 60.0) -> None:
        if self.running():
            return
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                ns_argv(self.ns, self.argv), stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                preexec_fn=die_with_parent, start_new_session=True,
            )  # fmt: skip
        wait_ready(f"dockerd of {self.ns}", lambda: self.client(timeout=5).ping(), timeout, self.proc, self.log)

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def client(self, timeout: float = 60.0) -> Any:
        import docker

        return docker.DockerClient(base_url=self.url, timeout=int(timeout))

    def stop(self) -> None:
        """A clean stop (SIGTERM): dockerd stops its containers (auto-remove ones go) and its containerd."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(_STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.kill()
        self._kill_leftovers()

    def _kill_leftovers(self) -> None:
        """After dockerd ended: its containerd and shims (and their containers) end too."""
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and _processes_under(self.root / "exec"):
            time.sleep(0.2)
        kill_processes_under(self.root / "exec")

    def kill(self) -> None:
        """The host's daemon dies at once (SIGKILL to dockerd and its containerd); containers' shims live on,
        as after a crash, until `start()` (dockerd then ends them) or `remove()`."""
        if self.proc is not None and self.proc.poll() is None:
            top = psutil.Process(self.proc.pid)
            procs = [p for p in [*top.children(), top] if _name(p) in ("dockerd", "containerd")]
            for p in procs:
                with contextlib.suppress(psutil.Error):
                    p.kill()
            self.proc.wait(10)
            psutil.wait_procs(procs, timeout=10)
            # a dead containerd's pid file would make the next dockerd wait for it (its pid may live on a while)
            (self.root / "exec" / "containerd" / "containerd.pid").unlink(missing_ok=True)

    def freeze(self) -> None:
        """dockerd stops answering (SIGSTOP): connections are accepted and never served."""
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGSTOP)

    def thaw(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGCONT)

    # -- images ----------------------------------------------------------------------------------------------

    def load_images(self, refs: list[str]) -> None:
        """`docker save` each ref on the machine's main daemon, `docker load` it here (no registry)."""
        copy_images(self.client(timeout=300), refs, self.root)

    # -- teardown ----------------------------------------------------------------------------------------------

    def remove(self) -> None:
        """Remove every container (the daemon is the harness's own), stop the daemon, delete its directory."""
        if self.running():
            with contextlib.suppress(Exception):
                self.thaw()
                client = self.client(timeout=30)
                for c in client.containers.list(all=True):
                    with contextlib.suppress(Exception):
                        c.remove(force=True)
        self.stop()
        remove_tree(self.root)


def _processes_under(root: Path) -> list[psutil.Process]:
    """Processes whose command line names a path under `root` (our containerd and its shims), with the
    containers' processes under those shims."""
    found: dict[int, psutil.Process] = {}
    for p in psutil.process_iter(["cmdline"]):
        if any(str(root) in arg for arg in p.info["cmdline"] or []):
            found[p.pid] = p
            with contextlib.suppress(psutil.Error):
                for child in p.children(recursive=True):
                    found[child.pid] = child
    return list(found.values())


def kill_processes_under(root: Path) -> None:
    procs = [p for p in _processes_under(root) if p.pid != os.getpid()]
    for p in procs:
        with contextlib.suppress(psutil.Error):
            p.kill()
    psutil.wait_procs(procs, timeout=10)


def remove_tree(root: Path) -> None:
    """Kill what still runs from `root`, unmount what is mounted under it, delete it."""
    kill_processes_under(root)
    for mount in sorted(_mounts_under(root), key=len, reverse=True):
        subprocess.run(["umount", "-l", mount], capture_output=True, check=False)
    subprocess.run(["rm", "-rf", "--one-file-system", str(root)], capture_output=True, check=False)
    if root.exists():
        subprocess.run(["rm", "-rf", str(root)], capture_output=True, check=False)


def _mounts_under(root: Path) -> list[str]:
    prefix = str(root) + "/"
    lines = Path("/proc/self/mountinfo").read_text().splitlines()
    return [fields[4] for fields in (line.split() for line in lines) if (fields[4] + "/").startswith(prefix)]


def _name(p: psutil.Process) -> str:
    try:
        return p.name()
    except psutil.Error:
        return ""


def copy_images(here: Any, refs: list[str], scratch: Path) -> None:
    """`docker save` each ref on the machine's main daemon and `docker load` it on the daemon of client `here`
    (no registry), through a temporary file in `scratch`."""
    import docker

    main = docker.from_env(timeout=300)
    for ref in refs:
        with tempfile.TemporaryFile(dir=scratch) as tar:
            for chunk in main.images.get(ref).save(named=True):
                tar.write(chunk)
            tar.seek(0)
            here.images.load(tar)
        here.images.get(ref)  # present now, or raise
