"""Network namespaces as hosts: a private bridge in the root namespace, one veth pair per namespace.

Every name carries the harness instance's id (`hrh` + 5 hex digits), so runs side by side never touch each
other's: bridge `hrhb<id>`, root-side veths `hrhv<id><i>`, namespaces `hrh-<id>-<name>`, and the root
namespace's one iptables rule (commented `hrh-<id>`) that lets the bridge forward between namespaces (this
machine's FORWARD policy is Docker's DROP, and br_netfilter sends bridged frames through it). The subnet is a
free 10.214.N.0/24 (outside the sandbox networks' 10.213.0.0/16: a relay must reach host addresses); the
bridge is .1, host i is .(10 + i).

Enter a namespace with `nsenter --net=/var/run/netns/<name>`, never `ip netns exec` (that remounts /sys
and hides the cgroup mounts dockerd needs).
"""

from __future__ import annotations

import contextlib
import fcntl
import random
import subprocess
from dataclasses import dataclass
from pathlib import Path

from support.procs import HarnessError

PREFIX = "hrh"
NETNS_DIR = Path("/var/run/netns")
_ALLOC_LOCK = Path("/tmp/hrh.lock")


def run(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(list(argv), capture_output=True, text=True, check=False)
    if check and done.returncode != 0:
        msg = f"{' '.join(argv)} failed ({done.returncode}): {done.stderr.strip()[-500:]}"
        raise HarnessError(msg)
    return done


def in_ns(ns: str, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run a command in the network namespace `ns` only (the mount namespace stays the host's)."""
    return run("nsenter", f"--net={NETNS_DIR / ns}", *argv, check=check)


def ns_argv(ns: str, argv: list[str]) -> list[str]:
    """argv run inside the network namespace `ns` (nsenter execs it: same pid, same signals)."""
    return ["nsenter", f"--net={NETNS_DIR / ns}", *argv]


@dataclass
class Member:
    """One namespace on the bridge."""

    ns: str
    veth: str  # the root-side end; down = the host is cut off
    address: str


class Network:
    """The bridge and the namespaces on it; `close()` removes every one of them (and the iptables rule)."""

    def __init__(self, ident: str) -> None:
        self.ident = ident
        self.bridge = f"{PREFIX}b{ident}"
        self.comment = f"{PREFIX}-{ident}"
        self.members: dict[str, Member] = {}
        self._forward_rule = ["FORWARD", "-i", self.bridge, "-o", self.bridge, "-m", "comment",
                              "--comment", self.comment, "-j", "ACCEPT"]  # fmt: skip
        with _allocation_lock():
            self.subnet = _free_subnet()
            self.gateway = f"{self.subnet}.1"
            run("ip", "link", "add", self.bridge, "type", "bridge")
        try:
            run("ip", "addr", "add", f"{self.gateway}/24", "dev", self.bridge)
            run("ip", "link", "set", self.bridge, "up")
            run("iptables", "-I", *self._forward_rule)
        except BaseException:
            self.close()
            raise

    def add(self, name: str, index: int) -> Member:
        ns = f"{PREFIX}-{self.ident}-{name}"
        veth = f"{PREFIX}v{self.ident}{index}"
        member = Member(ns, veth, f"{self.subnet}.{10 + index}")
        self.members[name] = member
        run("ip", "netns", "add", ns)
        run("ip", "link", "add", veth, "type", "veth", "peer", "name", f"{veth}p")
        run("ip", "link", "set", veth, "master", self.bridge, "up")
        run("ip", "link", "set", f"{veth}p", "netns", ns)
        for argv in (
            ["ip", "link", "set", "lo", "up"],
            ["ip", "link", "set", f"{veth}p", "name", "eth0"],
            ["ip", "addr", "add", f"{member.address}/24", "dev", "eth0"],
            ["ip", "link", "set", "eth0", "up"],
            ["ip", "route", "add", "default", "via", self.gateway],
        ):
            in_ns(ns, *argv)
        return member

    def cut(self, name: str) -> None:
        """The host drops off the network (both ways): its root-side veth goes down."""
        run("ip", "link", "set", self.members[name].veth, "down")

    def restore(self, name: str) -> None:
        run("ip", "link", "set", self.members[name].veth, "up")

    def block_port(self, name: str, port: int) -> None:
        """Drop (silently: connections hang) what reaches `port` in the host's namespace."""
        in_ns(self.members[name].ns, "iptables", "-I", "INPUT", "-p", "tcp", "--dport", str(port), "-j", "DROP")

    def unblock_port(self, name: str, port: int) -> None:
        in_ns(self.members[name].ns, "iptables", "-D", "INPUT", "-p", "tcp", "--dport", str(port), "-j", "DROP")

    def close(self) -> None:
        """Remove the namespaces, veths, bridge and rule (each step even if an earlier one failed)."""
        for member in self.members.values():
            run("ip", "netns", "del", member.ns, check=False)
            run("ip", "link", "del", member.veth, check=False)
        self.members.clear()
        run("ip", "link", "del", self.bridge, check=False)
        while run("iptables", "-D", *self._forward_rule, check=False).returncode == 0:
            pass


def sweep(ident: str) -> None:
    """Remove whatever a harness instance `ident` left in the network: namespaces, veths, bridge, rule."""
    prefix = f"{PREFIX}-{ident}-"
    if NETNS_DIR.is_dir():
        for path in NETNS_DIR.iterdir():
            if path.name.startswith(prefix):
                run("ip", "netns", "del", path.name, check=False)
    links = run("ip", "-o", "link", "show", check=False).stdout
    for line in links.splitlines():
        name = line.split(":", 2)[1].strip().split("@")[0] if ":" in line else ""
        if name.startswith((f"{PREFIX}v{ident}", f"{PREFIX}b{ident}")):
            run("ip", "link", "del", name, check=False)
    rules = run("iptables", "-S", "FORWARD", check=False).stdout
    for line in rules.splitlines():
        if f"--comment {PREFIX}-{ident}" in line and line.startswith("-A "):
            run("iptables", "-D", *line[3:].split(), check=False)


def leftover_idents() -> set[str]:
    """Ids of harness instances with something still in the network (namespaces, links, rules)."""
    found: set[str] = set()
    if NETNS_DIR.is_dir():
        found |= {p.name.split("-")[1] for p in NETNS_DIR.iterdir() if p.name.startswith(f"{PREFIX}-")}
    for line in run("ip", "-o", "link", "show", check=False).stdout.splitlines():
        name = line.split(":", 2)[1].strip() if ":" in line else ""
        if name.startswith(f"{PREFIX}b"):
            found.add(name[len(PREFIX) + 1 :])
    for line in run("iptables", "-S", "FORWARD", check=False).stdout.splitlines():
        if f"--comment {PREFIX}-" in line:
            found.add(line.split(f"--comment {PREFIX}-")[1].split()[0])
    return found


@contextlib.contextmanager
def _allocation_lock():  # type: ignore[no-untyped-def]
    with _ALLOC_LOCK.open("a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield


def _free_subnet() -> str:
    """A 10.214.N prefix no address or route on this machine uses yet."""
    used = run("ip", "-4", "addr", check=False).stdout + run("ip", "-4", "route", check=False).stdout
    for n in random.sample(range(256), 256):
        if f"10.214.{n}." not in used:
            return f"10.214.{n}"
    msg = "no free 10.214.N.0/24 subnet for the test hosts' bridge"
    raise HarnessError(msg)
