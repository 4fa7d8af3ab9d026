"""Network holders: tiny containers holding a "gateway only" sandbox's network namespace, made ahead of time.

A container on its own bridge network gets a veth pair, which the kernel creates and deletes one at a time: at
RL scale that, not the network's management, is what a "gateway only" sandbox costs over one without network
(docs/network.md). A holder is a container that does nothing (the base image's `sleep`, user nobody, read-only,
no capabilities, 32 MiB) on its own internal network (`network.create_egress`: the shared relays joined), with
the sandbox's /etc/hosts entries and DNS settings: a container in `network_mode=container:<holder>` shares the
holder's network namespace, /etc/hosts, /etc/resolv.conf and hostname (Docker refuses its own for it) and
nothing else (its own pid, mount and ipc namespaces, its own limits).

Each daemon keeps a small stock of ready holders per run and endpoint set (`backend.holder_stock`). A start
claims one with the daemon's container rename as the lock: `<run>-stock-<key>-<id>` becomes
`<run>-held-<key>-<id>`, a name only one claimant can give it (the daemon renames under the container's lock and
refuses a rename to the current name; the old name is then gone, 404). The sandbox joins it, is labeled with
its id, and once it runs the holder is renamed `<sandbox>-net`. A start with the stock empty makes a holder on
the spot, named as a claimed one (never a failure for lack of stock). Each claim has one more made in the
background a second later while the stock is below its size. A holder is never given to a second sandbox:
`destroy` has the daemon end it a second after its sandbox (`release`: sent, not waited for), its network
after it. What a crash leaves is swept (`sweep`): stock whose maker ended or too old to claim, holders whose
sandbox is gone.
"""

from __future__ import annotations

import hashlib
import logging
import random
import threading
import time
import uuid
import weakref
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from harbor_ray import labels as L
from harbor_ray.backends.docker import network as N
from harbor_ray.backends.docker.endpoint import first_line
from harbor_ray.backends.docker.relay import JOINED
from harbor_ray.backends.egress import Endpoint
from harbor_ray.backends.images import BASE_IMAGE
from harbor_ray.errors import SandboxStartError

log = logging.getLogger(__name__)

HOLDER_IMAGE = BASE_IMAGE  # has sleep; built by `python -m harbor_ray images`
STOCK_LIFE_S = 600  # a stock holder older than this is not claimed (it must outlive its sandbox's TTL) but swept
CLAIM_GRACE_S = 120  # a claimed holder may wait this long for its sandbox's container
_LIFE_MARGIN_S = 60  # a holder sleeps TTL + STOCK_LIFE_S + this: past the TTL of any sandbox that claims it
_SEND_S = 0.001  # requests sent, not waited for: the daemon carries through what it has read
_REFILL_DELAY_S = 1.0
LINGER_S = 1  # a released holder ends this long after its sandbox (`release`): after the burst of releases
_MAKER = ThreadPoolExecutor(max_workers=2, thread_name_prefix="harbor-ray-holder-stock")
_HOLDERS: weakref.WeakKeyDictionary[Any, Holders] = weakref.WeakKeyDictionary()
_LOCK = threading.Lock()


_PENDING = N.Pending()


def refills_done(timeout_s: float = 60) -> bool:
    """Wait until this process's stock refills are over (before draining a run's stock); False on timeout."""
    return _PENDING.wait(timeout_s)


def holder_key(endpoints: list[Endpoint], ttl_s: int) -> str:
    """Which sandboxes a holder serves: the same endpoints (names and targets, in order) and TTL."""
    text = "|".join(f"{e.name}={e.host}:{e.port}" for e in endpoints) + f"|{int(ttl_s)}"
    return hashlib.sha256(text.encode()).hexdigest()[:10]


@dataclass
class Holder:
    """A holder this process claimed or made for one sandbox."""

    id: str
    name: str  # its name now: `<run>-held-…` once claimed, `<sandbox>-net` once its sandbox runs
    network: str
    relays: list[str]
    places: list[tuple[Endpoint, str]]  # each endpoint and its relay's address on the holder's network
    run: str
    ttl_s: int


def holders_of(client: Any) -> Holders:
    """This process's view of the holders on the daemon `client` talks to."""
    with _LOCK:
        holders = _HOLDERS.get(client)
        if holders is None:
            holders = _HOLDERS[client] = Holders(client)
        return holders


