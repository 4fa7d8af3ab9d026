"""Agent runtimes on the real single-node cluster (kubelet with dockershim on this machine's Docker): the runtime
image built once on the local daemon (backend.build_with_docker), its tree copied by the pod's init container into
an emptyDir and mounted read-only; Harbor's installed mini-swe-agent runs from it in a busybox pod (no Python, no
libc), its model calls going to a scripted policy at the address harbor_trial's gateway listens on for Kubernetes
-> reward 1; a missing runtime image is one line and leaves no pod; `images build` and `dryrun --pod` report it.
Nothing is left behind (the `run_label` fixture: no pod, no running container of one)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import cast

import docker
import pytest
from k8s.test_k8s_trial import ray_session
from support.k8s_cluster import BUSYBOX, Cluster, sandbox_container
from support.runtime_task import COMMANDS, trial_overrides
from support.scripted_openai import ScriptedPolicy

from harbor_ray import labels as L
from harbor_ray.backends import make_backend
from harbor_ray.backends.base import SandboxSpec
from harbor_ray.backends.kubernetes import runtime as R
from harbor_ray.backends.kubernetes.backend import KubernetesBackend
from harbor_ray.config import load_config
from harbor_ray.errors import SandboxStartError
from harbor_ray.harbor.runner import run_trials
from harbor_ray.runtimes.recipes import recipe, runtime_tag

pytestmark = [pytest.mark.k8s_real, pytest.mark.docker]
ROOT = Path(__file__).resolve().parents[2]
REC = recipe("mini-swe-agent")
__all__ = ["ray_session"]


def _k8s(cluster: Cluster) -> list[str]:
    return ["backend=k8s", f"backend.kubeconfig={cluster.kubeconfig}", f"backend.namespace={cluster.namespace}"]


def test_runtime_is_copied_read_only_into_the_pod(
    k8s_cluster: Cluster, run_label: str, docker_client: docker.DockerClient
) -> None:
    backend = cast("KubernetesBackend", make_backend(k8s_cluster.config(build_with_docker=True)))
    spec = SandboxSpec(run_label=run_label, image=BUSYBOX, agent_runtime="mini-swe-agent")
    handle = backend.create(spec, backend.ensure_image(spec))  # builds the runtime image once if it is missing
    try:
        docker_client.images.get(runtime_tag(REC))  # on the daemon the kubelet runs images from
        [pod] = k8s_cluster.pods(f"{L.RUN}={run_label}")
        [init] = pod["status"]["initContainerStatuses"]
        assert init["name"] == R.INIT_CONTAINER
        assert init["state"]["terminated"]["exitCode"] == 0, init
        # root in the sandbox cannot change the tree: the mount is read-only
        wrote = backend.exec(handle, f"touch {REC.bin_path}/x || rm -f {REC.bin_path}/mini")
        assert wrote.return_code != 0
        assert "Read-only file system" in wrote.stderr
        mounts = sandbox_container(docker_client, handle.name).attrs["Mounts"]
        [mount] = [m for m in mounts if m["Destination"] == REC.mount_path]
        assert mount["RW"] is False
        # the image has no Python and no libc; the agent starts from its launcher on PATH
        assert backend.exec(handle, "command -v python3 python; ls /lib /lib64 2>&1").stdout.count("No such") == 2
        started = backend.exec(handle, "mini-swe-agent --help", timeout_s=120)
        assert started.return_code == 0, started.stderr[-500:]
        assert "mini-swe-agent version 2.4.6" in started.stdout
        # the copy kept the tree: the same entries, modes and file sizes as the daemon's copy-up into a volume
        here = backend.exec(handle, LISTING).stdout.split()
        assert int(here[0]) > 1000
        assert here == _volume_listing(docker_client, run_label)
    finally:
        backend.destroy(handle)


# every entry below the tree's root (an emptyDir's root is 777, a volume's 755: not the tree's), its mode, and a
# file's size
LISTING = (
    f"T={REC.mount_path}; {{ find $T -mindepth 1 -type f -exec stat -c '%n %a %s' {{}} +; "
    "find $T -mindepth 1 ! -type f -exec stat -c '%n %a %F' {} +; } | sort > /tmp/l; wc -l < /tmp/l; md5sum < /tmp/l"
)


def _volume_listing(client: docker.DockerClient, run_label: str) -> list[str]:
    """LISTING of the tree as the Docker backend mounts it: its volume, filled by the daemon's copy-up (the runtime
    image is there already: this fills the volume only if it is not)."""
    from harbor_ray.backends.docker import runtime as DR

    volume = DR.ensure_runtime(client, "local", "mini-swe-agent", lambda *_: None)
    out = client.containers.run(
        BUSYBOX,
        ["sh", "-c", LISTING],
        volumes={volume: {"bind": REC.mount_path, "mode": "ro"}},
        remove=True,
        network_mode="none",
        labels={L.RUN: run_label},
    )
    return out.decode().split()


def test_missing_runtime_image_is_one_line_and_no_pod(k8s_cluster: Cluster, run_label: str, docker_client) -> None:
    tag = runtime_tag(recipe("claude-code"))  # npm is unreachable here: never built on this machine
    with pytest.raises(docker.errors.ImageNotFound):
        docker_client.images.get(tag)
    backend = KubernetesBackend(k8s_cluster.config(image_pull_policy="Never"))
    spec = SandboxSpec(run_label=run_label, image=BUSYBOX, agent_runtime="claude-code")
    with pytest.raises(SandboxStartError) as e:
        backend.create(spec, backend.ensure_image(spec))
    line = str(e.value)
    assert "\n" not in line
    assert line.startswith(f"agent.runtime=claude-code: pod {k8s_cluster.namespace}/{run_label}-")
    assert f"cannot get the runtime image {tag} (ErrImageNeverPull); build it on the nodes' Docker with" in line
    assert line.endswith("or push it to the registry in backend.image_registry")
    assert k8s_cluster.pods(f"{L.RUN}={run_label}") == []


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "harbor_ray", *args], cwd=ROOT, capture_output=True, text=True, timeout=900
    )


def test_images_build_and_dryrun_report_the_runtime_for_pods(k8s_cluster: Cluster) -> None:
    k8s = [*_k8s(k8s_cluster), "backend.build_with_docker=true", "agent=mini-swe-agent"]
    built = _cli("images", "build", *k8s, "tasks=[examples/tasks/hello-file]")
    assert built.returncode == 0, built.stdout + built.stderr[-2000:]
    line = next(x for x in built.stdout.splitlines() if x.startswith("agent runtime mini-swe-agent on "))
    assert line.endswith(f": present: {runtime_tag(REC)}, copied into each pod by an init container"), line
    dry = _cli("dryrun", "--pod", *k8s)
    assert dry.returncode == 0, dry.stdout + dry.stderr[-2000:]
    assert f"k8s agent runtime: mini-swe-agent present ({runtime_tag(REC)}, " in dry.stdout
    assert "with agent runtime mini-swe-agent copied and on PATH and exec ok" in dry.stdout


async def test_installed_mini_swe_agent_trial_in_a_pod(
    ray_session, k8s_cluster: Cluster, run_label: str, tmp_path: Path
) -> None:
    from harbor_ray.verl.harbor_trial import gateway_address

    k8s = [*_k8s(k8s_cluster), "backend.build_with_docker=true"]
    # where harbor_trial's gateway listens for a Kubernetes backend (this Ray node's address), and pods reach it
    policy = ScriptedPolicy(gateway_address(load_config(k8s)), COMMANDS)
    try:
        [record] = await run_trials(load_config([*k8s, *trial_overrides(tmp_path, run_label, policy.address)]))
    finally:
        policy.close()
    assert (record.reward, record.error) == (1.0, None), record.error_message
    assert record.sandbox.startswith(f"{run_label}-")
    # the agent asked the policy twice (its command, then its submission), through the gateway's name
    assert [r["path"] for r in policy.requests] == ["/v1/chat/completions"] * 2
