"""A session PKI made with openssl: CAs, the certs they sign, and the layout each tier uses.

In a work directory every name is a pair `<name>.key` + `<name>.crt`. `kubernetes_pki` is the test
apiserver's and the test kubelet's; `docker_tls` is the remote-Docker tier's, copied into the directories
the docker SDK and dockerd read (ca.pem, cert.pem, key.pem).
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from support.procs import HarnessError

# A minimal `openssl ca` config: the only openssl command that sets arbitrary validity dates.
_CA_CNF = (
    "[ca]\ndefault_ca=d\n[d]\ndatabase=index.txt\nnew_certs_dir=.\nserial=serial\ndefault_md=sha256\n"
    "policy=p\n[p]\ncommonName=supplied\n"
)
SERVER_127 = "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n"
CLIENT = "extendedKeyUsage=clientAuth\n"


def openssl(d: Path, *args: str) -> None:
    done = subprocess.run(["openssl", *args], cwd=d, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        msg = f"openssl {' '.join(args[:2])} failed: {done.stderr.strip()[-500:]}"
        raise HarnessError(msg)


def make_key(d: Path, name: str) -> None:
    openssl(d, "genrsa", "-out", f"{name}.key", "2048")


def make_ca(d: Path, name: str, cn: str | None = None) -> None:
    """A self-signed CA, valid for two days."""
    subject = f"/CN={cn or name}"
    openssl(d, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", subject,
            "-keyout", f"{name}.key", "-out", f"{name}.crt")  # fmt: skip


def make_leaf(d: Path, name: str, ca: str, ext: str, valid: tuple[str, str] | None = None) -> None:
    """A key + cert signed by ca with the extensions in ext; valid=(start, end) sets the dates freely."""
    (d / f"{name}.ext").write_text(ext)
    openssl(d, "req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}",
            "-keyout", f"{name}.key", "-out", f"{name}.csr")  # fmt: skip
    if valid is None:
        openssl(d, "x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.crt", "-CAkey", f"{ca}.key",
                "-CAcreateserial", "-days", "2", "-extfile", f"{name}.ext", "-out", f"{name}.crt")  # fmt: skip
        return
    if not (d / "ca.cnf").exists():
        (d / "ca.cnf").write_text(_CA_CNF)
        (d / "index.txt").touch()
        (d / "serial").write_text("01\n")
    openssl(d, "ca", "-batch", "-config", "ca.cnf", "-cert", f"{ca}.crt", "-keyfile", f"{ca}.key",
            "-in", f"{name}.csr", "-out", f"{name}.crt", "-startdate", valid[0], "-enddate", valid[1],
            "-extfile", f"{name}.ext", "-notext")  # fmt: skip


def kubernetes_pki(d: Path) -> None:
    """ca, the apiserver's serving cert and the kubelet's (both for 127.0.0.1), and sa.key for service accounts."""
    make_ca(d, "ca", cn="harbor-ray-test-ca")
    for name in ("apiserver", "kubelet"):
        ext = (
            "subjectAltName=IP:127.0.0.1,DNS:localhost,DNS:kubernetes.default.svc\n"
            "extendedKeyUsage=serverAuth\nbasicConstraints=CA:FALSE\n"
        )
        make_leaf(d, name, "ca", ext)
    make_key(d, "sa")


@dataclass(frozen=True)
class Certs:
    """The remote-Docker tier's cert directories under root (see `docker_tls`)."""

    root: Path

    def dir(self, name: str) -> Path:
        return self.root / name


def docker_tls(work: Path) -> Certs:
    """Cert directories for a mutual-TLS Docker listener and its clients, under work:

    good/      ca.pem, cert.pem, key.pem                 the client's material, signed by the session CA
    server/    ca.pem, server-cert.pem, server-key.pem   the listener's (SAN IP:127.0.0.1 only)
    expired/   ca.pem, cert.pem, key.pem                 a client cert of the same CA that expired in 2020
    other-ca/  ca.pem, cert.pem, key.pem                 a second CA and a client cert signed by it
    """
    raw = work / "raw"
    raw.mkdir()
    make_ca(raw, "ca")
    make_ca(raw, "other")
    make_leaf(raw, "server", "ca", SERVER_127)
    make_leaf(raw, "client", "ca", CLIENT)
    make_leaf(raw, "expired", "ca", CLIENT, valid=("20200101000000Z", "20200102000000Z"))
    make_leaf(raw, "stranger", "other", CLIENT)
    layout = {
        "good": {"ca.pem": "ca.crt", "cert.pem": "client.crt", "key.pem": "client.key"},
        "server": {"ca.pem": "ca.crt", "server-cert.pem": "server.crt", "server-key.pem": "server.key"},
        "expired": {"ca.pem": "ca.crt", "cert.pem": "expired.crt", "key.pem": "expired.key"},
        "other-ca": {"ca.pem": "other.crt", "cert.pem": "stranger.crt", "key.pem": "stranger.key"},
    }
    for sub, files in layout.items():
        (work / sub).mkdir()
        for dest, src in files.items():
            shutil.copy(raw / src, work / sub / dest)
    return Certs(work)
