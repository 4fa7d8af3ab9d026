"""Pool logic without an engine: circuit breaker states, host planning and picking, Ray options, reaper rules."""

from __future__ import annotations

import subprocess
import time

import pytest

from harbor_ray import labels as L
from harbor_ray.backends.docker.config import DockerBackendConfig
from harbor_ray.backends.kubernetes.config import K8sBackendConfig
from harbor_ray.config import PoolConfig, check_pool_config, load_config
from harbor_ray.errors import CircuitOpen, ConfigError
from harbor_ray.pool.circuit import CircuitBreaker
from harbor_ray.pool.hosts import (
    NODE_ID_LABEL,
    actor_options,
    bundle,
    configured_hosts,
    has_node,
    node_hosts,
    pick,
)
from harbor_ray.reaper import why_orphaned

pytestmark = pytest.mark.unit


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_circuit_opens_after_threshold_then_allows_one_trial() -> None:
    clock = Clock()
    breaker = CircuitBreaker("h", threshold=3, reset_s=10, clock=clock)
    for _ in range(2):
        breaker.failure("refused")
    assert breaker.state == "closed"
    assert breaker.allow()
    breaker.failure("connection refused")
    assert breaker.state == "open"
    assert not breaker.allow()
    assert not breaker.available()
    error = breaker.error()
    assert isinstance(error, CircuitOpen)
    assert "3 sandbox starts failed in a row" in str(error)
    assert "connection refused" in str(error)
    clock.now += 10
    assert breaker.state == "half_open"
    assert breaker.allow()  # the one trial
    assert not breaker.allow()
    assert not breaker.available()
    breaker.failure("still refused")
    assert breaker.state == "open"  # a failed trial reopens for another reset_s
    clock.now += 10
    assert breaker.allow()
    breaker.success()
    assert breaker.state == "closed"
    assert breaker.failures == 0
    assert breaker.times_opened == 2


def _cfg(**kw: object) -> PoolConfig:
    return PoolConfig(**kw)  # type: ignore[arg-type]


def test_default_local_host_is_pinned_to_the_pool_node() -> None:
    hosts = configured_hosts(DockerBackendConfig(slots=5), _cfg(), pool_node_id="abc")
    assert [(h.name, h.slots, h.selector, h.spread) for h in hosts] == [("local", 5, {NODE_ID_LABEL: "abc"}, False)]
    assert configured_hosts(DockerBackendConfig(), _cfg(sandbox_resource="sandbox_slot"), pool_node_id="x") == []


def test_hosts_list_local_and_remote() -> None:
    cfg = _cfg(
        hosts=[
            {"name": "a", "node_labels": {"rack": "a"}, "slots": 2},
            {"url": "tcp://10.0.0.5:2375", "slots": 7},
        ],
        node_labels={"kind": "cpu"},
    )
    backend = DockerBackendConfig(allow_insecure=True)
    local, remote = configured_hosts(backend, cfg, pool_node_id="n")
    assert (local.name, local.slots, local.selector, local.spread) == ("a", 2, {"rack": "a"}, False)
    assert (remote.name, remote.slots, remote.spread) == ("tcp://10.0.0.5:2375", 7, True)
    assert remote.selector == {"kind": "cpu"}
    assert remote.backend_config.host == "tcp://10.0.0.5:2375"
    opts = actor_options(remote, _cfg(sandbox_resource="sandbox_slot", node_labels={"kind": "cpu"}))
    assert opts == {
        "num_cpus": 0.0,
        "resources": {"sandbox_slot": 1},
        "label_selector": {"kind": "cpu"},
        "scheduling_strategy": "SPREAD",
    }
    assert actor_options(local, _cfg()) == {"num_cpus": 0.0, "label_selector": {"rack": "a"}}


@pytest.mark.parametrize(
    ("entry", "key"),
    [({"nmae": "a"}, "pool.hosts[0].nmae"), ({"slots": -1}, "pool.hosts[0].slots"), ("a", "pool.hosts[0]")],
)
def test_bad_host_entries_name_the_key(entry: object, key: str) -> None:
    with pytest.raises(ConfigError, match=key.replace("[", r"\[").replace("]", r"\]")):
        configured_hosts(DockerBackendConfig(), _cfg(hosts=[entry]), pool_node_id="n")


def test_remote_plaintext_host_is_refused_without_allow_insecure() -> None:
    with pytest.raises(ConfigError, match="refused"):
        configured_hosts(DockerBackendConfig(), _cfg(hosts=[{"url": "tcp://10.0.0.5:2375"}]), pool_node_id="n")


def test_k8s_is_one_spread_host_and_rejects_a_hosts_list() -> None:
    (host,) = configured_hosts(K8sBackendConfig(namespace="rl"), _cfg(max_sandboxes=9), pool_node_id="n")
    assert (host.name, host.slots, host.spread) == ("k8s:rl", 9, True)
    with pytest.raises(ConfigError, match="pool.hosts"):
        configured_hosts(K8sBackendConfig(), _cfg(hosts=[{"slots": 1}]), pool_node_id="n")


