"""The `harbor_sandbox` verl agent loop: verl's own tool episode in a fresh sandbox, scored by Harbor's verifier.

Per sample: find the Harbor task from the row (`extra_info.task_path`), lease a fresh sandbox for it from the
harbor_ray pool, and run `ToolAgentLoop`'s token-in/token-out episode (chat template with a bash tool, tool
calls parsed by verl's parser, policy tokens mask 1 and observation tokens mask 0, log-probs kept, turn and
length limits, observation truncation) with every bash call executed in that sandbox. Then the task's tests
run in the same sandbox (Harbor's verifier contract) and `reward_score` is set, so verl skips its reward
workers and puts the score on the last response token. The lease is released in `finally`, also on
cancellation.

Failures: a sandbox that cannot be leased, dies mid-episode or during verification gives a *recorded,
masked* sample (response mask all 0, reward 0, `harbor_failed=1`, `harbor_error` says why), never a crashed
training step. A verifier that times out or writes no valid reward gives reward 0 with `harbor_error` set,
but keeps the mask: the policy may have caused it.

Every sample's `reward_extra_info` has the same keys (verl's batch post-processing requires it):
`harbor_reward`, `harbor_failed`, `harbor_error`, `harbor_rewards` (all reward keys, as JSON),
`harbor_verifier_log`, `harbor/<key>` for each configured `reward_keys` entry (None when absent), and, as in
the `harbor_trial` loop, `harbor_termination` (completed, overlong, verifier_failed, env_setup_failed,
sandbox_lost) and `harbor_masked`. Each reason's policy (`termination_policy`, defaults in
harbor_ray.harbor.outcome) decides reward and mask; the defaults give the behaviour described above.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
from typing import Any

from verl.experimental.agent_loop.agent_loop import AgentLoopMetrics, AgentLoopOutput
from verl.experimental.agent_loop.tool_agent_loop import AgentData, AgentState, ToolAgentLoop

from harbor_ray.backends.base import SandboxSpec
from harbor_ray.errors import HarborRayError, SandboxStartError, TaskError
from harbor_ray.harbor import githistory
from harbor_ray.harbor.outcome import Reason
from harbor_ray.harbor.tail import TailKilled
from harbor_ray.pool import Lease
from harbor_ray.sandbox import Sandbox
from harbor_ray.verl import tails, termination
from harbor_ray.verl.sandboxes import harbor_config, pool_for
from harbor_ray.verl.task import HarborTask, load_task, task_path, task_sandbox_spec
from harbor_ray.verl.tool import BashSession, BashTool
from harbor_ray.verl.verifier import VerifierOutcome, run_verifier

log = logging.getLogger(__name__)


@functools.cache
def _default_bash_tool() -> BashTool:
    """One per process: verl's BaseTool prints its schema when built, and sessions are per call anyway."""
    return BashTool()


