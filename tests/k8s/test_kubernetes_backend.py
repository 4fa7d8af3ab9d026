"""The Kubernetes backend against a real kube-apiserver, with the test kubelet running pods on the real engine.

Most of these also run against the real node (tests/k8s_real/test_real_backend.py): keep them true for both.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import docker
import pytest
from support.k8s_cluster import BASE, BUSYBOX, Cluster, sandbox_container

from harbor_ray import labels as L
from harbor_ray.backends.base import Backend, SandboxSpec
from harbor_ray.backends.kubernetes.backend import KubernetesBackend
from harbor_ray.errors import (
    BackendUnavailable,
    ConfigError,
    ExecTimeout,
    SandboxGone,
    SandboxStartError,
    TransferError,
)

pytestmark = [pytest.mark.k8s, pytest.mark.docker]


def small(run_label: str, image: str = BUSYBOX, **kw: object) -> SandboxSpec:
    base: dict[str, object] = {"image": image, "run_label": run_label, "cpus": 0.1, "memory_mb": 64, "ttl_s": 600}
    base.update(kw)
    return SandboxSpec(**base)  # type: ignore[arg-type]


@pytest.fixture
def backend(k8s_cluster: Cluster) -> Iterator[KubernetesBackend]:
    b = KubernetesBackend(k8s_cluster.config())
    yield b
    b.close()


def no_process(backend: KubernetesBackend, handle, pattern: str) -> bool:
    """True when no live (non-zombie) process in the sandbox has `pattern` in its command line."""
    pattern = f"[{pattern[0]}]{pattern[1:]}"  # so neither this script nor grep matches itself
    script = (
        f'for d in /proc/[0-9]*; do s=$(cut -d" " -f3 $d/stat 2>/dev/null); [ "$s" = Z ] && continue; '
        f'tr "\\0" " " < $d/cmdline 2>/dev/null; echo; done | grep -c "{pattern}" || true'
    )
    return backend.exec(handle, ["sh", "-c", script]).stdout.strip() == "0"


def exec_fails(backend: KubernetesBackend, handle) -> bool:
    try:
        backend.exec(handle, ["true"])
    except SandboxGone:
        return True
    return False


def test_ping_and_protocol(backend: KubernetesBackend) -> None:
    assert isinstance(backend, Backend)
    assert backend.ping().startswith("v1.20")


def test_lifecycle_exec_and_pod_shape(
    backend: KubernetesBackend, k8s_cluster: Cluster, run_label: str, docker_client: docker.DockerClient
) -> None:
    spec = small(run_label, env=(("GREETING", "hello there"),), workdir="/etc", ttl_s=900, cpus=0.25, memory_mb=96)
    handle = backend.create(spec, backend.ensure_image(spec))
    assert (handle.kind, handle.host) == ("k8s", k8s_cluster.namespace)
    assert handle.name.startswith(f"{run_label}-")
    assert (handle.labels[L.RUN], handle.labels[L.TTL]) == (run_label, "900")

    [pod] = k8s_cluster.pods(f"{L.RUN}={run_label}", k8s_cluster.namespace)
    assert pod["status"]["phase"] == "Running"
    ps, c = pod["spec"], pod["spec"]["containers"][0]
    assert (ps["restartPolicy"], ps["activeDeadlineSeconds"]) == ("Never", 900)
    assert ps["automountServiceAccountToken"] is False
    assert ps["shareProcessNamespace"] is True  # pause reaps orphans (test_real_node: pids limit)
    assert c["args"] == ["sleep", "900"]  # args only: the image's ENTRYPOINT stays
    assert "command" not in c
    assert c["resources"]["limits"] == {"cpu": "250m", "memory": "96Mi"}
    assert c["securityContext"]["allowPrivilegeEscalation"] is False
    assert c["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert set(c["securityContext"]["capabilities"]["add"]) == set(spec.cap_add)

    # The container on the real engine is the pod's, with its limits (the test kubelet sets NanoCpus, a
    # real one's dockershim a CFS quota per period).
    container = sandbox_container(docker_client, handle.name)
    assert container.labels["io.kubernetes.pod.namespace"] == k8s_cluster.namespace
    hc = container.attrs["HostConfig"]
    assert hc["NanoCpus"] or round(hc["CpuQuota"] * 1e9 / hc["CpuPeriod"]) == 250_000_000
    assert hc["NanoCpus"] in (0, 250_000_000)
    assert hc["Memory"] == 96 * 2**20

    r = backend.exec(handle, ["sh", "-c", "echo out; echo err >&2; exit 7"])
    assert (r.stdout, r.stderr, r.return_code, r.truncated) == ("out\n", "err\n", 7, False)
    r = backend.exec(handle, 'echo "$GREETING from $(pwd)"')  # a string: bash -c, or sh -c without bash
    assert (r.stdout, r.return_code) == ("hello there from /etc\n", 0)
    r = backend.exec(handle, ["sh", "-c", 'echo "$A|$B|$(pwd)"'], cwd="/proc", env={"A": "x y", "B": "$HOME'\""})
    assert r.stdout == "x y|$HOME'\"|/proc\n"
    assert backend.exec(handle, "exit 3").return_code == 3
    assert backend.exec(handle, ["no-such-program"]).return_code == 127
    assert backend.exec(handle, ["true"], cwd="/no/such/dir").return_code == 126

    assert [h.name for h in backend.list(L.selector(run_label))] == [handle.name]
    assert backend.state(handle) == "Running"
    backend.destroy(handle)
    assert backend.state(handle) == "gone"
    code, _ = k8s_cluster.request("GET", f"/api/v1/namespaces/{k8s_cluster.namespace}/pods/{handle.name}")
    assert code == 404
    backend.destroy(handle)  # idempotent
    assert backend.list(L.selector(run_label)) == []
    with pytest.raises(SandboxGone):
        backend.exec(handle, ["true"])


def test_output_is_capped(k8s_cluster: Cluster, run_label: str) -> None:
    backend = KubernetesBackend(k8s_cluster.config(exec_output_limit_bytes=1000))
    handle = backend.create(small(run_label), BUSYBOX)
    try:
        r = backend.exec(handle, ["sh", "-c", "yes abcdefgh | head -c 200000; yes e | head -c 5000 >&2"])
        assert (r.return_code, r.truncated) == (0, True)
        assert r.stdout.startswith("abcdefgh\n" * 100)
        assert "output truncated" in r.stdout
        assert len(r.stdout) < 1200
        assert len(r.stderr) < 1200
    finally:
        backend.destroy(handle)


def test_exec_timeout_kills_the_command(backend: KubernetesBackend, run_label: str) -> None:
    handle = backend.create(small(run_label), BUSYBOX)
    try:
        started = time.monotonic()
        with pytest.raises(ExecTimeout, match="timed out after 2s"):
            backend.exec(handle, ["sh", "-c", "sleep 517; echo never"], timeout_s=2)
        assert time.monotonic() - started < 15
        assert no_process(backend, handle, "sleep 517")
        # Background children keep the stream open past the command's own timeout: the client-side
        # deadline fires and every process carrying the exec's token is killed from outside.
        started = time.monotonic()
        with pytest.raises(ExecTimeout):
            backend.exec(handle, ["sh", "-c", "sleep 611 & sleep 612 & wait"], timeout_s=2)
        assert time.monotonic() - started < 15
        assert no_process(backend, handle, "sleep 61[12]")
        # The sandbox is still usable afterwards.
        assert backend.exec(handle, ["echo", "alive"], timeout_s=10).stdout == "alive\n"
    finally:
        backend.destroy(handle)


def test_upload_download_files_and_directories(backend: KubernetesBackend, run_label: str, tmp_path: Path) -> None:
    handle = backend.create(small(run_label), BUSYBOX)
    try:
        payload = os.urandom(3 * 2**20 + 123)  # several websocket frames and stdin chunks
        src = tmp_path / "blob.bin"
        src.write_bytes(payload)
        src.chmod(0o640)
        tree = tmp_path / "tree"
        (tree / "sub" / "deeper").mkdir(parents=True)
        (tree / "run.sh").write_text("#!/bin/sh\necho ran\n")
        (tree / "run.sh").chmod(0o755)
        (tree / "sub" / "deeper" / "note.txt").write_text("héllo\n")
        (tree / "sub" / "link").symlink_to("deeper/note.txt")

        backend.upload(handle, str(src), "/work/in/blob.bin")  # parents are created
        backend.upload(handle, str(tree), "/work/tree")
        r = backend.exec(
            handle,
            [
                "sh",
                "-c",
                "stat -c '%a %s' /work/in/blob.bin; /work/tree/run.sh; "
                "cat /work/tree/sub/link; stat -c %a /work/tree/run.sh",
            ],
        )
        assert r.stdout == f"640 {len(payload)}\nran\nhéllo\n755\n", r.stderr

        backend.exec(handle, ["sh", "-c", "echo made > /work/tree/sub/new.txt"])
        backend.download(handle, "/work/in/blob.bin", str(tmp_path / "back" / "blob.bin"))
        assert (tmp_path / "back" / "blob.bin").read_bytes() == payload
        assert (tmp_path / "back" / "blob.bin").stat().st_mode & 0o777 == 0o640
        backend.download(handle, "/work/tree", str(tmp_path / "tree_back"))
        assert (tmp_path / "tree_back" / "sub" / "new.txt").read_text() == "made\n"
        assert (tmp_path / "tree_back" / "sub" / "link").readlink() == Path("deeper/note.txt")
        assert (tmp_path / "tree_back" / "run.sh").stat().st_mode & 0o777 == 0o755

        with pytest.raises(TransferError, match="no such file"):
            backend.download(handle, "/work/nothing", str(tmp_path / "x"))
        with pytest.raises(TransferError, match="does not exist"):
            backend.upload(handle, str(tmp_path / "absent"), "/work/absent")
        with pytest.raises(TransferError, match="absolute"):
            backend.upload(handle, str(src), "relative/path")
    finally:
        backend.destroy(handle)


def test_user_switching(backend: KubernetesBackend, run_label: str, docker_client: docker.DockerClient) -> None:
    try:
        docker_client.images.get(BASE)
    except docker.errors.ImageNotFound:
        pytest.fail(f"{BASE} missing: build the project's images first (scripts/images.sh)")
    handle = backend.create(small(run_label, image=BASE), BASE)
    try:
        assert backend.exec(handle, "id -u; id -g").stdout == "0\n0\n"
        assert backend.exec(handle, "id -un", user="nobody").stdout == "nobody\n"
        assert backend.exec(handle, ["id", "-u"], user="1234:4321").stdout == "1234\n"
        r = backend.exec(handle, ["true"], user="no-such-user")
        assert r.return_code == 126
        assert "no user no-such-user" in r.stderr
    finally:
        backend.destroy(handle)


def test_the_sandboxs_own_user_needs_no_switch(backend: KubernetesBackend, run_label: str) -> None:
    """Harbor runs its verifier as root; busybox's setpriv cannot switch users, and need not: the pod runs as root."""
    handle = backend.create(small(run_label), BUSYBOX)
    try:
        for user in ("0", "root", "0:0"):
            r = backend.exec(handle, "id -u; id -g", user=user)
            assert (r.stdout, r.return_code) == ("0\n0\n", 0), r.stderr
    finally:
        backend.destroy(handle)