class Holders:
    """Claims, makes and stocks the holders of one daemon."""

    def __init__(self, client: Any) -> None:
        self.client = client

    def take(
        self, sandbox: str, sandbox_labels: dict[str, str], endpoints: list[Endpoint], ttl_s: int, stock: int
    ) -> Holder:
        """A holder for `sandbox`: claimed from the stock, else made now; the stock is topped up after."""
        run, key = sandbox_labels[L.RUN], holder_key(endpoints, ttl_s)
        holder = self._claim(run, key, endpoints, ttl_s) if stock > 0 else None
        if holder is None:  # named as a claimed one: `settle` renames it for its sandbox once that runs
            holder = self.make(f"{run}-held-{key}-{uuid.uuid4().hex[:8]}", sandbox_labels, endpoints, ttl_s)
        if stock > 0:  # one more made in the background for each taken, while the stock is below its size
            _PENDING.acquire()
            _MAKER.submit(self._refill, key, dict(sandbox_labels), endpoints, ttl_s, stock)
        N.sweep_soon(self.client, run, sweep, "holders", _MAKER)
        return holder

    def settle(self, holder: Holder, sandbox: str) -> None:
        """After the sandbox's start: the holder runs and serves it alone, its relays are on its network
        (made so again when not); SandboxStartError otherwise. Renames it `<sandbox>-net` (not waited for)."""
        info = _inspect(self.client, holder.id)
        if info is None or not info["State"].get("Running"):
            msg = f"network holder {holder.name} of {sandbox} is not running: the sandbox would have no network"
            raise SandboxStartError(msg)
        users = [
            name.lstrip("/")
            for c in self.client.api.containers(all=True, filters={"label": [f"{L.HOLDER}={holder.id}"]})
            for name in c.get("Names") or []
        ]
        if users != [sandbox]:
            msg = f"network holder {holder.name} is shared by {sorted(users)}: refused for {sandbox}"
            raise SandboxStartError(msg)
        relays = N.relays_of(self.client)
        for endpoint, address in holder.places:
            relays.check(holder.run, endpoint, holder.ttl_s, holder.network, address)
        if holder.name != f"{sandbox}-net":
            url = self.client.api._url("/containers/{0}/rename", holder.id)
            N.send(self.client, "post", url, _SEND_S, params={"name": f"{sandbox}-net"})

    def make(self, name: str, sandbox_labels: dict[str, str], endpoints: list[Endpoint], ttl_s: int) -> Holder:
        """Make and start a holder named `name` on a new network of its own, its relays joined; nothing is
        left when this fails (SandboxStartError)."""
        import docker.errors

        run = sandbox_labels[L.RUN]
        base = {k: v for k, v in sandbox_labels.items() if k in {L.RUN, L.OWNER, L.POOL, L.TTL}}
        own = base | {L.CREATED: str(int(time.time())), L.PROCESS: L.process_id()}
        net = N.create_egress(self.client, name, own, endpoints, ttl_s)
        api = self.client.api
        places = list(zip(endpoints, [net.hosts[e.name] for e in endpoints], strict=True))
        labels = own | {L.KIND: "holder", L.HOLDER_KEY: holder_key(endpoints, ttl_s), L.EGRESS_NET: net.network}
        labels[L.RELAYS] = ",".join(net.relays)
        labels |= {JOINED + r: a for r, (_, a) in zip(net.relays, places, strict=True)}
        holder_id = ""
        try:
            created = api.create_container(
                HOLDER_IMAGE,
                name=name,
                entrypoint=["sleep"],
                command=[str(int(ttl_s) + STOCK_LIFE_S + _LIFE_MARGIN_S)],
                hostname="sandbox",
                user="65534:65534",
                labels=labels,
                host_config=api.create_host_config(
                    network_mode=net.network,
                    auto_remove=True,
                    cap_drop=["ALL"],
                    security_opt=["no-new-privileges"],
                    read_only=True,
                    pids_limit=8,
                    mem_limit="32m",
                    nano_cpus=int(1e8),
                    extra_hosts=net.hosts,
                    **N.NO_DNS,
                ),
                networking_config=api.create_networking_config(
                    {net.network: api.create_endpoint_config(ipv4_address=net.address)}
                ),
            )
            holder_id = str(created["Id"])
            api.start(holder_id)
            net.wait()
            net.check()
        except BaseException as e:
            net.wait(quiet=True)
            _remove(self.client, holder_id or name)
            N.remove_egress(self.client, net.network)
            if isinstance(e, docker.errors.ImageNotFound):
                msg = f"network holder {name}: image {HOLDER_IMAGE} missing; build it: `python -m harbor_ray images`"
                raise SandboxStartError(msg) from e
            if isinstance(e, docker.errors.APIError):
                msg = f"network holder {name} did not start: {first_line(e)}"
                raise SandboxStartError(msg) from e
            raise
        return Holder(holder_id, name, net.network, list(net.relays), places, run, int(ttl_s))

    def _claim(self, run: str, key: str, endpoints: list[Endpoint], ttl_s: int) -> Holder | None:
        import docker.errors

        prefix = f"{run}-stock-{key}-"
        found = self._stock(run, key, running_only=True)
        random.shuffle(found)  # claimants racing start at different holders
        for c in found:
            names = [n.lstrip("/") for n in c.get("Names") or []]
            labels = c.get("Labels") or {}
            if not names or not names[0].startswith(prefix) or _age(labels) > STOCK_LIFE_S:
                continue
            held = f"{run}-held-{names[0][len(prefix) - len(key) - 1 :]}"
            try:
                self.client.api.rename(names[0], held)  # the lock: only one claimant can give it this name
            except docker.errors.APIError as e:
                if e.status_code in (400, 404, 409):  # another claimant was first
                    continue
                raise
            relays = [r for r in labels.get(L.RELAYS, "").split(",") if r]
            places = [(e, labels.get(JOINED + r, "")) for e, r in zip(endpoints, relays, strict=False)]
            return Holder(c["Id"], held, labels[L.EGRESS_NET], relays, places, run, int(ttl_s))
        return None

    def fill(
        self, sandbox_labels: dict[str, str], endpoints: list[Endpoint], ttl_s: int, stock: int, at_most: int = 0
    ) -> int:
        """Make stock holders for these sandboxes until the daemon has `stock` of them (at most `at_most` when
        given): before a first burst, or after claims. How many were made."""
        run, key = sandbox_labels[L.RUN], holder_key(endpoints, ttl_s)
        made = 0
        while len(self._stock(run, key)) < stock and (not at_most or made < at_most):
            self.make(f"{run}-stock-{key}-{uuid.uuid4().hex[:8]}", sandbox_labels, endpoints, ttl_s)
            made += 1
        return made

    def _refill(
        self, key: str, sandbox_labels: dict[str, str], endpoints: list[Endpoint], ttl_s: int, stock: int
    ) -> None:
        try:
            time.sleep(_REFILL_DELAY_S)  # after the burst this take is part of, not competing with its creates
            self.fill(sandbox_labels, endpoints, ttl_s, stock, at_most=1)
        except Exception as e:
            log.warning("network holder stock of %s not refilled: %s", sandbox_labels[L.RUN], first_line(e))
        finally:
            _PENDING.release()

    def _stock(self, run: str, key: str, *, running_only: bool = False) -> list[dict[str, Any]]:
        """The stock holders of this run and key on the daemon (claimed ones are renamed out of it)."""
        prefix = f"/{run}-stock-{key}-"
        filters: dict[str, Any] = {"label": [f"{L.RUN}={run}", f"{L.KIND}=holder", f"{L.HOLDER_KEY}={key}"]}
        if running_only:
            filters["status"] = "running"
        found = self.client.api.containers(all=not running_only, filters=filters)
        return [c for c in found if any(n.startswith(prefix) for n in c.get("Names") or [])]


