"""Dryrun checks for the Docker backends (local socket or remote TLS daemon), one function per check.

Each check takes the shared `DockerProbe` state and returns a `Check`; a check that needs an earlier
one (everything needs the daemon to answer) is not run after that one failed. `checks(cfg, pod=…)` is
what `harbor_ray.ops.dryrun` calls for every backend of this package.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harbor_ray import labels as L
from harbor_ray.backends.base import DEFAULT_CAP_ADD, SandboxSpec
from harbor_ray.backends.docker.config import DockerBackendConfig
from harbor_ray.backends.docker.endpoint import (
    LOCAL_SOCKET,
    TLS_PORT,
    cert_not_after,
    check_docker_host,
    check_tls_material,
)
from harbor_ray.backends.images import BASE_IMAGE, BUSYBOX_IMAGE
from harbor_ray.config import Config, SandboxConfig
from harbor_ray.errors import HarborRayError
from harbor_ray.ops.dryrun.report import Check, CheckSpec, fail, ok, run_checks, warn

log = logging.getLogger(__name__)

MIN_API_VERSION = (1, 25)  # init=True (a real PID 1) needs 1.25
RISKY_CAPS = {"ALL", "SYS_ADMIN", "NET_ADMIN", "SYS_PTRACE", "SYS_MODULE", "DAC_READ_SEARCH", "NET_RAW", "SYS_RAWIO"}


@dataclass
class DockerProbe:
    """What the Docker checks learn and share: the backend once it answers, and the probe's HostConfig."""

    cfg: Config
    backend: Any = None
    host_config: dict[str, Any] = field(default_factory=dict)

    @property
    def settings(self) -> DockerBackendConfig:
        """The backend section, as the Docker config it is (dryrun runs this module for Docker kinds only)."""
        assert isinstance(self.cfg.backend, DockerBackendConfig)
        return self.cfg.backend


def _docker_dirs_on_path() -> list[tuple[Path, bool]]:
    """Every `docker` package/module on sys.path in import order, and whether it is the docker SDK."""
    found = []
    for entry in sys.path:
        base = Path(entry or os.getcwd())
        pkg, module = base / "docker", base / "docker.py"
        if pkg.is_dir():
            found.append((pkg, (pkg / "__init__.py").is_file() and (pkg / "api" / "client.py").is_file()))
        elif module.is_file():
            found.append((module, False))
    return found


def check_sdk(p: DockerProbe) -> Check:
    """The docker SDK imports and is the real package, not a `docker/` folder earlier on sys.path."""
    candidates = _docker_dirs_on_path()
    sdk = next((path for path, is_sdk in candidates if is_sdk), None)
    try:
        import docker
    except Exception as e:  # a shadowing folder may fail in any way
        where = candidates[0][0] if candidates else None
        return fail(
            f"`import docker` failed: {type(e).__name__}: {str(e)[:150]}",
            f"remove or rename {where}" if where and where != sdk else "pip install 'docker>=7.1'",
        )
    origin = getattr(docker, "__file__", None)
    real = bool(origin) and hasattr(docker, "DockerClient") and hasattr(docker, "__version__")
    if not real or (sdk is not None and Path(str(origin)).parent.resolve() != sdk.resolve()):
        loaded = origin or ", ".join(getattr(docker, "__path__", [])) or "?"
        return fail(
            f"`import docker` loads {loaded}, which is not the docker SDK (a docker/ folder shadows it)",
            f"rename that folder or drop its parent from PYTHONPATH/sys.path; the SDK is at {sdk or 'not installed'}",
        )
    earlier = [str(path) for path, is_sdk in candidates[: [c[0] for c in candidates].index(sdk)]] if sdk else []
    if earlier:
        return warn(
            f"docker {docker.__version__} at {sdk}, but {', '.join(earlier)} comes first on sys.path",
            "rename that folder: it shadows the SDK if the path order changes (e.g. another working dir)",
        )
    return ok(f"docker {docker.__version__} at {Path(str(origin)).parent}")


