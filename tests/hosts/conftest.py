"""The several-hosts tier: one `support.hosts.TestHosts` for the tier (two namespace hosts with their own
dockerd and Ray node, and the head with the machine's daemon as host `local`), shared by every module.

`hosts` (per test) puts this process's Ray driver back on the head when another tier's fixture moved it;
`hosts_label` is a run label whose sandboxes, on any host's daemon, fail the test if left at its end.
"""

from __future__ import annotations

import contextlib
import shutil
import uuid
from collections.abc import Iterator

import pytest
from support.gvisor import runsc_wrapper
from support.hosts import TestHosts
from support.procs import HarnessError

from harbor_ray import labels as L


@pytest.fixture(scope="package")
def test_hosts(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestHosts]:
    """Up for this tier's tests only: torn down (Ray driver disconnected too) before the next tier runs."""
    # gVisor registered on h2's daemon when it is installed (test_gvisor.py), with the flags it needs here
    wrapper = str(runsc_wrapper(tmp_path_factory.mktemp("runsc"))) if shutil.which("runsc") else ""
    runtimes = {"h2": {"runsc": wrapper}} if wrapper else {}
    with TestHosts(n=2, slots=2, local_slots=2, runtimes=runtimes) as hosts:
        yield hosts


@pytest.fixture
def hosts(test_hosts: TestHosts) -> TestHosts:
    test_hosts.connect()
    heal(test_hosts)
    return test_hosts


def heal(hosts: TestHosts) -> None:
    """Every test starts from healthy hosts, whatever faults an earlier test left (a failed test may never reach
    its own restore): network up, daemon port open, dockerd thawed and running, the host's Ray node alive."""
    for host in hosts.remote:
        host.restore()
        with contextlib.suppress(HarnessError):
            while True:  # one DROP rule per block_daemon
                host.unblock_daemon()
        if host.dockerd is not None and host.dockerd.running():
            host.thaw_docker()  # SIGCONT: harmless when it was not frozen
        host.start_docker()  # when stopped or killed
        if not hosts.node_alive(host):
            host.start_ray()


def left_on(hosts: TestHosts, label: str) -> dict[str, list[str]]:
    """Containers labeled harbor-run=<label> on each host's daemon (hosts whose daemon is down are skipped)."""
    left: dict[str, list[str]] = {}
    for host in hosts.hosts.values():
        if host.dockerd is not None and not host.dockerd.running():
            continue
        found = host.client(timeout=30).containers.list(all=True, filters={"label": f"{L.RUN}={label}"})
        names = [c.name for c in found]
        if names:
            left[host.name] = names
    return left


@pytest.fixture
def hosts_label(hosts: TestHosts) -> Iterator[str]:
    """A fresh harbor-run label; the test fails if a container with it is left on any host's daemon."""
    label = f"t-{uuid.uuid4().hex[:10]}"
    yield label
    left = left_on(hosts, label)
    for host in hosts.hosts.values():
        for name in left.get(host.name, []):
            host.client().containers.get(name).remove(force=True)
    assert not left, f"test left containers labeled harbor-run={label}: {left}"
