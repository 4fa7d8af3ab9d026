"""Agent runtime recipes: what goes into a self-contained tree at `/opt/harbor-agent/<name>`, as a Docker build.

A recipe renders a build context (a Dockerfile and a build script) whose bytes are its identity: the image is
built through the backend's own `ensure_image`, so a runtime has the task images' cache key (the context's
content hash) and build-once guarantee. The image holds only the tree (`FROM scratch`); sandboxes get it
mounted read-only (docs/verl.md, "Agent runtimes").

The tree carries everything it runs on: the interpreter, its standard library, the packages, every shared
library they load (glibc included) and the dynamic loader. Its launchers (`<tree>/bin/<name>`, POSIX sh) start
the interpreter through that loader with `--library-path`, so nothing of the task image is used but `/bin/sh`
and the kernel, and nothing leaks into the processes the agent starts (no LD_LIBRARY_PATH, no PYTHONHOME).
Supported: Linux task images of the build host's architecture (x86_64 here) with a `/bin/sh`, whatever their
libc (glibc, musl, busybox-static); elsewhere a launcher stops with one line naming the architectures.
"""

from __future__ import annotations

import hashlib
import os
import platform
import shutil
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path

from harbor_ray.errors import ConfigError, ImageBuildError


class RuntimeBuildError(ImageBuildError):
    """A runtime's build could not get what it installs."""


__all__ = ["MOUNT_ROOT", "RECIPES", "RUNTIME_REPO", "Recipe", "recipe", "runtime_tag"]

MOUNT_ROOT = "/opt/harbor-agent"
RUNTIME_REPO = "harbor-ray/runtime"
_BASE = "harbor-ray/base:bookworm"

_PYTHON_BUILD = r"""#!/bin/sh
# Runs in the build stage (Debian bookworm): python3.11 and the packages into $RT, with their shared libraries.
set -eu
RT="$1"; shift
mkdir -p "$RT/usr/bin" "$RT/usr/lib" "$RT/lib" "$RT/bin"
cp /usr/bin/python3.11 "$RT/usr/bin/"
cp -a /usr/lib/python3.11 "$RT/usr/lib/"
rm -rf "$RT/usr/lib/python3.11/test" "$RT/usr/lib/python3.11/idlelib" "$RT/usr/lib/python3.11/tkinter"
# the wheels were fetched on the host (Recipe.context): no registry is needed in the build
python3 -m pip install -q --no-cache-dir --break-system-packages --no-compile --no-index --find-links /recipe/wheels \
  --target "$RT/usr/lib/python3/dist-packages" "$@"
# every shared library the interpreter and the packages' extensions load, and the loader itself
{ echo "$RT/usr/bin/python3.11"; find "$RT" -name '*.so*' -type f; } | while read -r f; do
  ldd "$f" 2>/dev/null | awk '$2 == "=>" && $3 ~ /^\// {print $3} $1 ~ /^\// {print $1}'
done | sort -u | while read -r lib; do
  case "$lib" in "$RT"/*) ;; *) cp -Ln "$lib" "$RT/lib/" ;; esac
done
cp -L "$(ldd /usr/bin/python3.11 | awk '$1 ~ /^\/.*ld-linux/ {print $1}')" "$RT/lib/ld.so"
"$RT/lib/ld.so" --library-path "$RT/lib" "$RT/usr/bin/python3.11" -m compileall -q -j 0 "$RT/usr/lib" || true
"""

_NODE_BUILD = r"""#!/bin/sh
# Runs in the build stage (Debian bookworm, with a registry that serves npm): node and the packages into $RT.
set -eu
RT="$1"; shift
mkdir -p "$RT/usr/bin" "$RT/lib" "$RT/bin" "$RT/node"
cp "$(command -v node)" "$RT/usr/bin/node"
npm install -g --prefix "$RT/node" "$@"
ldd "$RT/usr/bin/node" | awk '$2 == "=>" && $3 ~ /^\// {print $3} $1 ~ /^\// {print $1}' | sort -u \
  | while read -r lib; do cp -Ln "$lib" "$RT/lib/"; done
cp -L "$(ldd "$RT/usr/bin/node" | awk '$1 ~ /^\/.*ld-linux/ {print $1}')" "$RT/lib/ld.so"
"""

