"""Run Harbor trials on the sandbox pool: `python -m harbor_ray run tasks=… agent=oracle n_concurrent=…`.

Each trial is Harbor's own `Trial.create(config)` / `trial.run()` with harbor_ray's RayEnvironment,
so every trial gets a fresh sandbox owned by a Ray actor. Results go to Harbor's trial directories
plus one `results.jsonl` line per try of a trial, with its termination reason (`outcome.Reason`) and try
number; a trial that errors is recorded with its error, never lost. A trial that failed for the
infrastructure's sake (`outcome.INFRASTRUCTURE`) is tried again on a fresh sandbox, up to `max_retries`
times; with `tail_kill_target < 1` the stragglers of the batch are ended (`tail.TailKill`). Ctrl-C or
SIGTERM cancels the trials (each recorded `cancelled`); each stops its environment, and a final sweep by
owner label removes whatever is left. The command's front (checks before Ray starts) is
`harbor_ray.ops.preflight`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import time
import tomllib
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import ray
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from harbor_ray import labels as L
from harbor_ray.backends import make_backend
from harbor_ray.config import Config
from harbor_ray.errors import HarborRayError
from harbor_ray.harbor.environment import PoolContext, register_context, unregister_context
from harbor_ray.harbor.outcome import INFRASTRUCTURE, Reason, reason_for
from harbor_ray.harbor.report import (
    TrialRecord,
    append_jsonl,
    one_line,
    print_summary,
    progress_text,
    reason_counts,
    record_from_result,
)
from harbor_ray.harbor.spec import discover_tasks
from harbor_ray.harbor.tail import TailKill, TailKilled
from harbor_ray.pool import SandboxPool

log = logging.getLogger(__name__)


def ensure_ray(cfg: Config) -> None:
    if ray.is_initialized():
        return
    address = cfg.ray.address or os.environ.get("RAY_ADDRESS") or "local"
    kwargs: dict[str, Any] = {"address": address, "log_to_driver": False}
    if address == "local":
        kwargs |= {"include_dashboard": False}
        if cfg.ray.num_cpus:
            kwargs["num_cpus"] = cfg.ray.num_cpus
        if cfg.pool.sandbox_resource:  # a local Ray must offer what sandbox actors ask for
            kwargs["resources"] = {cfg.pool.sandbox_resource: cfg.pool.max_sandboxes}
    ray.init(**kwargs)


def _task_agent_timeout(task_dir: Path) -> float | None:
    """The task's own [agent] timeout_sec (None when it gives none)."""
    from harbor.models.task.config import TaskConfig as HarborTaskConfig

    data = tomllib.loads((task_dir / "task.toml").read_text())
    timeout = HarborTaskConfig.model_validate(data).agent.timeout_sec
    return None if timeout is None else float(timeout)


def trial_config(cfg: Config, task_dir: Path, job_dir: Path, pool_key: str, trial_name: str = "") -> Any:
    """Harbor's TrialConfig for one try. Every phase is bounded: Harbor bounds the build, the agent setup
    and the verifier itself; an agent phase whose task gives no [agent] timeout_sec gets
    `agent.default_timeout_s` (Harbor would let it run until the sandbox's TTL)."""
    from harbor.models.trial.config import AgentConfig, EnvironmentConfig, TaskConfig, TrialConfig, VerifierConfig

    agent = cfg.agent
    override = agent.override_timeout_s or None
    if override is None and _task_agent_timeout(task_dir) is None:
        override = agent.default_timeout_s
    return TrialConfig(
        task=TaskConfig(path=task_dir),
        trial_name=trial_name or f"{task_dir.name}__{uuid.uuid4().hex[:7]}",
        trials_dir=job_dir,
        agent_timeout_multiplier=agent.timeout_multiplier,
        agent_setup_timeout_multiplier=agent.setup_timeout_multiplier,
        verifier_timeout_multiplier=cfg.verifier_timeout_multiplier,
        environment_build_timeout_multiplier=cfg.build_timeout_multiplier,
        agent=AgentConfig(
            name=None if agent.import_path else agent.name,
            import_path=agent.import_path or None,
            model_name=agent.model_name or None,
            # an agent runtime mounted in the sandbox: Harbor's installed agent skips its own install
            kwargs={"skip_install": True, **agent.kwargs} if agent.runtime else dict(agent.kwargs),
            env={k: str(v) for k, v in dict(agent.env).items()},
            override_timeout_sec=override,
            max_timeout_sec=agent.max_timeout_s or None,
        ),
        environment=EnvironmentConfig(
            import_path=cfg.environment_import_path,
            force_build=cfg.force_build,
            delete=cfg.delete,
            kwargs={"pool_key": pool_key},
        ),
        verifier=VerifierConfig(override_timeout_sec=cfg.verifier_timeout_s or None, disable=not cfg.verifier_enabled),
    )


