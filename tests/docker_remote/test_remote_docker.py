"""Remote Docker over mutual TLS, against the real engine behind the session's TLS listener.

The sandbox lifecycle goes through the TLS path (DockerBackend and the SandboxActor); every certificate
or port mistake gives one readable line naming the field; a lost connection is a typed error.
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from harbor_ray.backends.base import SandboxSpec
from harbor_ray.backends.docker.backend import DockerBackend
from harbor_ray.backends.docker.config import DockerBackendConfig, TLSFiles
from harbor_ray.backends.docker.endpoint import check_docker_host, connection_error
from harbor_ray.backends.images import BUSYBOX_IMAGE
from harbor_ray.errors import BackendUnavailable, ConfigError, ExecTimeout, SandboxGone
from harbor_ray.sandbox import Sandbox


def _tls(certs: Path, **files: str) -> TLSFiles:
    """TLS files from a cert dir, with single files swapped in (ca_cert=…, client_cert=…, client_key=…)."""
    base = {"ca_cert": certs / "ca.pem", "client_cert": certs / "cert.pem", "client_key": certs / "key.pem"}
    return TLSFiles(**{k: str(files.get(k, v)) for k, v in base.items()})


def _remote(url: str, tls: TLSFiles, **kw: object) -> DockerBackendConfig:
    return DockerBackendConfig(kind="docker_remote", host=url, tls=tls, timeout_s=30, **kw)  # type: ignore[arg-type]


def _one_line_error(cfg: DockerBackendConfig) -> str:
    """Connect and make one call; return the error's text, asserting it is exactly one line."""
    with pytest.raises((BackendUnavailable, ConfigError)) as info:
        DockerBackend(cfg).ping()
    text = str(info.value)
    assert "\n" not in text, text
    assert "Traceback" not in text, text
    assert "HTTPSConnectionPool" not in text, text
    return text


@pytest.mark.docker
def test_lifecycle_through_tls(remote_config, tls_listener, run_label, tmp_path):
    backend = DockerBackend(remote_config)
    assert backend.endpoint.url == tls_listener.url
    assert backend.client.api.base_url.startswith("https://127.0.0.1:")  # really TLS, really the listener
    assert backend.ping()
    spec = SandboxSpec(run_label=run_label, image=BUSYBOX_IMAGE, memory_mb=256, pids_limit=128)
    handle = backend.create(spec, backend.ensure_image(spec))
    try:
        result = backend.exec(handle, "echo out; echo err >&2; exit 3")
        assert (result.stdout, result.stderr, result.return_code) == ("out\n", "err\n", 3)
        src = tmp_path / "up"
        (src / "sub").mkdir(parents=True)
        (src / "sub" / "a.txt").write_text("hello over tls\n")
        backend.upload(handle, str(src), "/work/in")
        assert backend.exec(handle, ["cat", "/work/in/sub/a.txt"]).stdout == "hello over tls\n"
        backend.exec(handle, "mkdir -p /logs && echo 0.75 > /logs/reward.txt")
        backend.download(handle, "/logs", str(tmp_path / "logs"))
        assert (tmp_path / "logs" / "reward.txt").read_text() == "0.75\n"
        # hardened by default, as the daemon itself reports it
        host = backend.client.api.inspect_container(handle.id)["HostConfig"]
        assert host["Privileged"] is False
        assert host["CapDrop"] == ["ALL"]
        assert "SYS_ADMIN" not in (host["CapAdd"] or [])
        assert host["SecurityOpt"] == ["no-new-privileges"]
        assert (host["PidsLimit"], host["Memory"], host["NetworkMode"]) == (128, 256 << 20, "none")
        assert [h.id for h in backend.list({"harbor-run": run_label})] == [handle.id]
    finally:
        backend.destroy(handle)
    assert backend.list({"harbor-run": run_label}) == []