def release(client: Any, holder: str, network: str) -> None:
    """Once the sandbox's container is gone: have the daemon end the holder `LINGER_S` later (a stop with that
    timeout, sent, not waited for: the daemon finishes what it has read; the holder's `sleep`, PID 1, ignores
    the SIGTERM, so the daemon kills it then, and auto-removal removes it), then take the relays off the network
    and remove it in the background (a process that ends first leaves the network, joined by the relays, to the
    next sweep: its holder is gone); the network's own listing says which relays are on it.

    Why the delay: a holder's removal deletes a veth pair, which the kernel serializes (rtnl) with every other
    container's network teardown; sent at once, it slows the removals of the rest of a burst of releases
    (1.4-1.5x a release without network, measured); a second later, it runs after them."""
    url = client.api._url("/containers/{0}/stop", holder)
    N.send(client, "post", url, _SEND_S, params={"t": LINGER_S})
    # the relays are taken off and the network removed once the holder is gone, by a thread (or the next sweep)
    N.drop_later(client, network, after_s=LINGER_S)


def drain(client: Any, prefix: str) -> list[str]:
    """Remove the unclaimed stock of run `prefix` (with its networks), whoever made it: what a run's end (or a
    test's) does; claimed holders stay with their sandboxes. The names removed."""
    L.check_prefix(prefix, key="prefix")
    found = client.api.containers(all=True, filters={"label": [f"{L.RUN}={prefix}", f"{L.KIND}=holder"]})
    stock = [c for c in found if (c.get("Names") or ["/"])[0].lstrip("/").startswith(f"{prefix}-stock-")]
    for c in stock:
        _discard(client, c)
    return sorted((c.get("Names") or ["/"])[0].lstrip("/") for c in stock)