def test_start_fails_fast_with_err_image_never_pull(k8s_cluster: Cluster, run_label: str) -> None:
    backend = KubernetesBackend(k8s_cluster.config(image_pull_policy="Never"))
    started = time.monotonic()
    with pytest.raises(SandboxStartError, match="ErrImageNeverPull") as e:
        backend.create(small(run_label), "harbor-ray/absent:nope")
    assert time.monotonic() - started < 30
    assert "\n" not in str(e.value)
    assert k8s_cluster.pods(f"{L.RUN}={run_label}") == []  # deleted, not left behind


def test_start_timeout_names_image_pull_backoff(k8s_cluster: Cluster, run_label: str) -> None:
    backend = KubernetesBackend(k8s_cluster.config(start_timeout_s=5))
    with pytest.raises(SandboxStartError, match=r"not running after 5s: .*(ImagePullBackOff|ErrImagePull)"):
        backend.create(small(run_label), "harbor-ray/absent:nope")
    assert k8s_cluster.pods(f"{L.RUN}={run_label}") == []


def test_start_timeout_names_unschedulable(k8s_cluster: Cluster, run_label: str) -> None:
    backend = KubernetesBackend(k8s_cluster.config(start_timeout_s=3, node_selector={"disk": "ssd"}))
    with pytest.raises(SandboxStartError, match="PodScheduled Unschedulable .*didn't match Pod's node affinity"):
        backend.create(small(run_label), BUSYBOX)
    assert k8s_cluster.pods(f"{L.RUN}={run_label}") == []