@pytest.mark.docker
@pytest.mark.ray
async def test_sandbox_actor_through_tls(remote_config, run_label, ray_local, tmp_path):
    sandbox = await Sandbox.create(remote_config, SandboxSpec(run_label=run_label, image=BUSYBOX_IMAGE))
    try:
        assert sandbox.handle.host == remote_config.host
        assert (await sandbox.exec("echo $((6 * 7))")).stdout == "42\n"
        (tmp_path / "f.txt").write_text("via the actor\n")
        await sandbox.upload(tmp_path / "f.txt", "/tmp/f.txt")
        await sandbox.exec("tr a-z A-Z < /tmp/f.txt > /tmp/g.txt")
        await sandbox.download("/tmp/g.txt", tmp_path / "g.txt")
        assert (tmp_path / "g.txt").read_text() == "VIA THE ACTOR\n"
    finally:
        await sandbox.stop()


@pytest.mark.docker
def test_wrong_requests_ca_bundle_does_not_replace_our_ca(remote_config, tls_certs, monkeypatch):
    wrong = str(tls_certs.dir("other-ca") / "ca.pem")
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", wrong)
    monkeypatch.setenv("CURL_CA_BUNDLE", wrong)
    backend = DockerBackend(remote_config)
    assert backend.ping()
    assert backend.client.api.trust_env is False


@pytest.mark.docker
def test_wrong_ca_is_one_line(tls_listener, tls_certs):
    good = tls_certs.dir("good")
    text = _one_line_error(_remote(tls_listener.url, _tls(good, ca_cert=tls_certs.dir("other-ca") / "ca.pem")))
    assert f"docker at {tls_listener.url}: TLS handshake failed: certificate verify failed" in text
    assert "not signed by backend.tls.ca_cert=" in text


@pytest.mark.docker
def test_missing_client_cert_is_one_line(tls_listener, tls_certs, tmp_path):
    only_ca = TLSFiles(ca_cert=str(tls_certs.dir("good") / "ca.pem"))
    assert _one_line_error(_remote(tls_listener.url, only_ca)).startswith("backend.tls.client_cert: missing;")
    (tmp_path / "ca.pem").write_bytes((tls_certs.dir("good") / "ca.pem").read_bytes())  # a cert dir without cert.pem
    text = _one_line_error(_remote(tls_listener.url, TLSFiles(cert_path=str(tmp_path))))
    assert text == (
        f"backend.tls.client_cert={tmp_path}/cert.pem (from backend.tls.cert_path): file not found; "
        "point it at the PEM file"
    )
    text = _one_line_error(_remote(tls_listener.url, TLSFiles(cert_path=str(tmp_path / "nope"))))
    assert text.startswith(f"backend.tls.cert_path={tmp_path}/nope: no such directory;")


@pytest.mark.docker
def test_expired_client_cert_is_one_line(tls_listener, tls_certs):
    text = _one_line_error(_remote(tls_listener.url, _tls(tls_certs.dir("expired"))))
    assert text.startswith(f"backend.tls.client_cert={tls_certs.dir('expired')}/cert.pem: expired on 2020-01-02;")


@pytest.mark.docker
def test_client_cert_of_another_ca_is_refused_by_the_daemon(tls_listener, tls_certs):
    other = tls_certs.dir("other-ca")
    tls = _tls(other, ca_cert=tls_certs.dir("good") / "ca.pem")  # server trusted; our cert is not
    text = _one_line_error(_remote(tls_listener.url, tls))
    assert "the daemon does not trust our client certificate (backend.tls.client_cert=" in text


@pytest.mark.docker
def test_a_reset_at_first_contact_is_explained_by_the_daemons_alert(tls_listener, tls_certs):
    """With TLS 1.3 the daemon's refusal can reach the client as a bare reset (the alert lost); CI saw it."""
    refused = check_docker_host(
        _remote(tls_listener.url, _tls(tls_certs.dir("other-ca"), ca_cert=tls_certs.dir("good") / "ca.pem"))
    )
    reset = ConnectionResetError(104, "Connection reset by peer")
    text = str(connection_error(refused, reset, first_contact=True))
    assert "the daemon does not trust our client certificate (backend.tls.client_cert=" in text
    accepted = check_docker_host(_remote(tls_listener.url, _tls(tls_certs.dir("good"))))
    text = str(connection_error(accepted, reset, first_contact=True))
    assert "the daemon dropped the TLS connection at the first request" in text


@pytest.mark.docker
def test_hostname_is_verified(tls_listener, tls_certs):
    url = tls_listener.url.replace("127.0.0.1", "localhost")  # the server cert names only IP:127.0.0.1
    text = _one_line_error(_remote(url, _tls(tls_certs.dir("good"))))
    assert "the server's certificate is not valid for 'localhost'" in text