def check_client_class(p: DockerProbe) -> Check:
    try:
        from docker import DockerClient
        from docker.tls import TLSConfig
    except ImportError as e:
        return fail(f"cannot import docker.DockerClient/TLSConfig: {e}", "pip install 'docker>=7.1'")
    return ok(f"{DockerClient.__module__}.DockerClient and {TLSConfig.__module__}.TLSConfig import")


def check_endpoint(p: DockerProbe) -> Check:
    """TLS mode vs port: a unix socket, or TLS on :2376; :2375 and TLS off refused unless allow_insecure."""
    try:
        endpoint = check_docker_host(p.settings)
        check_tls_material(endpoint)
    except HarborRayError as e:
        return fail(str(e))
    if endpoint.is_local:
        default = "the default " if endpoint.url == LOCAL_SOCKET else ""
        return ok(f"{endpoint.url} ({default}local socket, from {endpoint.origin})")
    port = int(endpoint.url.rsplit(":", 1)[1])
    if endpoint.insecure:
        return warn(
            f"{endpoint.url}: {endpoint.mode} allowed by backend.allow_insecure=true: anyone on that "
            "network has root-equivalent access to the daemon's host",
            "use TLS on :2376 with backend.tls.cert_path, and allow_insecure=false",
        )
    assert endpoint.tls is not None
    ca, cert, _ = endpoint.tls
    expires = _validity(cert)
    note = "" if port == TLS_PORT else f" (TLS on port {port}; Docker's usual TLS port is {TLS_PORT})"
    env_ca = [k for k in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE") if os.environ.get(k)]
    ignored = f"; {'/'.join(env_ca)} ignored" if env_ca else ""
    return ok(
        f"{endpoint.url} {endpoint.mode}{note} (from {endpoint.origin}), CA {ca}, client cert {cert}{expires}{ignored}"
    )


def _validity(cert: str) -> str:
    when = cert_not_after(cert)
    return "" if when is None else f" (valid until {when:%Y-%m-%d}, {(when - dt.datetime.now(dt.UTC)).days} days)"


def check_ping(p: DockerProbe) -> Check:
    from harbor_ray.backends.docker.backend import DockerBackend

    try:
        backend = DockerBackend(p.settings)
        version = backend.ping()
    except HarborRayError as e:
        return fail(str(e))
    p.backend = backend
    return ok(f"Docker {version} at {backend.endpoint.url}")


def check_api_version(p: DockerProbe) -> Check:
    info = p.backend.client.version()
    api = str(info.get("ApiVersion", "0"))
    negotiated = p.backend.client.api.api_version
    platform = f"{info.get('Os')}/{info.get('Arch')}"
    detail = f"API {api} (min {info.get('MinAPIVersion', '?')}), client uses {negotiated}, {platform}"
    if tuple(int(x) for x in api.split(".")[:2]) < MIN_API_VERSION:
        need = ".".join(map(str, MIN_API_VERSION))
        return fail(detail, f"upgrade the daemon: harbor_ray needs API >= {need}")
    return ok(detail)


def check_base_image(p: DockerProbe) -> Check:
    import docker

    try:
        image = p.backend.client.images.get(BASE_IMAGE)
    except docker.errors.ImageNotFound:
        pass
    else:
        size = image.attrs.get("Size", 0) / 1e6
        return ok(f"{BASE_IMAGE} present ({image.short_id}, {size:.0f} MB)")
    how = "scripts/images.sh (python -m harbor_ray images)"
    if not p.backend.endpoint.is_local:
        return fail(
            f"{BASE_IMAGE} is missing on {p.backend.endpoint.url} and nothing can be pulled",
            f"build it on that daemon's host with {how}",
        )
    from harbor_ray.ops.images import debian_mirror

    try:
        mirror = debian_mirror()
    except HarborRayError as e:
        return fail(f"{BASE_IMAGE} is missing and cannot be built here: {e}", "add a Debian bookworm apt source")
    tool = "mmdebstrap" if shutil.which("mmdebstrap") else "mmdebstrap (installed on demand)"
    return warn(
        f"{BASE_IMAGE} is missing; buildable here with {tool} from {mirror} (about 25 s)",
        f"run {how} before a run; tasks start FROM it",
    )


def check_agent_runtime(p: DockerProbe) -> Check:
    """`agent.runtime` built on this daemon (its filled volume is there), or how to build it."""
    import docker

    from harbor_ray.backends.docker import runtime as R

    name = p.cfg.agent.runtime
    if not name:
        return ok("none configured (agent.runtime)")
    try:
        tag = R.runtime_tag(R.recipe(name))
    except HarborRayError as e:
        return fail(str(e), "set agent.runtime to a shipped recipe (docs/verl.md, Agent runtimes)")
    try:
        p.backend.client.volumes.get(R.volume_name(tag) + "-ready")
    except docker.errors.NotFound:
        return warn(
            f"agent runtime {name} ({tag}) is not built on {p.backend.endpoint.url}",
            "run python -m harbor_ray images build agent.runtime=... (else the first sandbox builds it)",
        )
    size = p.backend.client.images.get(tag).attrs.get("Size", 0) / 1e6 if p.backend.client.images.list(tag) else 0
    return ok(f"{name} present ({tag}, {size:.0f} MB), mounted read-only at {R.recipe(name).mount_path}")


def check_sandbox_runtime(p: DockerProbe) -> Check:
    """`sandbox.runtime` registered on the backend's daemon and on every `pool.hosts` url (`docker info`)."""
    from harbor_ray.ops.sandbox_runtime import DEFAULT, docker_answers

    if not p.cfg.sandbox.runtime:
        default = p.backend.client.info().get("DefaultRuntime", "runc")
        return ok(f"{DEFAULT}: {default} at {p.backend.endpoint.url}")
    answers = docker_answers(p.cfg)
    missing = [a for a in answers if not a.ok]
    if missing:
        others = f" ({len(missing) - 1} more daemons too)" if len(missing) > 1 else ""
        return fail(missing[0].detail + others)
    return ok("; ".join(a.detail for a in answers))


def _probe_image(p: DockerProbe) -> str | None:
    import docker

    for ref in (BUSYBOX_IMAGE, BASE_IMAGE):
        try:
            p.backend.client.images.get(ref)
            return ref
        except docker.errors.ImageNotFound:
            continue
    return None


def check_probe(p: DockerProbe) -> Check:
    """Create, exec in and remove a throwaway container (label kind=probe) with the configured hardening."""
    image = _probe_image(p)
    if image is None:
        return fail(f"neither {BUSYBOX_IMAGE} nor {BASE_IMAGE} is on the daemon", "run scripts/images.sh")
    s = p.cfg.sandbox
    spec = SandboxSpec(
        run_label=p.cfg.run_label,
        image=image,
        cpus=min(s.cpus, 1.0),
        memory_mb=s.memory_mb,
        pids_limit=s.pids_limit,
        network=s.network,
        ttl_s=120,
        pool=p.cfg.pool.name,
        cap_add=tuple(s.cap_add),
        read_only_root=s.read_only_root,
        no_new_privileges=s.no_new_privileges,
        labels=((L.KIND, "probe"),),
        runtime=s.runtime,  # the probe runs where a sandbox would: under that runtime
    )
    started = time.monotonic()
    handle = None
    try:
        handle = p.backend.create(spec, image)
        p.host_config = p.backend.client.api.inspect_container(handle.id)["HostConfig"]
        result = p.backend.exec(handle, ["echo", "probe-ok"], timeout_s=30)
    except HarborRayError as e:
        return fail(str(e))
    finally:
        if handle is not None:
            try:
                p.backend.destroy(handle)
            except HarborRayError as e:
                log.warning("could not remove probe %s: %s", handle.name, e)
    if result.return_code != 0 or "probe-ok" not in result.stdout:
        return fail(
            f"exec in {image} returned {result.return_code}: {result.stderr.strip()[:200]}",
            "check the daemon's logs (seccomp/apparmor/cgroups)",
        )
    return ok(f"created, exec'd and removed a {image} sandbox in {time.monotonic() - started:.1f}s")


def check_slots(p: DockerProbe) -> Check:
    """Running sandboxes carrying our run label (any run) vs backend.slots; relays and network holders serve
    sandboxes and take no slot."""
    listed = p.backend.containers({L.RUN: ""}, running_only=True)
    running = [c for c in listed if (c["Labels"] or {}).get(L.KIND) not in L.COMPANION_KINDS]
    mine = sum((c["Labels"] or {}).get(L.RUN) == p.cfg.run_label for c in running)
    slots = p.cfg.backend.slots
    free = slots - len(running)
    detail = f"{max(free, 0)} of backend.slots={slots} free ({len(running)} running, {mine} of {p.cfg.run_label})"
    if free <= 0:
        clean = f"python -m harbor_ray clean --prefix {p.cfg.run_label}"
        return fail(detail, f"wait, remove leftovers ({clean}) or raise backend.slots")
    if p.cfg.pool.max_sandboxes > free:
        return warn(
            f"{detail}; pool.max_sandboxes={p.cfg.pool.max_sandboxes} will queue",
            "lower pool.max_sandboxes or free slots",
        )
    return ok(detail)


def check_hardening(p: DockerProbe) -> Check:
    """The effective sandbox hardening, every non-default `sandbox.*` override named."""
    s, default = p.cfg.sandbox, SandboxConfig()
    overrides = [
        f"sandbox.{f.name}={getattr(s, f.name)!r} (default {getattr(default, f.name)!r})"
        for f in dataclasses.fields(SandboxConfig)
        if getattr(s, f.name) != getattr(default, f.name)
    ]
    hc = p.host_config
    effective = (
        f"privileged={hc.get('Privileged', False)}, cap_drop={hc.get('CapDrop') or ['ALL']}, "
        f"cap_add={hc.get('CapAdd') or list(s.cap_add)}, security_opt={hc.get('SecurityOpt') or []}, "
        f"pids_limit={hc.get('PidsLimit', s.pids_limit)}, memory={hc.get('Memory', s.memory_mb << 20) >> 20}m, "
        f"cpus={s.cpus:g}, read_only_root={hc.get('ReadonlyRootfs', s.read_only_root)}, "
        f"network={hc.get('NetworkMode', 'none' if not s.network else 'bridge')} unless a task allows it, "
        f"runtime={hc.get('Runtime') or 'runc'}, ttl={s.ttl_s}s"
    )
    detail = f"{effective}; overrides: {', '.join(overrides) if overrides else 'none'}"
    risky = []
    if hc.get("Privileged"):
        risky.append("the probe ran privileged")
    if not s.no_new_privileges:
        risky.append("no_new_privileges is off")
    if s.network:
        risky.append("every sandbox gets network")
    extra_caps = sorted(set(s.cap_add) - set(DEFAULT_CAP_ADD))
    if set(extra_caps) & RISKY_CAPS:
        risky.append(f"cap_add grants {', '.join(sorted(set(extra_caps) & RISKY_CAPS))}")
    if risky:
        return warn(f"{'; '.join(risky)} — {detail}", "revert those sandbox.* overrides unless needed")
    return ok(detail)


# (line name, check, names of the checks it needs) in report order
DOCKER_CHECKS: tuple[CheckSpec, ...] = (
    ("docker SDK", check_sdk, ()),
    ("DockerClient", check_client_class, ("docker SDK",)),
    ("TLS / port", check_endpoint, ()),
    ("daemon ping", check_ping, ("DockerClient", "TLS / port")),
    ("API version", check_api_version, ("daemon ping",)),
    ("base image", check_base_image, ("daemon ping",)),
    ("agent runtime", check_agent_runtime, ("daemon ping",)),
    ("sandbox runtime", check_sandbox_runtime, ("daemon ping",)),
    ("probe container", check_probe, ("daemon ping", "sandbox runtime")),
    ("free slots", check_slots, ("daemon ping",)),
    ("hardening", check_hardening, ("probe container",)),  # what a real sandbox got, never guessed
)


def checks(cfg: Config, *, pod: bool) -> list[Check]:
    """The Docker lines of the report; the probe container always runs (it is cheap), whatever `pod` says."""
    return run_checks(DOCKER_CHECKS, DockerProbe(cfg))
