"""The `harbor_trial` verl agent loop: each sample is a whole Harbor trial, every model call answered by the policy.

Per sample: the task from the row (`extra_info.task_path`), a new session on this process's model gateway
(harbor_ray.verl.gateway), Harbor's `TrialConfig` with the configured agent (terminus-2, claude-code, any
import path) pointed at the session's URL, environment `harbor_ray.harbor.environment:RayEnvironment` on the
cluster's shared pool; `await Trial.create(config)` then `run()`. The reward is the verifier's
(`verifier_result.rewards[reward_key]`). The `AgentLoopOutput` is the session's token record: exactly the ids
`generate` returned (mask 1, their log-probs) and the context between them (mask 0). How the trial ended is
one termination reason (harbor_ray.harbor.outcome) whose policy (train / zero / mask) decides reward and mask.
A trial that fails for infrastructure before the policy's first token (`env_setup_failed`, `sandbox_lost`) is
tried again on a fresh sandbox and session, up to `max_retries` times; the session's main conversation (the one
that began with the task's instruction) is what is trained (harbor_ray.verl.gateway.session).

Agents that run inside the sandbox (installed agents: claude-code, openhands, codex…) reach the gateway
through the sandbox's "gateway only" network (docs/network.md): their URL uses
`gateway.harbor-ray.internal:PORT`, and the sandbox may reach that and nothing else.
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import Any

from verl.experimental.agent_loop.agent_loop import AgentLoopBase, AgentLoopMetrics, AgentLoopOutput

from harbor_ray.backends.egress import GATEWAY_HOSTNAME
from harbor_ray.config import Config
from harbor_ray.errors import TaskError
from harbor_ray.harbor.environment import PoolContext, register_context
from harbor_ray.harbor.outcome import Reason
from harbor_ray.harbor.tail import TailKill, TailKilled
from harbor_ray.verl import tails, termination
from harbor_ray.verl.gateway import Gateway, Record, RewritePolicy, Session, backend_for, process_gateway
from harbor_ray.verl.sandboxes import harbor_config, pool_for
from harbor_ray.verl.task import task_path

log = logging.getLogger(__name__)

ENVIRONMENT = "harbor_ray.harbor.environment:RayEnvironment"
RETRYABLE = (Reason.ENV_SETUP_FAILED, Reason.SANDBOX_LOST)
PHASES = ("environment_setup", "agent_setup", "agent_execution", "verifier")


class HarborTrialMetrics(AgentLoopMetrics):
    """verl's four timings (generate = time in `generate`, tool_calls = the rest of the agent run, compute_score
    = the verifier) plus Harbor's phase times and the gateway's counts, per sample in `meta_info["metrics"]`."""

    environment_setup: float = 0.0
    agent_setup: float = 0.0
    agent_execution: float = 0.0
    verifier: float = 0.0
    gateway_calls: float = 0.0
    gateway_rewrites: float = 0.0


class HarborTrialAgentLoop(AgentLoopBase):
    """A verl agent loop whose episode is Harbor's own `Trial` with a Harbor agent, through the model gateway.

    Registered only through `agent_loop_config_path` (conf/verl/agent_loop.yaml, name `harbor_trial`), like
    `harbor_sandbox`; the keyword arguments below come from that file.

    Args:
        agent: Harbor's agent: `name` (e.g. terminus-2, claude-code) or `import_path`, `model_name` as the agent
            expects it (terminus-2: `hosted_vllm/<name>`), `kwargs`, `env`, `base_url` (Harbor's inference
            endpoint override; unset: the agent's kwargs carry the URL), `in_sandbox` (null: installed agents
            run in the sandbox). In strings of `kwargs`, `env` and `base_url`, `{session_url}` becomes the
            session's URL as the agent reaches it.
        harbor_overrides: harbor_ray config overrides (backend, run_label, pool.*, sandbox.*).
        harbor_config_file: or a harbor_ray YAML config file.
        timeouts: Harbor's `TrialConfig` timeout fields (`timeout_multiplier`, `agent_timeout_multiplier`,
            …) and `agent_timeout_s` / `verifier_timeout_s` overrides.
        reward_key / reward_keys: the reward that becomes `reward_score`; keys also logged as `harbor/<key>`.
        termination_policy: reason -> train | zero | mask, over harbor_ray's defaults.
        rewrite_policy: what a session whose agent rewrote its history gives (`last_segment` or `mask`).
        gateway_host: the address the gateway listens on: `auto` = the Docker bridge address when every sandbox
            is on this node's local daemon (a one-node Ray cluster, no remote daemon), else this Ray node's IP
            (sandboxes on other hosts' daemons reach it through their relay); see `gateway_address`.
        trials_dir: where Harbor writes trial directories.
        task_root: as for `harbor_sandbox`.
        max_retries: tries after the first when the trial fails for infrastructure (`env_setup_failed`,
            `sandbox_lost`) before the policy generated any token: each on a fresh sandbox and session, each
            recorded (`harbor_tries`, `harbor_try_reasons`); never after a token was generated.
        volatile_lines: system-prompt lines (regular expressions) the gateway drops before rendering; null:
            harbor_ray.verl.gateway.messages.VOLATILE_LINES (claude-code's billing header).
    """

    def __init__(
        self,
        *args: Any,
        agent: dict[str, Any] | None = None,
        harbor_overrides: list[str] | tuple[str, ...] = (),
        harbor_config_file: str | None = None,
        timeouts: dict[str, Any] | None = None,
        reward_key: str = "reward",
        reward_keys: list[str] | tuple[str, ...] = (),
        termination_policy: dict[str, str] | None = None,
        rewrite_policy: str = "last_segment",
        gateway_host: str = "auto",
        trials_dir: str = "jobs/verl-trials",
        task_root: str | None = None,
        max_retries: int = 2,
        volatile_lines: list[str] | tuple[str, ...] | None = None,
        **kwargs: Any,
    ) -> None:
        kwargs.pop("tools", None)  # verl passes its tool list to every loop; the Harbor agent brings its own
        super().__init__(*args, **kwargs)
        self.harbor_cfg = harbor_config([str(o) for o in harbor_overrides or ()], harbor_config_file)
        self.agent = dict(agent or {"name": "terminus-2", "model_name": "hosted_vllm/policy"})
        if not (self.agent.get("name") or self.agent.get("import_path")):
            msg = "agent: give agent.name (e.g. terminus-2, claude-code) or agent.import_path (module:Class)"
            raise ValueError(msg)
        self.timeouts = dict(timeouts or {})
        self.reward_key = str(reward_key)
        self.reward_keys = [str(k) for k in reward_keys or ()]
        self.policy = termination.policy_table(termination_policy)
        self.rewrite_policy = RewritePolicy(rewrite_policy)
        self.gateway_host = gateway_host
        self.trials_dir = Path(trials_dir)
        self.task_root = task_root
        if int(max_retries) < 0:
            msg = f"max_retries: {max_retries} is negative; give 0 (no retry) or more"
            raise ValueError(msg)
        self.max_retries = int(max_retries)
        self.volatile_lines = None if volatile_lines is None else tuple(str(v) for v in volatile_lines)

    async def run(self, sampling_params: dict[str, Any], **kwargs: Any) -> AgentLoopOutput:
        tail = tails.join(self.harbor_cfg)  # first, before any await (see harbor_ray.verl.tails)
        try:
            return await self._run(tail, sampling_params, kwargs)
        finally:
            tail.finished()

    async def _run(self, tail: TailKill, sampling_params: dict[str, Any], kwargs: dict[str, Any]) -> AgentLoopOutput:
        gateway = await process_gateway(self._gateway_address())
        model = str(self.agent.get("model_name") or "policy")
        started = time.perf_counter()
        tries: list[dict[str, Any]] = []
        try:
            task_dir: Path | None = task_path(kwargs, self.task_root)
        except TaskError as e:
            task_dir, task_error = None, e
        instruction = _instruction(task_dir)
        while True:
            backend = backend_for(self, sampling_params, model.rsplit("/", 1)[-1], self.volatile_lines)
            session = gateway.open(backend, task=instruction)
            if task_dir is None:
                result, reason, error = None, Reason.ENV_SETUP_FAILED, f"task: {task_error}"
                gateway.close(session)
            else:
                result, reason, error = await self._try(tail, task_dir, gateway, session)
            tries.append({"reason": str(reason), "error": error, "calls": session.calls})
            # Infrastructure failed in a trial that ran (not a config or task error, which a retry would repeat)
            # before the policy's first token: nothing was spent, try a fresh sandbox.
            retryable = result is not None and reason in RETRYABLE and not session.generated_tokens
            if retryable and len(tries) <= self.max_retries:
                log.warning("trial try %d: %s (%s); retrying on a fresh sandbox", len(tries), reason, error)
                continue
            break
        return await self._output(kwargs, session, result, reason, error, time.perf_counter() - started, tries)

    async def _try(self, tail: TailKill, task_dir: Path, gateway: Gateway, session: Session) -> tuple[Any, Reason, str]:
        """One try of the trial on its own session: (Harbor's result or None, the reason, the error)."""
        result: Any = None
        error = ""
        try:
            result = await tail.run(self._run_trial(task_dir, gateway, session))
            info = result.exception_info
            error = f"{info.exception_type}: {info.exception_message.strip()[:300]}" if info else ""
            reason = termination.reason_for_trial(
                info.exception_type if info else None,
                overlong=session.overlong,
                agent_started=result.agent_execution is not None,
            )
        except TailKilled as e:  # Harbor's trial was cancelled: its environment stopped, the sandbox released
            reason, error = Reason.TAIL_KILLED, f"tail killed: {e}"
        except TaskError as e:
            reason, error = Reason.ENV_SETUP_FAILED, f"task: {e}"
        except Exception as e:  # Trial.create failed (agent or task config): a recorded sample, not a dead step
            log.warning("trial not run: %s: %s", type(e).__name__, e)
            reason, error = Reason.ENV_SETUP_FAILED, f"{type(e).__name__}: {str(e).strip()[:300]}"
        finally:
            gateway.close(session)
        return result, reason, error

    # --- the trial ------------------------------------------------------------------------------------

    async def _run_trial(self, task_dir: Path, gateway: Gateway, session: Session) -> Any:
        from harbor.trial.trial import Trial

        config = self._trial_config(task_dir, gateway, session)
        trial = await Trial.create(config)
        return await trial.run()

    def _trial_config(self, task_dir: Path, gateway: Gateway, session: Session) -> Any:
        from harbor.models.trial.config import AgentConfig, EnvironmentConfig, TaskConfig, TrialConfig, VerifierConfig

        in_sandbox = self._in_sandbox()
        host = GATEWAY_HOSTNAME if in_sandbox else gateway.host
        url = f"http://{host}:{gateway.port}/{session.id}"

        def fill(value: Any) -> Any:
            return value.replace("{session_url}", url) if isinstance(value, str) else value

        a = self.agent
        t = self.timeouts
        return TrialConfig(
            task=TaskConfig(path=task_dir),
            trial_name=f"{task_dir.name}__{session.id[:8]}",
            trials_dir=self.trials_dir.resolve(),
            timeout_multiplier=float(t.get("timeout_multiplier", 1.0)),
            agent_timeout_multiplier=t.get("agent_timeout_multiplier"),
            verifier_timeout_multiplier=t.get("verifier_timeout_multiplier"),
            agent_setup_timeout_multiplier=t.get("agent_setup_timeout_multiplier"),
            environment_build_timeout_multiplier=t.get("environment_build_timeout_multiplier"),
            agent=AgentConfig(
                name=a.get("name") if not a.get("import_path") else None,
                import_path=a.get("import_path") or None,
                model_name=a.get("model_name") or None,
                base_url=fill(a.get("base_url")) or None,
                kwargs=self._agent_kwargs(fill),
                env={k: str(fill(v)) for k, v in dict(a.get("env") or {}).items()},
                override_timeout_sec=t.get("agent_timeout_s"),
            ),
            environment=EnvironmentConfig(
                import_path=ENVIRONMENT,
                delete=True,
                kwargs={
                    "pool_key": self._pool_key(),
                    "gateway": f"{gateway.host}:{gateway.port}" if in_sandbox else None,
                },
            ),
            verifier=VerifierConfig(override_timeout_sec=t.get("verifier_timeout_s")),
        )

    def _agent_kwargs(self, fill: Any) -> dict[str, Any]:
        kwargs = {k: fill(v) for k, v in dict(self.agent.get("kwargs") or {}).items()}
        if self.agent.get("name") == "terminus-2" and "model_info" not in kwargs:
            # LiteLLM knows no hosted_vllm model's limits; the rollout's budget is the real one.
            limit = int(self.rollout_config.prompt_length + self.rollout_config.response_length)
            kwargs["model_info"] = {
                "max_input_tokens": limit,
                "max_output_tokens": int(self.rollout_config.response_length),
                "input_cost_per_token": 0.0,
                "output_cost_per_token": 0.0,
            }
        return kwargs

    def _in_sandbox(self) -> bool:
        if self.agent.get("in_sandbox") is not None:
            return bool(self.agent["in_sandbox"])
        from harbor.agents.factory import AgentFactory
        from harbor.agents.installed.base import BaseInstalledAgent
        from harbor.models.trial.config import AgentConfig

        config = AgentConfig(name=self.agent.get("name"), import_path=self.agent.get("import_path"))
        return issubclass(AgentFactory.get_agent_class_from_config(config), BaseInstalledAgent)

    def _pool_key(self) -> str:
        """This event loop's pool, registered for RayEnvironment under a key the TrialConfig names."""
        pool = pool_for(self.harbor_cfg)
        key = f"verl-{self.harbor_cfg.pool.name}-{id(asyncio.get_running_loop()):x}"
        register_context(key, PoolContext(pool, self.harbor_cfg))
        return key

    def _gateway_address(self) -> str:
        if self.gateway_host != "auto":
            return self.gateway_host
        return gateway_address(self.harbor_cfg)

    # --- the sample -----------------------------------------------------------------------------------

    async def _output(
        self,
        kwargs: dict[str, Any],
        session: Session,
        result: Any,
        reason: Reason,
        error: str,
        total_s: float,
        tries: list[dict[str, Any]],
    ) -> AgentLoopOutput:
        record = session.result(self.rewrite_policy)
        if record is None:
            record = await self._empty_record(kwargs, session)
        rewards = dict((result.verifier_result.rewards or {}) if result is not None and result.verifier_result else {})
        score = float(rewards.get(self.reward_key, next(iter(rewards.values()), 0.0) if len(rewards) == 1 else 0.0))
        limit = self.rollout_config.response_length
        output = AgentLoopOutput(
            prompt_ids=record.prompt_ids,
            response_ids=record.response_ids[:limit],
            response_mask=record.response_mask[:limit],
            response_logprobs=record.response_logprobs[:limit] if self._logprobs(kwargs) else None,
            num_turns=2 * record.generations + 1,
            metrics=self._metrics(result, session, total_s),
            extra_fields=termination.weights_versions(kwargs),
        )
        score, masked = termination.apply(output, reason, score, self.policy)
        info: dict[str, Any] = {
            "harbor_reward": score,
            "harbor_failed": float(reason != Reason.COMPLETED),
            "harbor_error": error,
            "harbor_rewards": _json(rewards),
            "harbor_trial_dir": str(self.trials_dir.resolve() / result.trial_name) if result is not None else "",
            **termination.extra(reason, masked),
            "harbor_tries": float(len(tries)),
            "harbor_try_reasons": _json([t["reason"] for t in tries]),
            **record.counts,
        }
        for key in self.reward_keys:
            info[f"harbor/{key}"] = rewards.get(key)
        output.extra_fields["reward_extra_info"] = info
        log.info("trial %s: %s, reward %s, %d calls", info["harbor_trial_dir"], reason, score, session.calls)
        return output

    def _logprobs(self, kwargs: dict[str, Any]) -> bool:
        return bool(self.rollout_config.calculate_log_probs)

    async def _empty_record(self, kwargs: dict[str, Any], session: Session) -> Record:
        """No model call was made (setup failed, or the agent never asked): the prompt and one masked EOS."""
        prompt = await self.ct_build_initial_tokens(list(kwargs.get("raw_prompt") or [{"role": "user", "content": ""}]))
        tokenizer: Any = self.tokenizer
        end = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.pad_token_id
        return Record(prompt, [int(end or 0)], [0], [0.0], 0, session.counts())

    def _metrics(self, result: Any, session: Session, total_s: float) -> HarborTrialMetrics:
        phases = {name: _seconds(getattr(result, name, None)) for name in PHASES} if result is not None else {}
        agent_s = phases.get("agent_execution", 0.0)
        return HarborTrialMetrics(
            generate_sequences=session.generate_s,
            tool_calls=max(agent_s - session.generate_s, 0.0),
            compute_score=phases.get("verifier", 0.0),
            environment_setup=phases.get("environment_setup", 0.0),
            agent_setup=phases.get("agent_setup", 0.0),
            agent_execution=agent_s,
            verifier=phases.get("verifier", 0.0),
            gateway_calls=float(session.calls),
            gateway_rewrites=float(session.rewrites),
        )


def gateway_address(cfg: Config) -> str:
    """Where sandboxes (through their relay) and host-side agents both reach the gateway.

    The Docker bridge address of this node's daemon (e.g. 172.17.0.1, out of other machines' reach) only when
    every sandbox is certainly made by that daemon: a local Docker backend, no remote daemon in `pool.hosts`,
    and a Ray cluster of one node. Otherwise this Ray node's IP, which a relay on another host's daemon routes
    to (a bridge address there names that host's own bridge: the trial's model calls would go nowhere).
    """
    import ray

    if cfg.backend.kind == "docker" and not getattr(cfg.backend, "host", None) and _one_daemon(cfg):
        from harbor_ray.backends import make_backend
        from harbor_ray.backends.docker.network import host_address

        return host_address(make_backend(cfg.backend).client)  # type: ignore[attr-defined]
    return str(ray.util.get_node_ip_address())


def _one_daemon(cfg: Config) -> bool:
    """Can the pool's sandboxes only be on this node's daemon? (Decided per trial: nodes may join later.)"""
    import ray

    remote = [h for h in cfg.pool.hosts or () if str(h.get("url") or "unix://").split(":", 1)[0] != "unix"]
    if remote:
        return False
    return not ray.is_initialized() or sum(1 for node in ray.nodes() if node.get("Alive")) <= 1


def _instruction(task_dir: Path | None) -> str | None:
    """The task's instruction, which tells the session's main conversation from side ones (None: unreadable)."""
    try:
        return (task_dir / "instruction.md").read_text() if task_dir is not None else None
    except OSError:
        return None


def _seconds(timing: Any) -> float:
    if timing is None or timing.started_at is None or timing.finished_at is None:
        return 0.0
    return round((timing.finished_at - timing.started_at).total_seconds(), 3)


def _json(value: Any) -> str:
    import json

    return json.dumps(value, sort_keys=True)
