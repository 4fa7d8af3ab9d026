"""`python -m harbor_ray dryrun` (a subprocess, as a user runs it) reports every host of a pool over three
daemons: the TLS ones checked from the driver, each node's own daemon checked on that node; a host whose
daemon is down fails on its own line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

pytestmark = [pytest.mark.hosts, pytest.mark.docker, pytest.mark.ray]

ROOT = Path(__file__).resolve().parents[2]


def dryrun(config: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "DOCKER_HOST", "DOCKER_CERT_PATH")}
    env["PYTHONPATH"] = str(ROOT)
    done = subprocess.run([sys.executable, "-m", "harbor_ray", "dryrun", "--json", "--config", str(config)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)  # fmt: skip
    return json.loads(done.stdout)


def lines(report: dict) -> dict[str, str]:
    return {c["name"]: c["status"] for c in report["checks"]}


def test_dryrun_reports_every_host(hosts, hosts_label, tmp_path) -> None:
    h1, h2 = hosts["h1"], hosts["h2"]
    config = {
        "run_label": hosts_label,
        "ray": {"address": hosts.head_address},
        "backend": {"kind": "docker", "tls": {"cert_path": str(hosts.client_certs)}},
        # local: the head node's daemon; h1 over TLS from here; h2: its Ray node's own daemon, checked there
        # (the machine's daemon runs other runs' sandboxes too: its free slots are counted against 1000)
        "pool": {"hosts": [hosts.local.node_entry(1000), h1.pool_entry(), h2.node_entry()], "max_sandboxes": 6},
    }
    path = tmp_path / "hosts.yaml"
    path.write_text(yaml.safe_dump(config))
    report = dryrun(path)
    got = lines(report)
    for host in ("local", "h1", "h2"):
        for check in ("daemon ping", "base image", "probe container"):
            assert got[f"{host}: {check}"] == "pass", [c for c in report["checks"] if c["status"] != "pass"]
    assert got["h1: free slots"] == got["h2: free slots"] == "pass"
    assert got["local: free slots"] in ("pass", "warn")  # warn: other runs' sandboxes hold some of its slots
    assert got["local: Ray node"] == got["h2: Ray node"] == "pass"
    details = {c["name"]: c["detail"] for c in report["checks"]}
    assert details["h1: daemon ping"].endswith(f"at {h1.tls_url}")
    assert h2.address in details["h2: Ray node"]
    assert details["h2: daemon ping"].endswith(f"at {h2.docker_url}")  # the node's own socket, not this one's
    assert report["ok"] is True, [c for c in report["checks"] if c["status"] == "fail"]
    assert "pool.hosts" not in got  # every url entry has its node's labels

    h1.stop_docker()
    try:
        report = dryrun(path)
    finally:
        h1.start_docker()
    got = lines(report)
    assert got["h1: daemon ping"] == "fail"
    assert got["h2: daemon ping"] == got["local: daemon ping"] == "pass"
    assert report["ok"] is False


def test_dryrun_warns_when_url_hosts_can_take_a_node_local_hosts_units(hosts, hosts_label, tmp_path) -> None:
    loose = {k: v for k, v in hosts["h1"].pool_entry().items() if k != "node_labels"}
    config = {
        "run_label": hosts_label,
        "ray": {"address": hosts.head_address},
        "backend": {"kind": "docker", "tls": {"cert_path": str(hosts.client_certs)}},
        "pool": {"hosts": [hosts.local.node_entry(1000), loose], "sandbox_resource": "sandbox_slot"},
    }
    path = tmp_path / "loose.yaml"
    path.write_text(yaml.safe_dump(config))
    report = dryrun(path)
    [line] = [c for c in report["checks"] if c["name"] == "pool.hosts"]
    assert line["status"] == "warn"
    assert line["detail"].startswith("url hosts h1 have no node_labels"), line
    assert "local count on" in line["detail"]
