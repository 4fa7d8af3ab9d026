"""Run Harbor trials on the sandbox pool: `python -m harbor_ray run tasks=… agent=oracle n_concurrent=…`.

Each trial is Harbor's own `Trial.create(config)` / `trial.run()` with harbor_ray's RayEnvironment,
so every trial gets a fresh sandbox owned by a Ray actor. Results go to Harbor's trial directories
plus one `results.jsonl` line per trial; a trial that errors is recorded with its error, never lost.
Ctrl-C cancels the trials; each stops its environment, and a final sweep by owner label removes
whatever is left.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import time
import uuid
from pathlib import Path
from typing import Any

import ray
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from harbor_ray import labels as L
from harbor_ray.backends import make_backend
from harbor_ray.config import Config, load_config
from harbor_ray.harbor.environment import PoolContext, register_context, unregister_context
from harbor_ray.harbor.report import TrialRecord, append_jsonl, print_summary, progress_text, record_from_result
from harbor_ray.harbor.spec import find_task_dirs
from harbor_ray.pool import SandboxPool

log = logging.getLogger(__name__)


def discover_tasks(paths: list[str]) -> list[Path]:
    """Every task dir (with task.toml) named, or found below a named dir; each once, in order."""
    found = [task.resolve() for raw in paths for task in find_task_dirs(Path(raw).expanduser())]
    return list(dict.fromkeys(found))


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


def trial_config(cfg: Config, task_dir: Path, job_dir: Path, pool_key: str) -> Any:
    from harbor.models.trial.config import AgentConfig, EnvironmentConfig, TaskConfig, TrialConfig, VerifierConfig

    agent = cfg.agent
    return TrialConfig(
        task=TaskConfig(path=task_dir),
        trial_name=f"{task_dir.name}__{uuid.uuid4().hex[:7]}",
        trials_dir=job_dir,
        agent=AgentConfig(
            name=None if agent.import_path else agent.name,
            import_path=agent.import_path or None,
            model_name=agent.model_name or None,
            kwargs=dict(agent.kwargs),
        ),
        environment=EnvironmentConfig(
            import_path=cfg.environment_import_path,
            force_build=cfg.force_build,
            delete=cfg.delete,
            kwargs={"pool_key": pool_key},
        ),
        verifier=VerifierConfig(override_timeout_sec=cfg.verifier_timeout_s or None),
    )


async def run_one(cfg: Config, task_dir: Path, job_dir: Path, pool_key: str) -> TrialRecord:
    """One Harbor trial. Never raises for the trial's own failures: they become the record's error."""
    from harbor.trial.trial import Trial

    config = trial_config(cfg, task_dir, job_dir, pool_key)
    trial = None
    try:
        trial = await Trial.create(config)
        result = await trial.run()
    except Exception as e:  # Harbor records most failures itself; this catches create-time ones
        return TrialRecord(
            task=task_dir.name,
            trial=config.trial_name,
            error=type(e).__name__,
            error_message=str(e).strip().splitlines()[0][:300] if str(e).strip() else None,
        )
    env = getattr(trial, "agent_environment", None)
    return record_from_result(result, sandbox=getattr(env, "last_sandbox", None), trial_dir=job_dir / config.trial_name)


async def run_trials(cfg: Config, *, console: Console | None = None) -> list[TrialRecord]:
    """Run every task × n_attempts, n_concurrent at a time; return the records (also in results.jsonl)."""
    tasks = discover_tasks(cfg.tasks)
    ensure_ray(cfg)
    job_name = cfg.job_name or time.strftime("%Y-%m-%d__%H-%M-%S") + f"__{uuid.uuid4().hex[:4]}"
    job_dir = Path(cfg.jobs_dir).resolve() / job_name
    job_dir.mkdir(parents=True, exist_ok=True)
    results_path = job_dir / "results.jsonl"
    pool = SandboxPool.from_config(cfg)
    pool_key = f"run-{uuid.uuid4().hex[:8]}"
    register_context(pool_key, PoolContext(pool, cfg))
    owner = L.current_owner()
    console = console or Console(stderr=True)
    records: list[TrialRecord] = []
    gate = asyncio.Semaphore(cfg.n_concurrent)
    running = 0
    log.info(
        "running %d trials of %d tasks in %s (backend %s)",
        len(tasks) * cfg.n_attempts,
        len(tasks),
        job_dir,
        cfg.backend.kind,
    )

    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    ) as progress:
        bar = progress.add_task(progress_text(records, 0), total=len(tasks) * cfg.n_attempts)

        async def guarded(task_dir: Path) -> None:
            nonlocal running
            async with gate:
                running += 1
                progress.update(bar, description=progress_text(records, running))
                try:
                    record = await run_one(cfg, task_dir, job_dir, pool_key)
                finally:
                    running -= 1
                records.append(record)
                append_jsonl(results_path, record)
                log.info(
                    "trial %s: reward=%s rewards=%s error=%s", record.trial, record.reward, record.rewards, record.error
                )
                progress.update(bar, advance=1, description=progress_text(records, running))

        try:
            await asyncio.gather(*(guarded(t) for t in tasks for _ in range(cfg.n_attempts)))
        finally:
            unregister_context(pool_key)
            try:
                log.info("pool stats: %s", json.dumps(await pool.stats(), default=str))
            finally:
                await pool.shutdown()
            if cfg.delete:  # delete=false keeps trial sandboxes on purpose
                await asyncio.to_thread(_sweep, cfg, owner)
    return records


def _sweep(cfg: Config, owner: str) -> None:
    """Remove any sandbox of this run and owner that is still there (after Ctrl-C or a crash)."""
    backend = make_backend(cfg.backend)
    for handle in backend.list(L.selector(cfg.run_label, **{L.OWNER: owner})):
        log.warning("removing leftover sandbox %s", handle.name)
        backend.destroy(handle)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m harbor_ray run", description=__doc__.splitlines()[0])
    parser.add_argument("--config", help="a YAML config file (plain or the seed's runtime_info layout)")
    parser.add_argument("overrides", nargs="*", help="key=value overrides, e.g. backend=k8s n_concurrent=8")
    args = parser.parse_args(argv)
    cfg = load_config(args.overrides, args.config)
    records = asyncio.run(run_trials(cfg))
    print_summary(records, Console())
    failed = sum(not r.ok for r in records)
    return 1 if failed == len(records) and records else 0
