"""Build the project's base images offline, once per machine: there is no registry to pull from.

- `harbor-ray/base:bookworm`: Debian minbase with bash, python3 and coreutils, made by mmdebstrap
  from the Debian archive named in this machine's apt sources, then imported through the SDK.
- `harbor-ray/busybox:latest`: busybox-static and its applet links, for the fastest tests.

Run as `python -m harbor_ray images [--only REF]` (scripts/images.sh). A second run finds both
images by tag and returns at once. `python -m harbor_ray images build tasks=…` prebuilds a dataset's task
images instead (harbor_ray/ops/prebuild.py).
"""

from __future__ import annotations

import argparse
import logging
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from harbor_ray import labels as L
from harbor_ray.backends.images import BASE_IMAGE, BUSYBOX_IMAGE
from harbor_ray.errors import BaseImageError, HarborRayError

log = logging.getLogger(__name__)

SOURCES = (Path("/etc/apt/sources.list.d/debian.sources"), Path("/etc/apt/sources.list"))
SUITE = "bookworm"
BASE_PACKAGES = "bash,python3,coreutils,procps,tmux"  # tmux: Harbor's terminus-2 drives the task in it
PACKAGES_LABEL = "harbor-ray/packages"  # a base image whose label differs from BASE_PACKAGES is rebuilt


def debian_mirror(sources: tuple[Path, ...] = SOURCES) -> str:
    """The Debian archive URI this machine's apt already uses (never hard-coded)."""
    for path in sources:
        if not path.is_file():
            continue
        text = path.read_text()
        for block in re.split(r"\n\s*\n", text):  # deb822 stanzas
            uris = re.search(r"^URIs:\s*(\S+)", block, re.M)
            suites = re.search(r"^Suites:\s*(.+)$", block, re.M)
            if uris and suites and SUITE in suites.group(1).split() and "security" not in uris.group(1):
                return uris.group(1)
        for line in text.splitlines():  # one-line format
            parts = line.split()
            if len(parts) >= 3 and parts[0] == "deb" and parts[2] == SUITE:
                return parts[1]
    msg = f"no '{SUITE}' Debian archive in {', '.join(map(str, sources))}; add one to apt's sources"
    raise BaseImageError(msg)


APT_LOCK_WAIT_S = 600  # another apt/dpkg (unattended-upgrades, a parallel setup) may hold the lock that long


def apt_get(*args: str) -> subprocess.CompletedProcess[str]:
    """apt-get, waiting for the dpkg lock another process holds instead of failing at once (as the k8s
    harness does)."""
    command = ["apt-get", "-o", f"DPkg::Lock::Timeout={APT_LOCK_WAIT_S}", *args]
    return subprocess.run(command, capture_output=True, text=True, check=False)


def _apt_install(package: str, binary: str) -> None:
    if shutil.which(binary):
        return
    log.info("installing %s from Debian's archive", package)
    apt_get("update", "-qq")
    done = apt_get("install", "-y", "-qq", package)
    if done.returncode != 0 or not shutil.which(binary):
        msg = f"apt-get install {package} failed: {done.stderr.strip().splitlines()[-1:]}; install it by hand"
        raise BaseImageError(msg)


def _import(client, tar_path: Path, ref: str, cmd: str, packages: str = "") -> None:
    repo, tag = ref.rsplit(":", 1)
    changes = [f'LABEL {L.KIND}="image" {L.RUN}="base" {PACKAGES_LABEL}="{packages}"', f'CMD ["{cmd}"]']
    # A path (not a stream): the SDK then sends a sized body; chunked bodies are refused by Docker 20.10.
    client.api.import_image(src=str(tar_path), repository=repo, tag=tag, changes=changes)


def build_busybox(client, workdir: Path) -> None:
    _apt_install("busybox-static", "busybox")
    busybox = Path(shutil.which("busybox") or "/bin/busybox")
    root = workdir / "busybox-root"
    (root / "bin").mkdir(parents=True)
    for sub in ("tmp", "etc", "root"):
        (root / sub).mkdir()
    (root / "tmp").chmod(0o1777)
    shutil.copy2(busybox, root / "bin" / "busybox")
    applets = subprocess.run([str(busybox), "--list"], capture_output=True, text=True, check=True).stdout.split()
    for applet in applets:
        if applet != "busybox":
            (root / "bin" / applet).symlink_to("busybox")
    (root / "usr").mkdir()
    (root / "usr" / "bin").symlink_to("../bin")
    (root / "etc" / "passwd").write_text("root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/sh\n")
    (root / "etc" / "group").write_text("root:x:0:\nnogroup:x:65534:\n")
    tar_path = workdir / "busybox.tar"
    subprocess.run(["tar", "-C", str(root), "-cf", str(tar_path), "."], check=True)
    _import(client, tar_path, BUSYBOX_IMAGE, "sh")


def build_base(client, workdir: Path) -> None:
    _apt_install("mmdebstrap", "mmdebstrap")
    tar_path = workdir / "base.tar"
    cmd = [
        "mmdebstrap",
        "--variant=minbase",
        f"--include={BASE_PACKAGES}",
        "--quiet",
        SUITE,
        str(tar_path),
        debian_mirror(),
    ]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        tail = " | ".join(done.stderr.strip().splitlines()[-5:])
        msg = f"mmdebstrap failed: {tail}"
        raise BaseImageError(msg)
    _import(client, tar_path, BASE_IMAGE, "bash", BASE_PACKAGES)


def ensure_base_images(client, which: tuple[str, ...] = (BUSYBOX_IMAGE, BASE_IMAGE)) -> list[str]:
    """Build whichever of the base images is missing; return the ones built."""
    import docker

    builders = {BUSYBOX_IMAGE: build_busybox, BASE_IMAGE: build_base}
    built = []
    for ref in which:
        try:
            image = client.images.get(ref)
            if ref != BASE_IMAGE or (image.labels or {}).get(PACKAGES_LABEL) == BASE_PACKAGES:
                continue
        except docker.errors.ImageNotFound:
            pass
        started = time.monotonic()
        with tempfile.TemporaryDirectory(prefix="harbor-ray-img-") as tmp:
            builders[ref](client, Path(tmp))
        log.info("built %s in %.1fs", ref, time.monotonic() - started)
        built.append(ref)
    return built


def main(argv: list[str]) -> int:
    if argv[:1] == ["build"]:  # the task images' subcommand; no subcommand keeps meaning the base images
        from harbor_ray.ops.prebuild import main as build_main

        return build_main(argv[1:])
    import docker

    parser = argparse.ArgumentParser(
        prog="python -m harbor_ray images", description="Build the project's base images that are missing, offline."
    )
    parser.add_argument("--only", choices=[BUSYBOX_IMAGE, BASE_IMAGE], action="append", help="build just this one")
    args = parser.parse_args(argv)
    built = ensure_base_images(docker.from_env(), tuple(args.only or (BUSYBOX_IMAGE, BASE_IMAGE)))
    print("built: " + ", ".join(built) if built else "base images present")
    return 0


if __name__ == "__main__":  # the old way in, kept working; `python -m harbor_ray images` is the documented one
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        sys.exit(main(sys.argv[1:]))
    except HarborRayError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