def _discard(client: Any, c: dict[str, Any]) -> None:
    """Remove a listed holder by the name it was listed with, then its network (its relays taken off), waiting
    for both. A holder renamed meanwhile (claimed by a start) is left, and its network with it."""
    import docker.errors

    name = (c.get("Names") or ["/"])[0].lstrip("/")
    try:
        client.api.remove_container(name, force=True)
    except docker.errors.NotFound:
        return  # claimed (renamed) since it was listed, or gone
    except docker.errors.APIError as e:
        if e.status_code != 409:  # 409: its removal is already under way
            raise
    _remove(client, c["Id"])  # wait until it is gone
    network = (c.get("Labels") or {}).get(L.EGRESS_NET, "")
    if network:
        N.remove_egress(client, network)


def _remove(client: Any, ref: str) -> None:
    """Remove a holder and wait until it is gone."""
    N.remove_container(client, ref)


def _inspect(client: Any, ref: str) -> dict[str, Any] | None:
    import docker.errors

    try:
        return dict(client.api.inspect_container(ref))
    except docker.errors.NotFound:
        return None


def _age(labels: dict[str, str]) -> float:
    try:
        return time.time() - int(labels.get(L.CREATED, "0"))
    except ValueError:
        return float("inf")


def orphans(client: Any, prefix: str, grace_s: float = CLAIM_GRACE_S) -> list[dict[str, Any]]:
    """The holders of run `prefix` that serve no sandbox and never will: stock whose maker ended or too old to
    be claimed, holders whose sandbox ran and is gone, holders claimed long ago for a sandbox that never came."""
    run = f"{L.RUN}={prefix}"
    every = client.api.containers(all=True, filters={"label": [run]})
    served = {(c.get("Labels") or {}).get(L.HOLDER) for c in every}
    found = []
    for c in every:
        labels = c.get("Labels") or {}
        if labels.get(L.KIND) != "holder" or labels.get(L.RUN) != prefix or c["Id"] in served:
            continue
        name, age = (c.get("Names") or ["/"])[0].lstrip("/"), _age(labels)
        gone = L.process_gone(labels.get(L.PROCESS, ""))
        if name.startswith(f"{prefix}-stock-"):
            lost = gone or age > STOCK_LIFE_S + grace_s
        elif name.startswith(f"{prefix}-held-"):  # claimed (or made) for a sandbox not started yet
            lost = age > STOCK_LIFE_S + 2 * grace_s  # its claimant's process is known to no label: wait
        else:  # `<sandbox>-net`: renamed once its sandbox ran, which is gone
            lost = True
        if lost:
            found.append(c)
    return found


def sweep(client: Any, prefix: str, *, dry_run: bool = False, grace_s: float | None = None) -> list[str]:
    """Remove (or list) the orphaned holders of run `prefix` with their networks (`orphans`), then the networks
    that serve no container any more (`network.sweep_networks`); the names removed. `grace_s`: how long a
    sandbox's start may take (default: CLAIM_GRACE_S for a holder, network.SWEEP_GRACE_S for a network)."""
    L.check_prefix(prefix, key="prefix")
    swept = []
    for c in orphans(client, prefix, CLAIM_GRACE_S if grace_s is None else grace_s):
        name = (c.get("Names") or ["/"])[0].lstrip("/")
        swept.append(name)
        if dry_run:
            continue
        try:
            _discard(client, c)
        except Exception as e:
            log.warning("network holder %s not removed: %s", name, first_line(e))
    if swept and not dry_run:
        log.info("swept %d network holder(s) of run %s", len(swept), prefix)
    networks = N.sweep_networks(
        client, prefix, dry_run=dry_run, grace_s=N.SWEEP_GRACE_S if grace_s is None else grace_s
    )
    return sorted(swept) + networks


__all__ = ["Holder", "Holders", "drain", "holder_key", "holders_of", "orphans", "refills_done", "release", "sweep"]
