"""verl on several hosts: the real AgentLoopWorker as a Ray actor on host h1, its sandboxes on the others' daemons.

As verl's AgentLoopManager does (`ray.remote(AgentLoopWorker)` pinned to a node), the worker runs on h1's Ray
node; its two harbor_ray pools (one per loop, so each spreads its two sandboxes one per host) list the head's
daemon (`local`, a Ray node's own daemon) and h2's daemon (mutual TLS at h2's address), never h1's. Two batches
on that worker at once, only the server manager scripted (tests/verl/verl_harness.py): two `harbor_sandbox`
samples (verl's tool loop, bash in the sandbox) and two `harbor_trial` samples whose agent runs *inside* the
sandbox (tests/verl/agents/gateway_agent.py) on the "gateway only" network: its model calls go through the relay
on the sandbox's daemon to the gateway in the worker on h1, i.e. across hosts. Each must give reward 1; each
daemon's events show where each sandbox was made; each relay targets h1's address; the sandbox reaches the
gateway and not h1's Docker port; nothing is left on any daemon.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
import threading
import time
import uuid
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from support.hosts import HOST_LABEL

from harbor_ray import labels as L
from harbor_ray.backends.docker.network import sweep_networks
from harbor_ray.backends.docker.relay import TARGET

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # the host nodes inherit it: no network for LiteLLM
VERL_TESTS = Path(__file__).resolve().parents[1] / "verl"
sys.path.insert(0, str(VERL_TESTS))

from test_agent_loop import HELLO_OK  # noqa: E402
from test_harbor_trial import INBOX_OK, _batch, _loops, _sample, _worker_config  # noqa: E402
from verl_harness import CONF_VERL, ScriptedServerManager, build_tiny_model  # noqa: E402

pytestmark = [
    pytest.mark.hosts,
    pytest.mark.verl,
    pytest.mark.harbor,
    pytest.mark.gateway,
    pytest.mark.ray,
    pytest.mark.docker,
]

# The worker's import path: tests/verl (the scripted manager's module, the gateway agent) before the node's own
# (verl's wheel installs a package named `tests`, which hides this checkout's tests/ from a fresh process).
WORKER_PATH = os.pathsep.join(str(p) for p in (VERL_TESTS, VERL_TESTS.parents[1], VERL_TESTS.parent))
SANDBOX_HOSTS = ("local", "h2")  # the pools' hosts; the worker is on h1
WORKER_HOST = "h1"


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny-qwen"))


@pytest.fixture
def verl_label(hosts: Any, hosts_label: str) -> Any:
    """`hosts_label`, whose relays and stock of network holders (kept for the run's next "gateway only" sandbox
    on purpose, docs/network.md) go first, as tests/conftest.py's `run_label` does on the local daemon."""
    yield hosts_label
    for host in hosts.hosts.values():
        _end_of_run(host.client(timeout=30), hosts_label)


def _end_of_run(client: Any, label: str) -> None:
    """What a run's end removes on a daemon: the stock of holders (with their networks), the relays."""
    from harbor_ray.backends.docker.holders import drain

    drain(client, label)
    for relay in client.containers.list(all=True, filters={"label": [f"{L.RUN}={label}", f"{L.KIND}=relay"]}):
        relay.remove(force=True)


def _overrides(hosts: Any, label: str, pool: str) -> list[str]:
    """harbor_ray overrides of a pool over the head's daemon and h2's (TLS); `pool.hosts` in Hydra's syntax.

    h2's sandbox actors are kept on h2's node: a TLS host's actors otherwise spread over every node with
    `sandbox_slot`, the head's too, where they would take the units the head's own daemon's actors need.
    """
    entries = ",".join(
        _hydra(hosts[name].pool_entry(slots=2, node_labels={HOST_LABEL: name})) for name in SANDBOX_HOSTS
    )
    return [
        "backend=docker",
        f"+backend.tls.cert_path={hosts.client_certs}",
        f"run_label={label}",
        f"pool.name={pool}-{uuid.uuid4().hex[:8]}",
        "pool.sandbox_resource=sandbox_slot",
        "pool.max_sandboxes=4",
        f"pool.hosts=[{entries}]",
        "sandbox.ttl_s=600",
    ]


def _hydra(value: Any) -> str:
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_hydra(v)}" for k, v in value.items()) + "}"
    return f"'{value}'" if isinstance(value, str) else str(value)


def _loop_config(tmp_path: Path, sandbox_overrides: list[str], trial_overrides: list[str], probe: str) -> Path:
    """The shipped harbor_sandbox loop and the in-sandbox gateway agent's harbor_trial loop, each on its pool."""
    from omegaconf import OmegaConf

    loops = _loops(tmp_path, trial_overrides, probe)
    entries = list(OmegaConf.load(loops))
    entries[1].timeouts = {"agent_timeout_s": 120}  # a loaded 2-core machine: the gateway agent's turns are slow
    entries[1].agent.import_path = "agents.gateway_agent:GatewayAgent"  # see WORKER_PATH
    (sandbox,) = [e for e in OmegaConf.load(CONF_VERL / "agent_loop.yaml") if e.name == "harbor_sandbox"]
    sandbox.harbor_overrides = sandbox_overrides
    OmegaConf.save([*entries, sandbox], loops)
    return loops