class HarborSandboxAgentLoop(ToolAgentLoop):
    """A `ToolAgentLoop` whose tools run in a leased harbor_ray sandbox and whose reward is the Harbor verifier.

    Registered for verl only through `actor_rollout_ref.rollout.agent.agent_loop_config_path` (see
    conf/verl/agent_loop.yaml, name `harbor_sandbox`); the keyword arguments below come from that file. There
    is deliberately no `@register` here: verl imports the class lazily, after loading the YAML, and the
    decorator would then replace the YAML's entry (and its kwargs) with a bare one.

    Args:
        harbor_overrides: harbor_ray config overrides (backend, run_label, pool.*, sandbox.*), as for
            `python -m harbor_ray run`.
        harbor_config_file: or a harbor_ray YAML config file (either layout).
        command_timeout_s: each bash call is killed after this long (the policy sees that it timed out).
        lease_timeout_s: a sample whose sandbox is not ready by then is a recorded failure.
        verifier_timeout_s: 0 -> the task's own `[verifier] timeout_sec`.
        reward_key: the reward key that becomes `reward_score` (Harbor's reward.txt gives `reward`).
        reward_keys: reward keys also logged one by one as `harbor/<key>` (every sample has them).
        task_root: when set, tasks are found at `<task_root>/<extra_info.task_rel>` (nodes that mount the
            task directory elsewhere than the machine that wrote the dataset).

    >>> entry = OmegaConf.load("conf/verl/agent_loop.yaml")[0]  # doctest: +SKIP
    >>> hydra.utils.instantiate(entry, trainer_config=..., server_manager=..., tokenizer=..., ...)  # doctest: +SKIP
    """

    def __init__(
        self,
        *args: Any,
        harbor_overrides: list[str] | tuple[str, ...] = (),
        harbor_config_file: str | None = None,
        command_timeout_s: float = 60.0,
        lease_timeout_s: float = 900.0,
        verifier_timeout_s: float = 0.0,
        reward_key: str = "reward",
        reward_keys: list[str] | tuple[str, ...] = (),
        task_root: str | None = None,
        termination_policy: dict[str, str] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.policy = termination.policy_table(termination_policy)
        self.harbor_cfg = harbor_config([str(o) for o in harbor_overrides or ()], harbor_config_file)
        self.command_timeout_s = float(command_timeout_s)
        self.lease_timeout_s = float(lease_timeout_s)
        self.verifier_timeout_s = float(verifier_timeout_s or self.harbor_cfg.verifier_timeout_s or 0.0)
        self.reward_key = str(reward_key)
        self.reward_keys = [str(k) for k in reward_keys or ()]
        self.task_root = task_root
        if not any(isinstance(tool, BashTool) for tool in self.tools.values()):
            tool = _default_bash_tool()
            self.tools = {**self.tools, tool.name: tool}
            self.tool_schemas = [*self.tool_schemas, tool.tool_schema.model_dump(exclude_unset=True, exclude_none=True)]
        self._bash_names = [name for name, tool in self.tools.items() if isinstance(tool, BashTool)]
        self._session: BashSession | None = None

    async def run(self, sampling_params: dict[str, Any], **kwargs: Any) -> AgentLoopOutput:
        tail = tails.join(self.harbor_cfg)  # first, before any await (see harbor_ray.verl.tails)
        try:
            return await tail.run(self._episode(sampling_params, kwargs))
        except TailKilled as e:  # the episode was cancelled: its lease released, nothing to train on
            return await self._unrun(sampling_params, kwargs, f"tail killed: {e}", Reason.TAIL_KILLED)
        finally:
            tail.finished()

    async def _episode(self, sampling_params: dict[str, Any], kwargs: dict[str, Any]) -> AgentLoopOutput:
        lease: Lease | None = None
        hidden: githistory.HiddenHistory | None = None
        try:
            try:
                task = load_task(task_path(kwargs, self.task_root))
                lease, sandbox = await self._lease(task_sandbox_spec(self.harbor_cfg, task))
                if githistory.wanted(task.path, self.harbor_cfg.sandbox.hide_git_history):
                    limit = self.harbor_cfg.sandbox.download_limit_bytes
                    hidden = await githistory.hide(sandbox, task.workdir or ".", limit_bytes=limit)
            except HarborRayError as e:
                return await self._unrun(
                    sampling_params, kwargs, f"{'task' if isinstance(e, TaskError) else 'sandbox'}: {e}"
                )
            self._session = BashSession(
                sandbox, timeout_s=self.command_timeout_s, cwd=task.workdir, user=task.agent_user, env=task.agent_env
            )
            tools_kwargs = dict(kwargs.get("tools_kwargs") or {})
            for name in self._bash_names:
                tools_kwargs[name] = {**tools_kwargs.get(name, {}), "create_kwargs": {"session": self._session}}
            output = await super().run(sampling_params, **{**kwargs, "tools_kwargs": tools_kwargs})
            if self._session.error:
                return self._masked(output, f"sandbox: {self._session.error}")
            if hidden is not None:
                try:
                    await githistory.restore(sandbox, hidden)
                except HarborRayError as e:
                    return self._masked(output, f"sandbox: {e}")
            return await self._verify(output, sandbox, task)
        finally:
            if hidden is not None:
                hidden.discard()
            if lease is not None:
                await _release(lease)

    async def _handle_processing_tools_state(self, agent_data: AgentData) -> AgentState:
        """verl's tool step; ends the episode as soon as the sandbox is gone."""
        state = await super()._handle_processing_tools_state(agent_data)
        if self._session is not None and self._session.error:
            return AgentState.TERMINATED
        return state

    async def _lease(self, spec: SandboxSpec) -> tuple[Lease, Sandbox]:
        lease = pool_for(self.harbor_cfg).lease(spec)
        try:
            sandbox = await asyncio.wait_for(lease.acquire(), self.lease_timeout_s)
        except TimeoutError as e:
            msg = f"no sandbox within {self.lease_timeout_s:g}s (lease_timeout_s); see the pool's stats and hosts"
            raise SandboxStartError(msg) from e
        return lease, sandbox

    async def _verify(self, output: AgentLoopOutput, sandbox: Sandbox, task: HarborTask) -> AgentLoopOutput:
        try:
            outcome = await run_verifier(sandbox, task, timeout_s=self.verifier_timeout_s or None)
        except HarborRayError as e:
            return self._masked(output, f"verifier: {e}")
        output.metrics.compute_score = outcome.duration_s
        score, error = self._score(outcome)
        if error:
            reason = Reason.VERIFIER_FAILED
        elif len(output.response_mask) >= self.response_length:
            reason = Reason.OVERLONG
        else:
            reason = Reason.COMPLETED
        score, masked = termination.apply(output, reason, score, self.policy)
        output.extra_fields["reward_extra_info"] = self._extra(
            score, failed=False, error=error, outcome=outcome, reason=reason, masked=masked
        )
        log.debug("%s: reward %s after %d turns", task.name, score, output.num_turns)
        return output

    def _score(self, outcome: VerifierOutcome) -> tuple[float, str]:
        if not outcome.ok:
            return 0.0, outcome.error
        rewards = outcome.rewards
        if self.reward_key in rewards:
            return rewards[self.reward_key], ""
        if len(rewards) == 1:
            return next(iter(rewards.values())), ""
        msg = f"the verifier wrote no {self.reward_key!r} reward (keys: {', '.join(sorted(rewards))}); set reward_key"
        return 0.0, msg

    def _masked(self, output: AgentLoopOutput, error: str) -> AgentLoopOutput:
        """Keep the tokens for the record, but train on none of them; reward 0."""
        log.warning("sample masked: %s", error)
        score, masked = termination.apply(output, Reason.SANDBOX_LOST, 0.0, self.policy)
        output.extra_fields["reward_extra_info"] = self._extra(
            score, failed=True, error=error, reason=Reason.SANDBOX_LOST, masked=masked
        )
        return output

    async def _unrun(
        self,
        sampling_params: dict[str, Any],
        kwargs: dict[str, Any],
        error: str,
        reason: Reason = Reason.ENV_SETUP_FAILED,
    ) -> AgentLoopOutput:
        """No (finished) episode: the prompt and one masked end-of-sequence token, reward 0."""
        log.warning("sample not run: %s", error)
        prompt_ids = await self.ct_build_initial_tokens(list(kwargs["raw_prompt"]), tools=self.tool_schemas)
        tokenizer: Any = self.tokenizer
        end = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.pad_token_id
        return AgentLoopOutput(
            prompt_ids=prompt_ids,
            response_ids=[int(end or 0)],
            response_mask=[0],
            response_logprobs=[0.0] if sampling_params.get("logprobs") else None,
            reward_score=0.0,
            num_turns=1,
            metrics=AgentLoopMetrics(),
            extra_fields={
                "turn_scores": [],
                "tool_rewards": [],
                "reward_extra_info": self._extra(0.0, failed=True, error=error, reason=reason, masked=True),
                **termination.weights_versions(kwargs),
            },
        )

    def _extra(
        self,
        score: float,
        *,
        failed: bool,
        error: str,
        reason: Reason,
        masked: bool,
        outcome: VerifierOutcome | None = None,
    ) -> dict:
        rewards = outcome.rewards if outcome is not None else {}
        info: dict[str, Any] = {
            "harbor_reward": float(score),
            "harbor_failed": float(failed),
            "harbor_error": error,
            "harbor_rewards": json.dumps(rewards, sort_keys=True),
            "harbor_verifier_log": outcome.log_tail if outcome is not None else "",
            **termination.extra(reason, masked),
        }
        for key in self.reward_keys:
            info[f"harbor/{key}"] = rewards.get(key)
        return info


async def _release(lease: Lease) -> None:
    """Release even while being cancelled: the release runs on, shielded, and the cancellation propagates."""
    release = asyncio.ensure_future(lease.release())
    try:
        await asyncio.shield(release)
    except asyncio.CancelledError:
        release.add_done_callback(_log_late_release)
        raise
    except HarborRayError as e:
        log.warning("releasing a sandbox failed: %s", e)


def _log_late_release(task: asyncio.Future[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.warning("releasing a sandbox after cancellation failed: %s", task.exception())
