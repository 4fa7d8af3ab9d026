"""Agent runtimes on the real Docker daemon, without Ray: `images build` and `dryrun` report them per host, a
bad recipe name is one line at config time, and a sandbox gets the tree read-only with its launchers last on
PATH (the image's own PATH first), in an image without any libc of its own (busybox)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from harbor_ray.backends import make_backend
from harbor_ray.backends.base import SandboxSpec
from harbor_ray.backends.docker import runtime as R
from harbor_ray.backends.docker.config import DockerBackendConfig
from harbor_ray.backends.images import BUSYBOX_IMAGE
from harbor_ray.config import load_config
from harbor_ray.errors import ConfigError
from harbor_ray.runtimes.recipes import recipe

pytestmark = [pytest.mark.docker]


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "harbor_ray", *args], capture_output=True, text=True, timeout=900)


def test_images_build_and_dryrun_report_the_runtime(tmp_path) -> None:
    built = _cli("images", "build", "agent=mini-swe-agent", "tasks=[examples/tasks/hello-file]")
    assert built.returncode == 0, built.stderr[-2000:]
    assert "agent runtime mini-swe-agent on " in built.stdout
    assert ": built" in built.stdout or ": present" in built.stdout
    again = _cli("images", "build", "agent=mini-swe-agent", "tasks=[examples/tasks/hello-file]")
    assert "agent runtime mini-swe-agent on " in again.stdout
    assert ": present" in again.stdout  # built once: the second run finds it
    dry = _cli("dryrun", "agent=mini-swe-agent")
    assert "agent runtime: mini-swe-agent present" in dry.stdout + dry.stderr


def test_unknown_recipe_is_one_line_at_config_time() -> None:
    with pytest.raises(ConfigError, match=r"agent.runtime='nope': no such runtime recipe; choose one of claude-code"):
        load_config(["agent.runtime=nope"])


def test_sandbox_gets_the_tree_read_only_and_its_launchers_last_on_path(run_label: str) -> None:
    backend = make_backend(DockerBackendConfig())
    spec = SandboxSpec(run_label=run_label, image=BUSYBOX_IMAGE, agent_runtime="mini-swe-agent")
    handle = backend.create(spec, backend.ensure_image(spec))
    try:
        rec = recipe("mini-swe-agent")
        path = backend.exec(handle, "echo $PATH").stdout.strip()
        assert path.endswith(":" + rec.bin_path)
        assert path.split(":")[0] != rec.bin_path  # the task's own tools come first
        wrote = backend.exec(handle, f"touch {rec.bin_path}/x || rm -f {rec.bin_path}/mini", user="0")
        assert wrote.return_code != 0
        assert "Read-only file system" in wrote.stderr
        assert backend.exec(handle, "command -v python3 python; ls /lib /lib64 2>&1").stdout.count("No such") == 2
        version = backend.exec(handle, "mini-swe-agent --help", timeout_s=120)
        assert version.return_code == 0, version.stderr[-500:]
        assert "mini-swe-agent version 2.4.6" in version.stdout
        mounts = backend.client.api.inspect_container(handle.id)["Mounts"]
        assert [(m["Name"], m["Destination"], m["RW"]) for m in mounts] == [
            (R.volume_name(R.runtime_tag(rec)), rec.mount_path, False)
        ]
    finally:
        backend.destroy(handle)