def test_ttl_backstop_ends_the_pod(backend: KubernetesBackend, k8s_cluster: Cluster, run_label: str) -> None:
    # The deadline counts from the pod's start: it must outlast the start itself on a loaded machine (CI saw
    # a pod with 3 s pass its deadline before the kubelet reported it running).
    handle = backend.create(small(run_label, ttl_s=10), BUSYBOX)
    try:
        deadline = time.monotonic() + 40
        while backend.state(handle) == "Running" and time.monotonic() < deadline:
            time.sleep(0.5)
        assert backend.state(handle) == "Failed"
        [pod] = k8s_cluster.pods(f"{L.RUN}={run_label}")
        assert pod["status"]["reason"] == "DeadlineExceeded"
        # A real kubelet reports the phase, then stops the containers: an exec may slip in between.
        deadline = time.monotonic() + 30
        while not exec_fails(backend, handle):
            assert time.monotonic() < deadline, "exec still works in a pod past its deadline"
            time.sleep(0.5)
        with pytest.raises(SandboxGone, match="Failed"):
            backend.exec(handle, ["true"])
    finally:
        backend.destroy(handle)


def test_32_concurrent_sandboxes(backend: KubernetesBackend, run_label: str) -> None:
    spec = small(run_label, cpus=0.05, memory_mb=32)

    def one(i: int) -> str:
        handle = backend.create(spec, BUSYBOX)
        try:
            r = backend.exec(handle, ["echo", str(i)], timeout_s=60)
            assert backend.state(handle) == "Running"
            return r.stdout
        finally:
            backend.destroy(handle)

    with ThreadPoolExecutor(max_workers=32) as pool:
        outputs = list(pool.map(one, range(32)))
    assert outputs == [f"{i}\n" for i in range(32)]


