"""Session fixtures for remote Docker: certs made with openssl, a mutual-TLS listener and a plain one.

Both listeners are `tls_proxy.py` subprocesses on free 127.0.0.1 ports in front of the real engine's
unix socket, so the backend goes through the docker SDK's real TLS + client-cert path.

Cert layout (all per session, in a temp dir):
  good/      ca.pem, cert.pem, key.pem          the client's material, signed by the session CA
  server/    ca.pem, server-cert.pem, server-key.pem   the listener's (SAN IP:127.0.0.1 only)
  expired/   ca.pem, cert.pem, key.pem          a client cert of the same CA that expired in 2020
  other-ca/  ca.pem, cert.pem, key.pem          a second CA and a client cert signed by it
"""

from __future__ import annotations

import contextlib
import ctypes
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from harbor_ray.backends.docker_config import DockerBackendConfig, TLSFiles

PROXY = Path(__file__).with_name("tls_proxy.py")
SOCKET = "/var/run/docker.sock"
# A minimal `openssl ca` config: the only openssl command that sets arbitrary validity dates.
_CA_CNF = (
    "[ca]\ndefault_ca=d\n[d]\ndatabase=index.txt\nnew_certs_dir=.\nserial=serial\ndefault_md=sha256\n"
    "policy=p\n[p]\ncommonName=supplied\n"
)


def _openssl(cwd: Path, *args: str) -> None:
    done = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True)
    if done.returncode != 0:
        pytest.fail(f"openssl {' '.join(args[:2])} failed: {done.stderr.strip()[-500:]}")


def _ca(d: Path, name: str) -> None:
    _openssl(
        d,
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-subj",
        f"/CN={name}",
        "-keyout",
        f"{name}-key.pem",
        "-out",
        f"{name}.pem",
    )


def _leaf(d: Path, ca: str, name: str, ext: str, *dates: str) -> None:
    """A key + cert signed by `ca`; with dates (start, end) through `openssl ca` to set them freely."""
    (d / f"{name}.ext").write_text(ext)
    _openssl(
        d,
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        f"/CN={name}",
        "-keyout",
        f"{name}-key.pem",
        "-out",
        f"{name}.csr",
    )
    if dates:
        _openssl(
            d,
            "ca",
            "-batch",
            "-config",
            "ca.cnf",
            "-cert",
            f"{ca}.pem",
            "-keyfile",
            f"{ca}-key.pem",
            "-in",
            f"{name}.csr",
            "-out",
            f"{name}-cert.pem",
            "-startdate",
            dates[0],
            "-enddate",
            dates[1],
            "-extfile",
            f"{name}.ext",
            "-notext",
        )
    else:
        _openssl(
            d,
            "x509",
            "-req",
            "-in",
            f"{name}.csr",
            "-CA",
            f"{ca}.pem",
            "-CAkey",
            f"{ca}-key.pem",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            f"{name}.ext",
            "-out",
            f"{name}-cert.pem",
        )


@dataclass(frozen=True)
class Certs:
    root: Path

    def dir(self, name: str) -> Path:
        return self.root / name


@pytest.fixture(scope="session")
def tls_certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    work = tmp_path_factory.mktemp("docker-tls")
    raw = work / "raw"
    raw.mkdir()
    (raw / "ca.cnf").write_text(_CA_CNF)
    (raw / "index.txt").touch()
    (raw / "serial").write_text("01\n")
    _ca(raw, "ca")
    _ca(raw, "other")
    _leaf(raw, "ca", "server", "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n")
    _leaf(raw, "ca", "client", "extendedKeyUsage=clientAuth\n")
    _leaf(raw, "ca", "expired", "extendedKeyUsage=clientAuth\n", "20200101000000Z", "20200102000000Z")
    _leaf(raw, "other", "stranger", "extendedKeyUsage=clientAuth\n")
    layout = {
        "good": {"ca.pem": "ca.pem", "cert.pem": "client-cert.pem", "key.pem": "client-key.pem"},
        "server": {"ca.pem": "ca.pem", "server-cert.pem": "server-cert.pem", "server-key.pem": "server-key.pem"},
        "expired": {"ca.pem": "ca.pem", "cert.pem": "expired-cert.pem", "key.pem": "expired-key.pem"},
        "other-ca": {"ca.pem": "other.pem", "cert.pem": "stranger-cert.pem", "key.pem": "stranger-key.pem"},
    }
    for sub, files in layout.items():
        (work / sub).mkdir()
        for dest, src in files.items():
            shutil.copy(raw / src, work / sub / dest)
    return Certs(work)


def _die_with_parent() -> None:  # the listener gets SIGTERM if pytest dies without teardown
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class Listener:
    """A running tls_proxy.py subprocess; `url` is tcp://127.0.0.1:<port>."""

    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(PROXY), "--socket", SOCKET, *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            preexec_fn=_die_with_parent,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().strip()  # "listening <port>", or "" if it died
        if not line.startswith("listening "):
            self.stop()
            pytest.fail(f"tls_proxy.py did not start (exit {self.proc.returncode}): {line!r}")
        self.port = int(line.split()[1])
        self.url = f"tcp://127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


@pytest.fixture(scope="session")
def tls_listener(tls_certs: Certs) -> Iterator[Listener]:
    """Mutual TLS in front of the engine, like a daemon on :2376 with --tlsverify."""
    listener = Listener("--certs", str(tls_certs.dir("server")))
    yield listener
    listener.stop()


@pytest.fixture(scope="session")
def plain_listener() -> Iterator[Listener]:
    """Plain text in front of the engine, like a daemon on :2375."""
    listener = Listener("--plain")
    yield listener
    listener.stop()


@pytest.fixture
def start_listener() -> Iterator[Callable[..., Listener]]:
    """Start listeners of this test's own (e.g. to kill one mid-trial); all are stopped at teardown."""
    started: list[Listener] = []

    def start(*args: str) -> Listener:
        started.append(Listener(*args))
        return started[-1]

    yield start
    for listener in started:
        listener.stop()


@pytest.fixture
def remote_config(tls_listener: Listener, tls_certs: Certs) -> DockerBackendConfig:
    """A docker_remote config for the TLS listener with the good client cert."""
    return DockerBackendConfig(
        kind="docker_remote", host=tls_listener.url, tls=TLSFiles(cert_path=str(tls_certs.dir("good"))), timeout_s=30
    )