class Attempt:
    """One try of one trial: its Harbor Trial once created, so a cancelled try can still be recorded."""

    def __init__(self, task_dir: Path, trial_name: str, try_number: int) -> None:
        self.task_dir = task_dir
        self.trial_name = trial_name
        self.try_number = try_number
        self.trial: Any = None
        self.trial_dir: Path | None = None

    def record(self, reason: Reason | None = None, error: BaseException | None = None) -> TrialRecord:
        """The try's record from Harbor's result (complete once the trial finalized), or a bare one."""
        trial = self.trial
        result = getattr(trial, "result", None) if trial is not None else None
        if result is not None and getattr(result, "trial_name", None):
            env = getattr(trial, "agent_environment", None)
            record = record_from_result(result, sandbox=getattr(env, "last_sandbox", None), trial_dir=self.trial_dir)
        else:
            record = TrialRecord(task=self.task_dir.name, trial=self.trial_name)
        if error is not None:
            record.error = type(error).__name__
            record.error_message = one_line(str(error))
        record.reason = (reason or (reason_for(record.error) if error is not None else Reason(record.reason))).value
        record.try_number = self.try_number
        return record


async def run_one(cfg: Config, attempt: Attempt, job_dir: Path, pool_key: str) -> TrialRecord:
    """One Harbor trial. Never raises for the trial's own failures: they become the record's error."""
    from harbor.trial.trial import Trial

    config = trial_config(cfg, attempt.task_dir, job_dir, pool_key, attempt.trial_name)
    attempt.trial_dir = job_dir / config.trial_name
    try:
        attempt.trial = await Trial.create(config)
        await attempt.trial.run()
    except Exception as e:  # Harbor records most failures itself; this catches create-time ones
        record = attempt.record()
        return record if record.error else attempt.record(error=e)
    return attempt.record()