def test_bad_inputs_give_one_line(k8s_cluster: Cluster, run_label: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^backend.kubeconfig=/no/such/kubeconfig: no such readable file"):
        KubernetesBackend(k8s_cluster.config(kubeconfig="/no/such/kubeconfig"))
    garbage = tmp_path / "garbage.yaml"
    garbage.write_text("this: is: not: a kubeconfig\n")
    with pytest.raises(ConfigError, match="backend.kubeconfig=") as e:
        KubernetesBackend(k8s_cluster.config(kubeconfig=str(garbage)))
    assert "\n" not in str(e.value)
    with pytest.raises(ConfigError, match="^in-cluster config: ") as e:
        KubernetesBackend(k8s_cluster.config(in_cluster=True))  # not inside a pod
    assert "\n" not in str(e.value)
    missing_ns = KubernetesBackend(k8s_cluster.config(namespace="no-such-namespace"))
    with pytest.raises(ConfigError, match="backend.namespace=no-such-namespace: no such namespace"):
        missing_ns.create(small(run_label), BUSYBOX)
    with pytest.raises(ConfigError, match="empty or wildcard"):
        KubernetesBackend(k8s_cluster.config()).create(small(""), BUSYBOX)
    with pytest.raises(ConfigError, match="task.toml"):
        KubernetesBackend(k8s_cluster.config()).ensure_image(SandboxSpec(run_label=run_label, build_context="/x"))
    registry = KubernetesBackend(k8s_cluster.config(image_registry="registry.example.com/team/"))
    assert registry.ensure_image(small(run_label)) == f"registry.example.com/team/{BUSYBOX}"
    assert registry.ensure_image(small(run_label, image="quay.io/a/b:1")) == "quay.io/a/b:1"


def test_private_configuration_per_instance(k8s_cluster: Cluster, run_label: str) -> None:
    """Two backends with different credentials in one process; the global default config is untouched."""
    from kubernetes import client

    admin = KubernetesBackend(k8s_cluster.config())
    limited = KubernetesBackend(k8s_cluster.config(kubeconfig=str(k8s_cluster.limited_kubeconfig)))
    assert client.Configuration.get_default_copy().host != k8s_cluster.server
    assert limited.ping().startswith("v1.20")  # /version is public
    with ThreadPoolExecutor(max_workers=2) as pool:
        ok = pool.submit(admin.create, small(run_label), BUSYBOX)
        refused = pool.submit(limited.create, small(run_label), BUSYBOX)
        handle = ok.result()
        with pytest.raises(BackendUnavailable, match="403"):
            refused.result()
    admin.destroy(handle)


def test_api_errors_are_retried_then_reported(k8s_cluster: Cluster) -> None:
    """Nothing listens: connection errors are retried with backoff, then one BackendUnavailable line."""
    from support.k8s_cluster import write_kubeconfig

    dead = write_kubeconfig(
        k8s_cluster.workdir / "dead.kubeconfig", "https://127.0.0.1:1", k8s_cluster.ca_file, "x", "default"
    )
    backend = KubernetesBackend(k8s_cluster.config(kubeconfig=str(dead)))
    with pytest.raises(BackendUnavailable, match="unreachable") as e:
        backend.ping()
    assert "\n" not in str(e.value)
    assert backend._retrying.statistics.get("attempt_number", 0) >= 3