def test_node_hosts_and_liveness_follow_the_ray_node_table() -> None:
    nodes = [
        {"NodeID": "n1" * 10, "Alive": True, "Resources": {"sandbox_slot": 3.0}, "Labels": {"rack": "a"}},
        {"NodeID": "n2" * 10, "Alive": True, "Resources": {"GPU": 1.0}, "Labels": {}},
        {"NodeID": "n3" * 10, "Alive": False, "Resources": {"sandbox_slot": 8.0}, "Labels": {}},
    ]
    cfg = _cfg(sandbox_resource="sandbox_slot")
    (host,) = node_hosts(DockerBackendConfig(slots=16), cfg, nodes)
    assert host.slots == 3
    assert host.selector == {NODE_ID_LABEL: "n1" * 10}
    assert has_node(host, cfg, nodes)
    (rack_b,) = configured_hosts(DockerBackendConfig(), _cfg(hosts=[{"node_labels": {"rack": "b"}}]), pool_node_id="")
    assert not has_node(rack_b, cfg, nodes)
    assert bundle(cfg, host) == ({"sandbox_slot": 1.0}, {NODE_ID_LABEL: "n1" * 10})


def test_pick_balances_and_respects_slots_and_circuits() -> None:
    cfg = _cfg(hosts=[{"name": "a", "slots": 2}, {"name": "b", "slots": 4}])
    a, b = configured_hosts(DockerBackendConfig(), cfg, pool_node_id="n")
    a.used, b.used = 1, 1
    assert pick([a, b], room_total=True) is b  # 1/4 < 1/2
    b.used = 3
    assert pick([a, b], room_total=True) is a
    a.used, b.used = 2, 4
    assert pick([a, b], room_total=True) is None  # every slot taken
    a.idle.append("idle-actor")
    assert pick([a, b], room_total=True) is a  # an idle actor already holds its slot
    assert pick([a, b], room_total=True, new_only=True) is None
    a.idle.clear()
    a.used = b.used = 0
    assert pick([a, b], room_total=False) is None  # the pool-wide bound
    for _ in range(5):
        b.circuit.failure("down")
    assert pick([a, b], room_total=True) is a
    assert pick([a, b], room_total=True, avoid={"a"}) is a  # the only one left


def test_pool_numbers_are_checked() -> None:
    with pytest.raises(ConfigError, match=r"pool.start_timeout_s=0"):
        check_pool_config(_cfg(start_timeout_s=0))
    with pytest.raises(ConfigError, match=r"pool.prestart_actors=-1"):
        check_pool_config(_cfg(prestart_actors=-1))


def test_hosts_load_from_hydra_overrides() -> None:
    cfg = load_config(["pool.hosts=[{name: a, node_labels: {rack: a}, slots: 2}]", "pool.node_labels={kind: cpu}"])
    assert cfg.pool.hosts == [{"name": "a", "node_labels": {"rack": "a"}, "slots": 2}]
    assert cfg.pool.node_labels == {"kind": "cpu"}


class Gcs:
    """The GCS answers the reaper needs, as data (the real GCS is used in tests/pool/test_reaper.py)."""

    def __init__(self, dead_actors: set[str] = frozenset(), dead_jobs: set[str] = frozenset(),
                 cluster: str = "c0ffee000000") -> None:  # fmt: skip
        self.dead_actors, self.dead_jobs = dead_actors, dead_jobs
        self.connected, self.cluster = True, cluster

    def actor_dead(self, actor_id: str) -> bool:
        return actor_id in self.dead_actors

    def job_dead(self, job_id: str) -> bool:
        return job_id in self.dead_jobs


def test_reaper_rules() -> None:
    now = time.time()
    base = L.sandbox_labels("run-a", pool="p", owner="c0ffee000000-01000000", ttl_s=100)
    assert why_orphaned(base, "run-a", Gcs(), now) == ""
    assert why_orphaned(base, "run-a", Gcs(), now + 101) == "ttl expired"
    assert why_orphaned(base, "run-b", Gcs(), now + 101) == ""  # not this run's
    assert why_orphaned({L.RUN: "run-a"}, "run-a", Gcs(), now + 10**6) == ""  # no owner, no age: keep
    with_actor = base | {L.ACTOR: "ab12"}
    assert why_orphaned(with_actor, "run-a", Gcs(dead_actors={"ab12"}), now) == "owner actor is dead"
    assert why_orphaned(base, "run-a", Gcs(dead_jobs={"01000000"}), now) == "owner job ended"
    # with an actor label, the actor decides
    assert why_orphaned(with_actor, "run-a", Gcs(dead_jobs={"01000000"}), now) == ""
    # another cluster's job 01000000 is not ours to judge (every fresh cluster's first job has that id)
    assert why_orphaned(base, "run-a", Gcs(dead_jobs={"01000000"}, cluster="0123456789ab"), now) == ""


def test_reaper_takes_sandboxes_of_ended_local_owners() -> None:
    """Made outside Ray (owner `local-<process>`): reaped once that process has ended, kept while it runs."""
    ended = subprocess.Popen(["true"])
    gone = L.process_id(ended.pid)
    ended.wait()
    now = time.time()
    alive = L.sandbox_labels("run-a", pool="p", owner=f"local-{L.process_id()}", ttl_s=100)
    dead = L.sandbox_labels("run-a", pool="p", owner=f"local-{gone}", ttl_s=100)
    assert why_orphaned(alive, "run-a", Gcs(), now) == ""
    assert why_orphaned(dead, "run-a", Gcs(), now) == "owner process is gone"