class SandboxCreates:
    """Each host's daemon's container creations of run `label`, watched live (a daemon replays only its last
    few hundred events, and a trial makes that many: execs, network joins). `made()` once closed."""

    def __init__(self, hosts: Any, label: str) -> None:
        self.events: dict[str, list[dict[str, Any]]] = {name: [] for name in hosts.hosts}
        filters = {"type": "container", "event": "create", "label": f"{L.RUN}={label}"}
        self.streams = [(h.name, h.client().events(decode=True, filters=filters)) for h in hosts.hosts.values()]
        for name, stream in self.streams:
            threading.Thread(target=self._read, args=(stream, self.events[name]), daemon=True).start()

    @staticmethod
    def _read(stream: Any, into: list[dict[str, Any]]) -> None:
        with contextlib.suppress(Exception):  # the stream closed under the read: the watch is over
            into.extend(stream)

    def close(self) -> None:
        time.sleep(1)  # the last events in flight
        for _, stream in self.streams:
            stream.close()

    def made(self) -> dict[str, dict[str, int]]:
        """Per host, per pool (its name without the unique suffix): sandbox containers made (not relays)."""
        made: dict[str, dict[str, int]] = {}
        for name, events in self.events.items():
            for attrs in (e["Actor"]["Attributes"] for e in events):
                if attrs.get(L.KIND) == "sandbox":
                    pool = attrs[L.POOL].rsplit("-", 1)[0]
                    made.setdefault(name, {}).setdefault(pool, 0)
                    made[name][pool] += 1
        return made


async def test_agent_loop_worker_on_one_host_runs_sandboxes_and_the_gateway_across_hosts(
    hosts, verl_label, tiny_model, tmp_path
):
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
    from verl.experimental.agent_loop.agent_loop import AgentLoopWorker
    from verl.utils import hf_tokenizer

    from harbor_ray.verl.sandboxes import harbor_config, pool_for

    worker_host = hosts[WORKER_HOST]
    sandbox_overrides = _overrides(hosts, verl_label, "verl-sbx")
    trial_overrides = _overrides(hosts, verl_label, "verl-gw")
    loops = _loop_config(tmp_path, sandbox_overrides, trial_overrides, probe=f"{worker_host.address}:2376")
    config = _worker_config(tiny_model, loops, "data.max_prompt_length=4096", "data.max_response_length=4096")
    tokenizer = hf_tokenizer(str(tiny_model))
    manager = ScriptedServerManager(tokenizer, {"<tools>": [HELLO_OK, HELLO_OK], "hello.txt": [INBOX_OK, INBOX_OK]})
    # Two batches at once (verl's post-processing needs one loop's reward_extra_info keys per batch).
    names = {"harbor_sandbox": 2, "gateway_agent": 2}
    view = SimpleNamespace(tokenizer=tokenizer, config=config)
    batches = {name: _batch(view, tmp_path, [name] * n) for name, n in names.items()}
    creates = SandboxCreates(hosts, verl_label)
    worker = (
        ray.remote(AgentLoopWorker)
        .options(
            num_cpus=0,
            scheduling_strategy=NodeAffinitySchedulingStrategy(worker_host.node_id, soft=False),
            runtime_env={"env_vars": {"PYTHONPATH": WORKER_PATH}},
        )
        .remote(config, manager, None, [])
    )
    try:
        outs = await asyncio.gather(*(worker.generate_sequences.remote(b) for b in batches.values()))
    finally:
        ray.kill(worker)
        for overrides in (sandbox_overrides, trial_overrides):
            await pool_for(harbor_config(overrides)).shutdown()
        creates.close()

    samples = {name: [_sample(out, i) for i in range(n)] for (name, n), out in zip(names.items(), outs, strict=True)}
    for name, sample in ((name, s) for name, group in samples.items() for s in group):
        info = sample["info"]
        assert (info["harbor_termination"], info["harbor_reward"], sample["rm"]) == ("completed", 1.0, 1.0), (
            name,
            info.get("harbor_error"),
        )
    # Each pool spread its two sandboxes over its two hosts; h1 (the worker's) made none.
    made = creates.made()
    assert made == {name: {"verl-sbx": 1, "verl-gw": 1} for name in SANDBOX_HOSTS}, made
    # The gateway agents' model calls crossed hosts: each daemon's relay targets the gateway at h1's address,
    # and the sandbox reached that gateway but not another port of the same host.
    targets = set()
    for name in SANDBOX_HOSTS:
        relays = (
            hosts[name]
            .client()
            .containers.list(all=True, filters={"label": [f"{L.RUN}={verl_label}", f"{L.KIND}=relay"]})
        )
        targets |= {r.labels[TARGET] for r in relays}
        assert len(relays) == 1, (name, [r.name for r in relays])
    (target,) = targets
    assert target.rsplit(":", 1)[0] == worker_host.address, target
    for sample in samples["gateway_agent"]:
        probe = json.loads(Path(sample["info"]["harbor_trial_dir"], "agent", "probe.json").read_text())
        assert probe["gateway"] == "reached", probe
        assert probe["other"].startswith("unreachable"), probe
    # Nothing of the run is left once the run's end took its stock of holders and its relays: no sandbox
    # (hosts_label checks). A sandbox's network goes in the background after it; one whose removal the end of
    # its process cut short is left empty for the next sweep (docs/network.md): what is left must be just that.
    for host in hosts.hosts.values():
        _end_of_run(host.client(), verl_label)
    deadline = time.monotonic() + 15
    while any(_networks(h, verl_label) for h in hosts.hosts.values()) and time.monotonic() < deadline:
        await asyncio.sleep(0.5)
    swept = {h.name: sweep_networks(h.client(), verl_label, grace_s=0) for h in hosts.hosts.values()}
    print(f"networks swept after the run's end: {swept}")  # shown with -rP: removals the process end cut short
    left = {h.name: _networks(h, verl_label) for h in hosts.hosts.values() if _networks(h, verl_label)}
    assert not left, f"networks left (swept first: {swept}): {left}"


def _networks(host: Any, label: str) -> list[str]:
    return [n.name for n in host.client().networks.list(filters={"label": f"{L.RUN}={label}"})]
