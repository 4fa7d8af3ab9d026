"""`python -m harbor_ray dryrun` for a remote daemon: through the session's TLS listener, and when it fails."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from support.procs import free_port

ROOT = Path(__file__).resolve().parents[2]


def dryrun(*args: str, **env_extra: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "DOCKER_CERT_PATH")}
    env |= {"PYTHONPATH": str(ROOT), **env_extra}
    return subprocess.run([sys.executable, "-m", "harbor_ray", "dryrun", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)  # fmt: skip


def line(out: str, name: str) -> str:
    found = [x.strip() for x in out.splitlines() if x.strip()[2:].startswith(f"{name}: ")]
    assert len(found) == 1, f"no single line for {name!r} in:\n{out}"
    return found[0]


@pytest.mark.docker
def test_remote_tls_passes(tls_listener, tls_certs, run_label):
    done = dryrun(
        "backend=docker_remote", f"backend.host={tls_listener.url}", f"backend.tls.cert_path={tls_certs.dir('good')}",
        f"run_label={run_label}", "backend.slots=1000",
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    tls = line(done.stdout, "TLS / port")
    assert tls.startswith(f"✓ TLS / port: {tls_listener.url} mutual TLS (TLS on port {tls_listener.port}")
    assert "REQUESTS_CA_BUNDLE/CURL_CA_BUNDLE ignored" in tls  # this machine sets both
    assert line(done.stdout, "daemon ping").startswith("✓ daemon ping: Docker ")
    assert line(done.stdout, "probe container").startswith("✓ probe container: created, exec'd and removed")


@pytest.mark.docker
def test_seed_layout_with_docker_cert_path_passes(tls_listener, tls_certs, run_label, tmp_path):
    seed = tmp_path / "seed.yaml"
    seed.write_text(
        "runtime_info:\n  input:\n    harbor_agent:\n      agent_name: oracle\n"
        f'      docker_host: "{tls_listener.url}"\n    k8s:\n      pod_name_prefix: {run_label}\n'
    )
    done = dryrun("--json", "--config", str(seed), "backend.slots=1000", DOCKER_CERT_PATH=str(tls_certs.dir("good")))
    report = json.loads(done.stdout)
    assert done.returncode == 0, done.stdout + done.stderr
    assert (report["backend"], report["target"], report["run_label"]) == ("docker_remote", tls_listener.url, run_label)
    assert all(c["status"] == "pass" for c in report["checks"]), report["checks"]


@pytest.mark.docker
def test_unreachable_host_fails_on_its_own_line(tls_certs):
    port = free_port()  # closed: nothing listens there
    done = dryrun("backend=docker_remote", f"backend.host=tcp://127.0.0.1:{port}",
                  f"backend.tls.cert_path={tls_certs.dir('good')}")  # fmt: skip
    assert done.returncode == 1, done.stdout + done.stderr
    assert line(done.stdout, "TLS / port").startswith("✓ TLS / port:")
    assert line(done.stdout, "daemon ping") == (
        f"✗ daemon ping: docker at tcp://127.0.0.1:{port}: connection refused; is the daemon running and "
        "listening there? (check backend.host)"
    )
    for name in ("API version", "base image", "probe container", "free slots"):
        assert line(done.stdout, name) == f"– {name}: not run: needs daemon ping"


@pytest.mark.docker
def test_wrong_ca_fails_on_the_ping_line(tls_listener, tls_certs):
    good, other = tls_certs.dir("good"), tls_certs.dir("other-ca")
    done = dryrun(
        "backend=docker_remote", f"backend.host={tls_listener.url}", f"backend.tls.ca_cert={other / 'ca.pem'}",
        f"backend.tls.client_cert={good / 'cert.pem'}", f"backend.tls.client_key={good / 'key.pem'}",
    )  # fmt: skip
    assert done.returncode == 1
    assert "certificate verify failed (the server's certificate is not signed by backend.tls.ca_cert=" in line(
        done.stdout, "daemon ping"
    )


@pytest.mark.docker
def test_expired_cert_fails_on_the_tls_line(tls_listener, tls_certs):
    expired = tls_certs.dir("expired")
    done = dryrun("backend=docker_remote", f"backend.host={tls_listener.url}", f"backend.tls.cert_path={expired}")
    assert done.returncode == 1
    tls = line(done.stdout, "TLS / port")
    assert tls.startswith(f"✗ TLS / port: backend.tls.client_cert={expired}/cert.pem: expired on 2020-01-02")
    assert line(done.stdout, "daemon ping") == "– daemon ping: not run: needs TLS / port"


@pytest.mark.docker
def test_allowed_plain_text_warns_and_names_the_risk(plain_listener, run_label):
    done = dryrun("backend=docker_remote", f"backend.host={plain_listener.url}", "backend.allow_insecure=true",
                  f"run_label={run_label}", "backend.slots=1000")  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    tls = line(done.stdout, "TLS / port")
    assert tls.startswith(f"⚠ TLS / port: {plain_listener.url}: plain text (insecure) allowed by backend.allow_")
    assert "root-equivalent access" in tls
    assert "root-equivalent access" in done.stderr  # and the client's own warning, in the log
