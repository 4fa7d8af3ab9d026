"""Agent runtimes on one Docker daemon: the runtime image built once (the task images' build-once path and cache
key), a labeled volume filled from it once, and the read-only mount each sandbox gets.

The volume is filled by Docker's own copy-up: a container created (never started) from the runtime image with
the empty volume at the tree's path copies the image's tree into it. A `ready` marker volume is made only
after that succeeded, so a half-filled volume (a crash between the two) is emptied and filled again.
Remote daemons (TLS hosts) build their own copy the same way: nothing is copied between hosts.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

from harbor_ray import labels as L
from harbor_ray.backends.images import KeyedLocks
from harbor_ray.runtimes.recipes import RUNTIME_REPO, Recipe, recipe, runtime_tag

if TYPE_CHECKING:
    import docker

log = logging.getLogger(__name__)

__all__ = ["BUILDS", "RUNTIME_REPO", "ensure_runtime", "ensure_runtime_image", "mount", "runtime_tag", "volume_name"]

_LOCKS = KeyedLocks()
BUILDS: dict[str, int] = {}  # runtime image tag -> builds by this process (bench and tests read it)


def volume_name(tag: str) -> str:
    return "harbor-ray-rt-" + tag.removeprefix(RUNTIME_REPO + "-").replace(":", "-")


def _labels(rec: Recipe, tag: str) -> dict[str, str]:
    return {L.KIND: "runtime", L.RUNTIME: rec.name, "harbor-ray/runtime-image": tag}


def ensure_runtime(client: docker.DockerClient, url: str, name: str, build: Any) -> str:
    """The filled volume of runtime `name` on this daemon (built and filled once); `build(context, tag)` builds
    an image from a context as the backend builds task images."""
    import docker.errors

    rec = recipe(name)
    tag = runtime_tag(rec)
    vol = volume_name(tag)
    with _LOCKS.hold(f"{url}|{tag}"):
        try:
            client.volumes.get(vol + "-ready")
            return vol
        except docker.errors.NotFound:
            pass
        _build_once(client, rec, tag, build)
        _fill(client, rec, tag, vol)
    return vol


def ensure_runtime_image(client: docker.DockerClient, url: str, name: str, build: Any) -> str:
    """The image of runtime `name` on this daemon, built once (no volume: for nodes that run this daemon's images,
    which copy the tree themselves, Kubernetes' init container)."""
    rec = recipe(name)
    tag = runtime_tag(rec)
    with _LOCKS.hold(f"{url}|{tag}"):
        _build_once(client, rec, tag, build)
    return tag


def _build_once(client: docker.DockerClient, rec: Recipe, tag: str, build: Any) -> None:
    import docker.errors

    try:
        client.images.get(tag)
    except docker.errors.ImageNotFound:
        started = time.monotonic()
        build(str(rec.context()), tag)
        BUILDS[tag] = BUILDS.get(tag, 0) + 1
        log.info("built agent runtime %s (%s) in %.1fs", rec.name, tag, time.monotonic() - started)


def _fill(client: docker.DockerClient, rec: Recipe, tag: str, vol: str) -> None:
    import docker.errors

    labels = _labels(rec, tag)
    try:  # a volume without its ready marker is left from an interrupted fill: start over
        client.volumes.get(vol).remove(force=True)
    except docker.errors.NotFound:
        pass
    client.volumes.create(vol, labels=labels)
    filler = client.containers.create(
        tag, command=["/none"], labels=labels | {L.KIND: "runtime-filler"}, volumes={vol: {"bind": rec.mount_path}}
    )
    filler.remove(force=True)
    client.volumes.create(vol + "-ready", labels=labels)


def mount(rec_name: str, client: docker.DockerClient, image: str) -> tuple[dict[str, Any], str]:
    """The create() kwargs for the runtime's read-only mount, and the container's PATH: the image's own, then
    the runtime's launchers (the task's own tools keep precedence)."""
    rec = recipe(rec_name)
    vol = volume_name(runtime_tag(rec))
    env = client.api.inspect_image(image)["Config"].get("Env") or []
    path = next((e.split("=", 1)[1] for e in env if e.startswith("PATH=")), "/usr/local/bin:/usr/bin:/bin")
    return {vol: {"bind": rec.mount_path, "mode": "ro"}}, f"{path}:{rec.bin_path}"
