"""An agent runtime mounted read-only vs the per-trial install it replaces, interleaved, on the local Docker daemon.

    scripts/python bench/runtime.py [--runtime mini-swe-agent] [--rounds 3]

The floor is what Harbor's installed agent would do in every sandbox if it could reach a registry: install the
agent's packages, here from a local wheel cache (the runtime's own wheels, fetched on the host once, so no
network time is counted: the install is the least it can cost), into a fresh container of the Debian base image
with pip, then start the agent once (`--help`). Against it: a busybox container (no Python) with the runtime's
volume mounted read-only, starting the same agent once. The runtime is built first if it is missing
(`build_s`; 0 when it was already there). Prints one JSON object: `install_s_p50`, `mounted_s_p50`,
`saved_s_p50` (what each agent phase saves), `runtime_size_mb` (the runtime image), `build_s`, `leftovers`.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import uuid

import docker

from harbor_ray.backends import make_backend
from harbor_ray.backends.base import SandboxSpec
from harbor_ray.backends.docker import runtime as R
from harbor_ray.backends.docker.config import DockerBackendConfig
from harbor_ray.backends.images import BASE_IMAGE, BUSYBOX_IMAGE
from harbor_ray.runtimes.recipes import recipe

PIP_IMAGE = "harbor-ray/bench-pip:bookworm"


def _pip_image(client: docker.DockerClient, label: str) -> None:
    """The base image plus pip (built once; a bench image, labeled)."""
    try:
        client.images.get(PIP_IMAGE)
        return
    except docker.errors.ImageNotFound:
        pass
    import io

    dockerfile = (
        f"FROM {BASE_IMAGE}\nRUN apt-get update -qq && apt-get install -y -qq --no-install-recommends python3-pip"
        " >/dev/null && rm -rf /var/lib/apt/lists/*\n"
    )
    # rm/forcerm: the SDK keeps a build's intermediate containers unless told (its default is not the CLI's)
    client.images.build(
        fileobj=io.BytesIO(dockerfile.encode()),
        tag=PIP_IMAGE,
        labels={"harbor-ray/kind": "image"},
        rm=True,
        forcerm=True,
    )


def _run(client: docker.DockerClient, image: str, cmd: str, label: str, **kwargs: object) -> float:
    started = time.monotonic()
    out = client.containers.run(
        image, ["sh", "-c", cmd], remove=True, labels={"harbor-run": label}, network_mode="none", **kwargs
    )
    elapsed = time.monotonic() - started
    if b"Usage" not in out:
        msg = f"{image}: the agent did not start: {out[-300:]!r}"
        raise RuntimeError(msg)
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runtime", default="mini-swe-agent")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    rec = recipe(args.runtime)
    label = f"bench-rt-{uuid.uuid4().hex[:8]}"
    client = docker.from_env(timeout=600)
    backend = make_backend(DockerBackendConfig())
    tag = R.runtime_tag(rec)
    started = time.monotonic()
    had = bool(client.images.list(name=tag))
    backend.ensure_image(SandboxSpec(run_label=label, image=BUSYBOX_IMAGE, agent_runtime=rec.name))
    build_s = 0.0 if had else time.monotonic() - started
    _pip_image(client, label)
    wheels = str(rec.context() / "wheels")
    launcher = rec.launchers[0][0]
    module = rec.launchers[0][1].split(":")[0]
    install = (
        f"python3 -m pip install -q --no-cache-dir --break-system-packages --no-index --find-links /wheels "
        f"--target /tmp/agent {' '.join(rec.packages)} && PYTHONPATH=/tmp/agent python3 -m {module} --help"
    )
    installs, mounted = [], []
    for i in range(args.rounds):
        order = ("install", "mounted") if i % 2 == 0 else ("mounted", "install")
        for which in order:
            if which == "install":
                installs.append(_run(client, PIP_IMAGE, install, label, volumes={wheels: {"bind": "/wheels"}}))
            else:
                volumes = {R.volume_name(tag): {"bind": rec.mount_path, "mode": "ro"}}
                mounted.append(_run(client, BUSYBOX_IMAGE, f"{rec.bin_path}/{launcher} --help", label, volumes=volumes))
    size = client.images.get(tag).attrs["Size"]
    leftovers = len(client.containers.list(all=True, filters={"label": f"harbor-run={label}"}))
    print(
        json.dumps(
            {
                "runtime": rec.name,
                "install_s_p50": round(statistics.median(installs), 2),
                "mounted_s_p50": round(statistics.median(mounted), 2),
                "saved_s_p50": round(statistics.median(installs) - statistics.median(mounted), 2),
                "install_s": [round(x, 2) for x in installs],
                "mounted_s": [round(x, 2) for x in mounted],
                "runtime_size_mb": round(size / 1e6),
                "build_s": round(build_s, 1),
                "leftovers": leftovers,
            }
        )
    )


if __name__ == "__main__":
    main()
