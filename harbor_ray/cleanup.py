"""`python -m harbor_ray clean [--containers] [--images] [--pods] [--dry-run] [--prefix P] [--config FILE] [k=v …]`.

Deletes what carries our label `harbor-run=<prefix>` (the prefix defaults to the config's run_label),
never anything else: an empty or wildcard prefix is refused, and every object is checked again for the
exact label before it is removed. Images must also carry `harbor-ray/kind=image`; the project's base
images (`harbor-run=base`) go only when `--prefix base` is given explicitly.
"""

from __future__ import annotations

import argparse
import logging
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from harbor_ray import labels as L
from harbor_ray.config import load_config
from harbor_ray.errors import ConfigError

log = logging.getLogger(__name__)

BASE_PREFIX = "base"  # the label harbor_ray.base_images puts on the base images


def clean_sandboxes(backend: Any, prefix: str, dry_run: bool = False) -> list[str]:
    """Remove (or with dry_run only list) the sandboxes (containers or pods) labeled harbor-run=<prefix>.

    Returns their names. Works over any Backend: the selector picks by label, and nothing without our exact
    label is touched even if a backend's selector were looser.

    >>> clean_sandboxes(DockerBackend(), "my-run", dry_run=True)  # doctest: +SKIP
    ['my-run-3f2a9c1b7e']
    """
    L.check_prefix(prefix, key="prefix")
    handles = [h for h in backend.list(L.selector(prefix)) if h.labels.get(L.RUN) == prefix]
    if not dry_run and handles:
        with ThreadPoolExecutor(max_workers=min(8, len(handles))) as pool:
            list(pool.map(backend.destroy, handles))
        log.info("removed %d sandbox(es) labeled %s=%s", len(handles), L.RUN, prefix)
    return sorted(h.name for h in handles)


def clean_images(client: Any, prefix: str, dry_run: bool = False, *, allow_base: bool = False) -> list[str]:
    """Remove (or list) images labeled harbor-run=<prefix> and harbor-ray/kind=image; return their refs.

    An image still used by a container that is not ours is kept (Docker refuses; it is logged).
    `allow_base` must be set to touch the base images (prefix "base").
    """
    import docker

    L.check_prefix(prefix, key="prefix")
    if prefix == BASE_PREFIX and not allow_base:
        msg = f"prefix={BASE_PREFIX}: that removes the project's base images; pass --prefix {BASE_PREFIX} explicitly"
        raise ConfigError(msg)
    images = client.images.list(filters={"label": [f"{L.RUN}={prefix}", f"{L.KIND}=image"]})
    removed: list[str] = []
    for image in images:
        labels = image.labels or {}
        if labels.get(L.RUN) != prefix or labels.get(L.KIND) != "image":
            continue
        refs = list(image.tags) or [image.id]
        if dry_run:
            removed += refs
            continue
        for ref in refs:  # by tag, never forced: the image itself goes with its last tag
            try:
                client.api.remove_image(ref)
            except docker.errors.NotFound:
                continue
            except docker.errors.APIError as e:
                log.warning("kept image %s: %s", ref, e.explanation or e)
                continue
            removed.append(ref)
    return sorted(removed)


def clean_pods(backend_config: Any, prefix: str, dry_run: bool = False) -> list[str]:
    """Delegate to harbor_ray.k8s_ops.clean_pods (imported lazily: the k8s extra is optional)."""
    try:
        from harbor_ray.k8s_ops import clean_pods as k8s_clean_pods
    except ImportError as e:
        msg = f"--pods needs the kubernetes client ({e}); pip install 'harbor-ray[k8s]'"
        raise ConfigError(msg) from e
    return list(k8s_clean_pods(backend_config, prefix, dry_run))


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m harbor_ray clean",
        description="Delete the containers/pods/images labeled harbor-run=<prefix>, and nothing else.",
    )
    parser.add_argument("--containers", action="store_true", help="Docker containers (default for docker backends)")
    parser.add_argument("--images", action="store_true", help="images built for that prefix")
    parser.add_argument("--pods", action="store_true", help="Kubernetes pods (default for the k8s backend)")
    parser.add_argument("--dry-run", action="store_true", help="list what would be removed, remove nothing")
    parser.add_argument("--prefix", help="the harbor-run label value (default: the config's run_label)")
    parser.add_argument("--config", help="a YAML config file (plain or the seed's runtime_info layout)")
    parser.add_argument("overrides", nargs="*", help="key=value overrides, e.g. backend=docker_remote")
    args = parser.parse_intermixed_args(argv)
    cfg = load_config(args.overrides, args.config)
    prefix = cfg.run_label if args.prefix is None else args.prefix
    L.check_prefix(prefix, key="--prefix" if args.prefix is not None else "run_label")
    is_k8s = cfg.backend.kind == "k8s"
    if not (args.containers or args.images or args.pods):
        args.pods, args.containers = is_k8s, not is_k8s
    if (args.containers or args.images) and is_k8s:
        msg = "--containers/--images: the config selects the k8s backend; select a Docker one (backend=docker)"
        raise ConfigError(msg)
    verb = "would remove" if args.dry_run else "removed"
    found: list[tuple[str, str]] = []
    if args.pods:
        found += [("pod", name) for name in clean_pods(cfg.backend, prefix, args.dry_run)]
    if args.containers or args.images:
        from harbor_ray.backends.docker import DockerBackend

        backend = DockerBackend(cfg.backend)
        if args.containers:
            found += [("container", name) for name in clean_sandboxes(backend, prefix, args.dry_run)]
        if args.images:
            refs = clean_images(backend.client, prefix, args.dry_run, allow_base=args.prefix == BASE_PREFIX)
            found += [("image", ref) for ref in refs]
    for kind, name in found:
        print(f"{verb} {kind} {name}")
    print(f"{verb} {len(found)} object(s) labeled {L.RUN}={prefix}" + (" (dry run)" if args.dry_run else ""))
    return 0