class Batch:
    """One run's trials: tries, retries, tail kill, records in results.jsonl, progress."""

    def __init__(self, cfg: Config, job_dir: Path, pool_key: str, total: int, on_record: Callable[[], None]) -> None:
        self.cfg = cfg
        self.job_dir = job_dir
        self.pool_key = pool_key
        self.results_path = job_dir / "results.jsonl"
        self.records: list[TrialRecord] = []
        self.gate = asyncio.Semaphore(cfg.n_concurrent)
        self.tail = TailKill(
            total, target=cfg.tail_kill_target, grace_s=cfg.tail_kill_grace_s, min_tasks=cfg.tail_kill_min_tasks
        )
        self.running = 0
        self._on_record = on_record

    def add(self, record: TrialRecord) -> None:
        self.records.append(record)
        append_jsonl(self.results_path, record)
        log.info(
            "trial %s: reward=%s rewards=%s reason=%s try=%d error=%s",
            record.trial,
            record.reward,
            record.rewards,
            record.reason,
            record.try_number,
            record.error,
        )
        self._on_record()

    async def trial(self, task_dir: Path) -> None:
        """Every try of one trial (a fresh sandbox each), ended by the tail kill or a cancellation."""
        base = f"{task_dir.name}__{uuid.uuid4().hex[:7]}"
        attempt = Attempt(task_dir, base, 1)
        try:
            for try_number in range(1, self.cfg.max_retries + 2):
                name = base if try_number == 1 else f"{base}__try{try_number}"
                attempt = Attempt(task_dir, name, try_number)
                record = await self.tail.run(self._try(attempt))
                self.add(record)
                if Reason(record.reason) not in INFRASTRUCTURE or try_number > self.cfg.max_retries:
                    break
                log.warning(
                    "trial %s: %s (%s); retrying on a fresh sandbox (try %d of %d)",
                    name,
                    record.reason,
                    record.error,
                    try_number + 1,
                    self.cfg.max_retries + 1,
                )
        except TailKilled as e:
            self.add(attempt.record(Reason.TAIL_KILLED, e))
        except asyncio.CancelledError:
            self.add(attempt.record(Reason.CANCELLED))
            raise
        finally:
            self.tail.finished()
            self._on_record()

    async def _try(self, attempt: Attempt) -> TrialRecord:
        async with self.gate:
            self.running += 1
            self._on_record()
            try:
                return await run_one(self.cfg, attempt, self.job_dir, self.pool_key)
            finally:
                self.running -= 1


async def run_trials(
    cfg: Config,
    *,
    console: Console | None = None,
    records: list[TrialRecord] | None = None,
    tasks: list[Path] | None = None,
    pool: SandboxPool | None = None,
) -> list[TrialRecord]:
    """Run every task × n_attempts, n_concurrent at a time; return the records (also in results.jsonl).

    `records`, when given, is filled as trials end, so a caller still has them after a cancellation.
    `pool`, when given, is the caller's and stays up after the run (its own settings apply, and its
    `shutdown` ends what it holds): a driver running several batches keeps its actor processes across them.
    Without it the run starts a pool from `cfg` and shuts it down at the end.
    """
    tasks = discover_tasks(cfg.tasks) if tasks is None else tasks
    ensure_ray(cfg)
    job_name = cfg.job_name or time.strftime("%Y-%m-%d__%H-%M-%S") + f"__{uuid.uuid4().hex[:4]}"
    job_dir = Path(cfg.jobs_dir).resolve() / job_name
    job_dir.mkdir(parents=True, exist_ok=True)
    owns_pool = pool is None
    pool = SandboxPool.from_config(cfg) if pool is None else pool
    pool_key = f"run-{uuid.uuid4().hex[:8]}"
    register_context(pool_key, PoolContext(pool, cfg))
    owner = L.current_owner()
    console = console or Console(stderr=True)
    total = len(tasks) * cfg.n_attempts
    log.info("running %d trials of %d tasks in %s (backend %s)", total, len(tasks), job_dir, cfg.backend.kind)

    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    ) as progress:
        bar = progress.add_task(progress_text([], 0), total=total)

        def update() -> None:
            progress.update(bar, completed=batch.tail.done, description=progress_text(batch.records, batch.running))

        batch = Batch(cfg, job_dir, pool_key, total, update)
        if records is not None:
            batch.records = records
        try:
            await asyncio.gather(*(batch.trial(t) for t in tasks for _ in range(cfg.n_attempts)))
        finally:
            batch.tail.close()
            unregister_context(pool_key)
            try:
                log.info("pool stats: %s", json.dumps(await pool.stats(), default=str))
            finally:
                if owns_pool:
                    await pool.shutdown()
            # delete=false keeps trial sandboxes on purpose; a caller's pool may hold warm ones of this owner
            if cfg.delete and owns_pool:
                await asyncio.to_thread(_sweep, cfg, owner)
            log.info("trials by reason: %s", reason_counts(batch.records))
    return batch.records


