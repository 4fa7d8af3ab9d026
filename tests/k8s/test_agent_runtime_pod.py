"""Agent runtimes on Kubernetes, against the real kube-apiserver and the test kubelet: the pod a runtime gives (an
init container from the runtime image that copies the tree into an emptyDir, mounted read-only at the tree's path,
pods only on nodes of the tree's architecture) as the API stored it after its own validation and defaults; exec puts
the launchers last on PATH; the runtime image follows backend.image_registry; bad input is one line and leaves no
pod. The copy itself (the test kubelet runs no init containers) is tested on the real node
(tests/k8s_real/test_agent_runtime_pods.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from support.k8s_cluster import BUSYBOX, Cluster

from harbor_ray import labels as L
from harbor_ray.backends.base import SandboxSpec
from harbor_ray.backends.kubernetes import runtime as R
from harbor_ray.backends.kubernetes.backend import KubernetesBackend
from harbor_ray.config import load_config
from harbor_ray.errors import ConfigError
from harbor_ray.runtimes.recipes import recipe, runtime_tag

pytestmark = [pytest.mark.k8s, pytest.mark.docker]
REC = recipe("mini-swe-agent")


@pytest.fixture
def backend(k8s_cluster: Cluster) -> Iterator[KubernetesBackend]:
    b = KubernetesBackend(k8s_cluster.config())
    yield b
    b.close()


def test_k8s_accepts_agent_runtime_at_config_time() -> None:
    cfg = load_config(["agent=mini-swe-agent", "backend=k8s"])
    assert (cfg.backend.kind, cfg.agent.runtime) == ("k8s", "mini-swe-agent")


def test_runtime_image_follows_the_registry(k8s_cluster: Cluster) -> None:
    tag = runtime_tag(REC)
    assert tag.startswith("harbor-ray/runtime-mini-swe-agent:")
    assert KubernetesBackend(k8s_cluster.config()).runtime_image("mini-swe-agent") == tag
    mirrored = KubernetesBackend(k8s_cluster.config(image_registry="registry.example:5000/rl/"))
    assert mirrored.runtime_image("mini-swe-agent") == f"registry.example:5000/rl/{tag}"


def test_runtime_pod_shape_and_path(backend: KubernetesBackend, k8s_cluster: Cluster, run_label: str) -> None:
    plain = backend.create(SandboxSpec(run_label=run_label, image=BUSYBOX), BUSYBOX)
    try:
        image_path = backend.exec(plain, "echo $PATH").stdout.strip()  # the image's own (or the engine's default)
        [pod] = k8s_cluster.pods(f"{L.RUN}={run_label}")
        assert "initContainers" not in pod["spec"]
        assert R.ARCH_LABEL not in pod["spec"].get("nodeSelector", {})
    finally:
        backend.destroy(plain)
    assert REC.bin_path not in image_path

    spec = SandboxSpec(
        run_label=run_label, image=BUSYBOX, agent_runtime="mini-swe-agent", cpus=0.25, memory_mb=96, storage_mb=900
    )
    handle = backend.create(spec, backend.ensure_image(spec))
    try:
        assert handle.labels[L.RUNTIME] == "mini-swe-agent"
        [pod] = k8s_cluster.pods(f"{L.RUN}={run_label}")
        ps = pod["spec"]
        assert ps["nodeSelector"][R.ARCH_LABEL] == "amd64"  # the tree's loader and libraries (x86_64 here)
        assert ps["volumes"] == [{"name": R.VOLUME, "emptyDir": {}}]
        [init] = ps["initContainers"]
        sandbox = ps["containers"][0]
        assert (init["name"], init["image"]) == (R.INIT_CONTAINER, runtime_tag(REC))
        assert init["imagePullPolicy"] == sandbox["imagePullPolicy"] == "IfNotPresent"
        assert init["command"] == REC.copy_argv("/harbor-ray-runtime")
        assert init["command"][:3] == [f"{REC.mount_path}/lib/ld.so", "--library-path", f"{REC.mount_path}/lib"]
        assert init["volumeMounts"] == [{"name": R.VOLUME, "mountPath": "/harbor-ray-runtime"}]
        # the sandbox's CPU and memory (the pod's effective request stays the sandbox's), nothing else
        assert sandbox["resources"]["limits"] == {"cpu": "250m", "memory": "96Mi", "ephemeral-storage": "900Mi"}
        assert init["resources"] == {
            "limits": {"cpu": "250m", "memory": "96Mi"},
            "requests": {"cpu": "250m", "memory": "96Mi"},
        }
        sc = init["securityContext"]
        assert (sc["runAsUser"], sc["runAsNonRoot"], sc["allowPrivilegeEscalation"]) == (65534, True, False)
        assert (sc["capabilities"], sc["readOnlyRootFilesystem"]) == ({"drop": ["ALL"]}, True)
        assert sandbox["volumeMounts"] == [{"name": R.VOLUME, "mountPath": REC.mount_path, "readOnly": True}]
        assert not any(e["name"] == "PATH" for e in sandbox.get("env", []))  # the image's PATH is kept

        # the launchers go last on PATH at each exec: the image's own PATH first; an env PATH still wins
        got = backend.exec(handle, "echo $PATH").stdout.strip()
        assert got == f"{image_path}:{REC.bin_path}"
        assert backend.exec(handle, "echo $PATH", env={"PATH": "/bin"}).stdout.strip() == "/bin"
        [listed] = backend.list({L.RUN: run_label})  # a handle found again (reaper, clean) execs the same way
        assert backend.exec(listed, "echo $PATH").stdout.strip() == got
    finally:
        backend.destroy(handle)


def test_runtime_for_another_architecture_is_one_line_and_no_pod(k8s_cluster: Cluster, run_label: str) -> None:
    backend = KubernetesBackend(k8s_cluster.config(node_selector={R.ARCH_LABEL: "arm64"}))
    spec = SandboxSpec(run_label=run_label, image=BUSYBOX, agent_runtime="mini-swe-agent")
    with pytest.raises(ConfigError) as e:
        backend.create(spec, backend.ensure_image(spec))
    assert str(e.value) == (
        "backend.node_selector.kubernetes.io/arch=arm64: agent.runtime=mini-swe-agent is built for amd64 (this "
        "machine); select amd64 nodes, or build the runtime on a machine of that architecture"
    )
    assert k8s_cluster.pods(f"{L.RUN}={run_label}") == []


def test_dryrun_says_it_cannot_look_into_a_registry(k8s_cluster: Cluster) -> None:
    from harbor_ray.ops.dryrun.kubernetes import k8s_checks

    config = k8s_cluster.config(image_registry="registry.example:5000/rl")
    [line] = [c for c in k8s_checks(config, agent_runtime="mini-swe-agent") if c.name == "k8s agent runtime"]
    assert (line.ok, line.warning) == (False, True)  # a warning: the run may work, nothing here can tell
    assert line.detail.startswith(
        f"mini-swe-agent: nodes pull registry.example:5000/rl/{runtime_tag(REC)}, not checked (no registry API here; "
        "dryrun --pod does)"
    )
    assert line.fix.startswith(f"push {runtime_tag(REC)} as registry.example:5000/rl/{runtime_tag(REC)}")