_LAUNCHER_HEAD = """#!/bin/sh
# harbor-ray agent runtime {name}: {arch} only; its own loader and libraries, nothing from the task image.
RT={root}
case "$(uname -m)" in {arch}) ;; *)
  echo "harbor-ray runtime {name}: built for {arch}, this sandbox is $(uname -m); build it on a {arch} host" >&2
  exit 126 ;;
esac
"""


@dataclass(frozen=True)
class Recipe:
    """How to build one agent runtime.

    Attributes:
        name: the runtime's name (its tree is `/opt/harbor-agent/<name>`).
        kind: "python" (Debian's python3.11 + PyPI packages) or "node" (node + npm packages).
        packages: what pip or npm installs (pin versions: they are part of the cache key).
        launchers: command name -> what it runs: for python "module:function" (a console script's entry
            point), for node a path under the npm prefix, e.g. "bin/claude".
        apt: Debian packages the build stage needs besides the interpreter.

    >>> recipe("mini-swe-agent").mount_path
    '/opt/harbor-agent/mini-swe-agent'
    """

    name: str
    kind: str
    packages: tuple[str, ...]
    launchers: tuple[tuple[str, str], ...]
    apt: tuple[str, ...] = ()
    notes: str = field(default="", compare=False)

    @property
    def mount_path(self) -> str:
        return f"{MOUNT_ROOT}/{self.name}"

    @property
    def bin_path(self) -> str:
        return f"{self.mount_path}/bin"

    def launcher(self, command: str, target: str, arch: str) -> str:
        head = _LAUNCHER_HEAD.format(name=self.name, arch=arch, root=self.mount_path)
        if self.kind == "python":
            module, func = target.split(":")
            code = f"import sys; sys.argv[0] = {command!r}; from {module} import {func}; sys.exit({func}())"
            return head + f'exec "$RT/lib/ld.so" --library-path "$RT/lib" "$RT/usr/bin/python3.11" -c "{code}" "$@"\n'
        return head + f'exec "$RT/lib/ld.so" --library-path "$RT/lib" "$RT/usr/bin/node" "$RT/node/{target}" "$@"\n'

    def copy_argv(self, into: str) -> list[str]:
        """argv that copies the tree's contents into the directory `into` with the tree's own interpreter (the
        image is `FROM scratch`: no shell, no cp). Modes and symlinks are kept; `into` itself is left as it is
        (an emptyDir's root is not ours to chmod). Kubernetes' init container runs it."""
        rt = self.mount_path
        run = [f"{rt}/lib/ld.so", "--library-path", f"{rt}/lib"]
        if self.kind == "python":
            code = (
                "import os, shutil, sys\n"
                "src, dst = sys.argv[1:3]\n"
                "for n in os.listdir(src):\n"
                "    s, d = os.path.join(src, n), os.path.join(dst, n)\n"
                "    if os.path.isdir(s) and not os.path.islink(s): shutil.copytree(s, d, symlinks=True)\n"
                "    else: shutil.copy2(s, d, follow_symlinks=False)\n"
            )
            return [*run, f"{rt}/usr/bin/python3.11", "-I", "-B", "-c", code, rt, into]
        code = "require('fs').cpSync(process.argv[1], process.argv[2], {recursive: true, verbatimSymlinks: true})"
        return [*run, f"{rt}/usr/bin/node", "-e", code, rt, into]

    def files(self, arch: str | None = None) -> dict[str, str]:
        """The build context: file name -> text. Its bytes are the runtime's identity."""
        arch = arch or platform.machine()
        interpreter = "python3 python3-pip" if self.kind == "python" else "nodejs npm"
        apt = " ".join((interpreter, *self.apt))
        files = {
            "build.sh": _PYTHON_BUILD if self.kind == "python" else _NODE_BUILD,
            "Dockerfile": (
                f"FROM {_BASE} AS build\n"
                f"RUN apt-get update -qq && apt-get install -y -qq --no-install-recommends {apt} >/dev/null\n"
                "COPY . /recipe\n"
                f"RUN sh /recipe/build.sh {self.mount_path} {' '.join(self.packages)}"
                f" && cp /recipe/bin/* {self.bin_path}/ && chmod 755 {self.bin_path}/*\n"
                "FROM scratch\n"
                f'LABEL harbor-ray/runtime="{self.name}"\n'
                f"COPY --from=build {self.mount_path} {self.mount_path}\n"
            ),
        }
        for command, target in self.launchers:
            files[f"bin/{command}"] = self.launcher(command, target, arch)
        return files

    def digest(self) -> str:
        """The recipe's identity (its build files); the runtime image's tag carries it."""
        files = self.files()
        return hashlib.sha256("".join(f"{k}\0{v}\0" for k, v in sorted(files.items())).encode()).hexdigest()

    def context(self, root: Path | None = None) -> Path:
        """Write the build context under `root` (default: ~/.cache/harbor_ray/runtimes) and return it, named by
        the recipe's digest. A python recipe's wheels are fetched here, on the host, with this host's pip
        settings (its index, proxy and CA, `PIP_FIND_LINKS` for a local wheel cache): the build itself needs no
        registry. Written once, atomically (a rename), so concurrent callers share one context."""
        base = root or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "harbor_ray" / "runtimes"
        path = base / f"{self.name}-{self.digest()[:16]}"
        if (path / "Dockerfile").is_file():
            return path
        tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}-{threading.get_ident()}")
        shutil.rmtree(tmp, ignore_errors=True)
        for name, text in self.files().items():
            (tmp / name).parent.mkdir(parents=True, exist_ok=True)
            (tmp / name).write_text(text)
            (tmp / name).chmod(0o755 if name.startswith("bin/") or name.endswith(".sh") else 0o644)
        (tmp / "wheels").mkdir()
        if self.kind == "python":
            self._download_wheels(tmp / "wheels")
        try:
            tmp.rename(path)
        except OSError:  # another process finished the same context first
            shutil.rmtree(tmp, ignore_errors=True)
        return path

    def _download_wheels(self, into: Path) -> None:
        arch = platform.machine()
        platforms = [f"manylinux_2_{v}_{arch}" for v in (36, 35, 34, 31, 28, 17)] + [f"manylinux2014_{arch}"]
        cmd = [sys.executable, "-m", "pip", "download", "-q", "--only-binary=:all:", "--python-version", "3.11"]
        cmd += ["--implementation", "cp", "--abi", "cp311", "-d", str(into)]
        cmd += [arg for p in platforms for arg in ("--platform", p)]
        done = subprocess.run([*cmd, *self.packages], capture_output=True, text=True, check=False)
        if done.returncode != 0:
            tail = (done.stderr or done.stdout).strip().splitlines()
            msg = f"agent runtime {self.name}: fetching its wheels failed: {tail[-1] if tail else done.returncode}"
            raise RuntimeBuildError(msg)


def runtime_tag(rec: Recipe) -> str:
    """The runtime's image, named by the recipe's digest: the same recipe is the same tag on every host."""
    return f"{RUNTIME_REPO}-{rec.name}:{rec.digest()[:20]}"


RECIPES: dict[str, Recipe] = {
    "mini-swe-agent": Recipe(
        name="mini-swe-agent",
        kind="python",
        packages=("mini-swe-agent==2.4.6",),
        launchers=(("mini-swe-agent", "minisweagent.run.mini:app"), ("mini", "minisweagent.run.mini:app")),
        notes="built and run here (PyPI)",
    ),
    "claude-code": Recipe(
        name="claude-code",
        kind="node",
        packages=("@anthropic-ai/claude-code@2.0.0",),
        launchers=(("claude", "lib/node_modules/@anthropic-ai/claude-code/cli.js"),),
        notes="needs a host that reaches the npm registry; not built here",
    ),
}


def recipe(name: str) -> Recipe:
    """The shipped recipe of that name; ConfigError naming the choices otherwise."""
    if name not in RECIPES:
        msg = f"agent.runtime={name!r}: no such runtime recipe; choose one of {', '.join(sorted(RECIPES))}"
        raise ConfigError(msg)
    return RECIPES[name]
