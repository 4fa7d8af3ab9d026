"""`python -m harbor_ray clean [--containers|--pods] [--images] [--orphans] [--dry-run] [--prefix P] [k=v …]`.

Deletes what carries our label `harbor-run=<prefix>`, never anything else. The prefix must be named
(`--prefix P`, or `run_label=P` / a `--config` that sets one): the default run_label is shared by every run
that sets none, so it is never cleaned by accident. An empty or wildcard prefix is refused, and every
object is checked again for the exact label before it is removed. `--orphans` removes only the sandboxes
the reaper proves orphaned (owner process gone on this machine, or TTL passed), so live runs keep theirs.
The sandboxes are the config's backend's (its registry noun names the flag: `--containers`, `--pods`);
images are Docker's and must also carry `harbor-ray/kind=image`; the project's base images
(`harbor-run=base`) go only when `--prefix base` is given explicitly.
"""

from __future__ import annotations

import argparse
import logging
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, cast

from harbor_ray import labels as L
from harbor_ray.backends import REGISTRY, Backend, BackendConfig, entry, make_backend
from harbor_ray.backends.docker.config import DockerBackendConfig
from harbor_ray.config import Config, load_config
from harbor_ray.errors import ConfigError
from harbor_ray.ops.args import add_config_args
from harbor_ray.reaper import reap

if TYPE_CHECKING:
    from harbor_ray.backends.docker.backend import DockerBackend

log = logging.getLogger(__name__)

BASE_PREFIX = "base"  # the label harbor_ray.ops.images puts on the base images


def clean_sandboxes(backend: Backend | BackendConfig, prefix: str, dry_run: bool = False) -> list[str]:
    """Remove (or with dry_run only list) the sandboxes (containers or pods) labeled harbor-run=<prefix>.

    Returns their names. Works over any Backend (or the config of one): the selector picks by label, and
    nothing without our exact label is touched even if a backend's selector were looser.

    >>> clean_sandboxes(DockerBackend(), "my-run", dry_run=True)  # doctest: +SKIP
    ['my-run-3f2a9c1b7e']
    """
    L.check_prefix(prefix, key="prefix")
    if isinstance(backend, BackendConfig):
        backend = make_backend(backend)
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


def _kinds_by_noun() -> dict[str, list[str]]:
    """Each registry noun (container, pod) and the backend kinds whose sandboxes it names."""
    nouns: dict[str, list[str]] = {}
    for e in REGISTRY.values():
        nouns.setdefault(e.noun, []).append(e.kind)
    return nouns


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m harbor_ray clean",
        description="Delete the containers/pods/images labeled harbor-run=<prefix>, and nothing else.",
    )
    kinds_by_noun = _kinds_by_noun()
    for noun, kinds in kinds_by_noun.items():
        parser.add_argument(f"--{noun}s", dest="nouns", action="append_const", const=noun,
                            help=f"{noun}s (the default for backend={'|'.join(kinds)})")  # fmt: skip
    parser.add_argument("--images", action="store_true", help="Docker images built for that prefix")
    parser.add_argument("--dry-run", action="store_true", help="list what would be removed, remove nothing")
    orphans = "only sandboxes whose owner is proven gone or whose TTL passed (live runs keep theirs)"
    parser.add_argument("--orphans", action="store_true", help=orphans)
    parser.add_argument("--prefix", help="the harbor-run label value (default: the config's run_label, if set)")
    args = add_config_args(parser).parse_intermixed_args(argv)
    cfg = load_config(args.overrides, args.config)
    prefix = cfg.run_label if args.prefix is None else args.prefix
    if args.prefix is None and prefix == Config.run_label:
        msg = (
            f"clean: name the run to clean, e.g. --prefix my-run or run_label=my-run (the default {prefix!r} is "
            f"shared by every run that sets none; --prefix {prefix} cleans it)"
        )
        raise ConfigError(msg)
    L.check_prefix(prefix, key="--prefix" if args.prefix is not None else "run_label")
    kind, noun = cfg.backend.kind, entry(cfg.backend.kind).noun
    asked = set(args.nouns or ([] if args.images else [noun]))
    # each flag this backend cannot serve, and the kinds that can
    refused = {f"--{n}s": kinds_by_noun[n] for n in asked if n != noun}
    if args.images and not isinstance(cfg.backend, DockerBackendConfig):
        refused["--images"] = [e.kind for e in REGISTRY.values() if e.config_class is DockerBackendConfig]
    if refused:
        other = "|".join(dict.fromkeys(k for kinds in refused.values() for k in kinds))
        msg = f"{'/'.join(refused)}: the config selects the {kind} backend; select one that has them (backend={other})"
        raise ConfigError(msg)
    verb = "would remove" if args.dry_run else "removed"
    backend = make_backend(cfg.backend)
    found: list[tuple[str, str]] = []
    if noun in asked and args.orphans:
        found += [(noun, name) for name in sorted(reap(backend, prefix, dry_run=args.dry_run))]
    elif noun in asked:
        found += [(noun, name) for name in clean_sandboxes(backend, prefix, args.dry_run)]
        if isinstance(cfg.backend, DockerBackendConfig):  # sandbox networks and forwarders left (docs/network.md)
            from harbor_ray.backends.docker.network import clean_networks

            client = cast("DockerBackend", backend).client
            found += clean_networks(client, prefix, args.dry_run)
    if args.images:
        client = cast("DockerBackend", backend).client
        refs = clean_images(client, prefix, args.dry_run, allow_base=args.prefix == BASE_PREFIX)
        found += [("image", ref) for ref in refs]
    for what, name in found:
        print(f"{verb} {what} {name}")
    print(f"{verb} {len(found)} object(s) labeled {L.RUN}={prefix}" + (" (dry run)" if args.dry_run else ""))
    return 0