def _sweep(cfg: Config, owner: str) -> None:
    """Remove any sandbox of this run and owner that is still there (after Ctrl-C or a crash), on the backend's
    daemon and on every remote daemon of `pool.hosts` (a node's own daemon elsewhere is its reaper's).

    The owner (`<cluster id>-<job id>`, labels.current_owner) is unique across clusters, so another run's
    sandboxes on the same run_label are never taken (issue 13, item 1: job ids alone repeat).
    """
    selector = L.selector(cfg.run_label, **{L.OWNER: owner})

    def sweep(target: Any) -> None:
        backend = make_backend(target)
        for handle in backend.list(selector):
            log.warning("removing leftover sandbox %s", handle.name)
            backend.destroy(handle)

    sweep(cfg.backend)
    urls = [str(h.get("url") or "") for h in cfg.pool.hosts or [] if isinstance(h, dict)]
    for url in dict.fromkeys(u for u in urls if u):
        target = cfg.backend.at_url(url)  # type: ignore[union-attr]  # pool.hosts: Docker backends only
        try:
            sweep(target)
        except HarborRayError as e:  # a host that is down: its sandboxes end at their TTL or its reaper's pass
            log.warning("could not sweep %s: %s", url, e)


class Interrupted(KeyboardInterrupt):
    """The run was stopped by a signal (SIGINT or SIGTERM) after cancelling, recording and cleaning up."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


async def _run_until_signalled(
    cfg: Config, tasks: list[Path] | None, records: list[TrialRecord], stopped_by: list[int]
) -> None:
    """`run_trials`, with SIGTERM handled as Ctrl-C is: the run is cancelled, never killed mid-cleanup.

    Ray's driver turns SIGTERM into `sys.exit` wherever the main thread is, which aborts the process with a
    C++ stack dump; the loop's own handler replaces it once Ray has started.
    """
    main = asyncio.current_task()
    assert main is not None
    loop = asyncio.get_running_loop()

    def stop(signum: int) -> None:
        if stopped_by:
            log.warning("%s again: already stopping, cleaning up", signal.Signals(signum).name)
            return
        stopped_by.append(signum)
        log.warning("%s: cancelling the trials and removing their sandboxes", signal.Signals(signum).name)
        main.cancel()

    tasks = discover_tasks(cfg.tasks) if tasks is None else tasks  # a bad task list fails before Ray starts
    ensure_ray(cfg)  # first: ray.init installs its own SIGTERM handler, which this one replaces
    loop.add_signal_handler(signal.SIGTERM, stop, signal.SIGTERM)
    try:
        await run_trials(cfg, records=records, tasks=tasks)
    finally:
        loop.remove_signal_handler(signal.SIGTERM)


class _HarborNoise(logging.Filter):
    """Drops Harbor's per-trial ERROR that an agent has no web tools to disable: harbor_ray's sandbox
    enforces the network policy itself, so there is nothing wrong to report (shown again with -v)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.name.startswith("harbor.") and "exposes no native web search" in record.getMessage())


def _quiet_harbor_noise() -> None:
    if logging.getLogger().level > logging.DEBUG:
        for handler in logging.getLogger().handlers:
            handler.addFilter(_HarborNoise())


def run_batch(cfg: Config, tasks: list[Path] | None = None, fmt: str = "table") -> int:
    """Run the batch, print the summary (`fmt`: report.FORMATS); exit code 0, or 1 when every trial failed.

    Raises Interrupted after a Ctrl-C or SIGTERM, once the trials are cancelled and recorded, the
    sandboxes removed and the summary printed.
    """
    records: list[TrialRecord] = []
    stopped_by: list[int] = []
    _quiet_harbor_noise()
    try:
        asyncio.run(_run_until_signalled(cfg, tasks, records, stopped_by))
    except (KeyboardInterrupt, asyncio.CancelledError) as e:
        print_summary(records, Console(), fmt)
        raise Interrupted(stopped_by[0] if stopped_by else signal.SIGINT) from e
    print_summary(records, Console(), fmt)
    failed = sum(not r.ok for r in records)
    return 1 if failed == len(records) and records else 0