@pytest.mark.docker
def test_plain_text_is_refused(plain_listener, tls_certs):
    text = _one_line_error(_remote(plain_listener.url, TLSFiles()))
    assert text.startswith(f"backend.host={plain_listener.url}: refused, TLS is off")
    assert "backend.allow_insecure=true" in text
    text = _one_line_error(_remote("tcp://127.0.0.1:2375", _tls(tls_certs.dir("good"))))
    assert text.startswith("backend.host=tcp://127.0.0.1:2375: refused, port 2375 is Docker's plain-text port")
    text = _one_line_error(_remote(plain_listener.url, _tls(tls_certs.dir("good"))))  # TLS to a plain port
    assert "speaks plain HTTP, not TLS" in text


@pytest.mark.docker
def test_allow_insecure_works_and_warns(plain_listener, run_label, caplog):
    caplog.set_level(logging.WARNING, logger="harbor_ray.backends.docker.endpoint")
    backend = DockerBackend(_remote(plain_listener.url, TLSFiles(), allow_insecure=True))
    spec = SandboxSpec(run_label=run_label, image=BUSYBOX_IMAGE)
    handle = backend.create(spec, BUSYBOX_IMAGE)
    try:
        assert backend.exec(handle, ["echo", "plain"]).stdout == "plain\n"
    finally:
        backend.destroy(handle)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, warnings
    expected = f"backend.allow_insecure=true: the Docker API at {plain_listener.url} is reached in plain text"
    assert expected in warnings[0]
    assert "root-equivalent access to that host" in warnings[0]


@pytest.mark.docker
@pytest.mark.parametrize("tls", [True, False], ids=["tls", "plain"])
def test_output_arriving_with_the_response_headers_is_kept(start_listener, tls_certs, run_label, tls):
    # The listener holds each reply 50 ms, so the exec's first frame shares a packet with the
    # "101 UPGRADED" headers and lands in http.client's buffer (the SDK's raw-socket reader lost it).
    if tls:
        listener = start_listener("--coalesce-ms", "50", "--certs", str(tls_certs.dir("server")))
        backend = DockerBackend(_remote(listener.url, _tls(tls_certs.dir("good"))))
    else:
        listener = start_listener("--coalesce-ms", "50", "--plain")
        backend = DockerBackend(_remote(listener.url, TLSFiles(), allow_insecure=True))
    handle = backend.create(SandboxSpec(run_label=run_label, image=BUSYBOX_IMAGE), BUSYBOX_IMAGE)
    try:
        results = [backend.exec(handle, ["sh", "-c", f"echo out{i}; echo err{i} >&2"]) for i in range(5)]
        assert [(r.stdout, r.stderr) for r in results] == [(f"out{i}\n", f"err{i}\n") for i in range(5)]
        with pytest.raises(ExecTimeout):  # the deadline still holds on the buffered path
            backend.exec(handle, ["sleep", "30"], timeout_s=1)
    finally:
        backend.destroy(handle)


@pytest.mark.docker
def test_connection_lost_mid_trial_is_typed(start_listener, tls_certs, run_label):
    listener = start_listener("--certs", str(tls_certs.dir("server")))
    backend = DockerBackend(_remote(listener.url, _tls(tls_certs.dir("good"))))
    handle = backend.create(SandboxSpec(run_label=run_label, image=BUSYBOX_IMAGE), BUSYBOX_IMAGE)
    try:
        with ThreadPoolExecutor(1) as pool:
            running = pool.submit(backend.exec, handle, ["sleep", "30"], timeout_s=60)
            time.sleep(1.0)
            started = time.monotonic()
            listener.stop()  # the remote daemon goes away mid-command
            with pytest.raises((BackendUnavailable, SandboxGone)) as info:
                running.result(timeout=30)
        assert time.monotonic() - started < 20
        assert str(info.value).startswith(f"docker at {listener.url}: ")
        with pytest.raises(BackendUnavailable, match="connection refused"):
            backend.exec(handle, ["true"])
        with pytest.raises(BackendUnavailable, match="connection refused"):
            backend.upload(handle, __file__, "/tmp/x.py")
    finally:
        DockerBackend().destroy(handle)  # through the local socket: the remote path is gone
