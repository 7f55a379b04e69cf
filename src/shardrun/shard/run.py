"""One shard, start to end: prepare -> run.json -> lock -> shard.json -> the loop (run_production's work)."""

from __future__ import annotations

import importlib.metadata
import logging
import os
import platform
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Mapping

from shardrun.config import RunConfig, resolve_threads
from shardrun.errors import EXIT_INTERRUPTED, EXIT_PREEMPTED, ResumeMismatch
from shardrun.scheduler.slurm import lease_scheduler
from shardrun.shard.lifecycle import StopFlag
from shardrun.shard.loop import ShardLoop
from shardrun.shard.plan import ShardPlan, plan_shard
from shardrun.shard.prepare import (
    PreparedShard, ResolvedDirs, WorkerOptions, create_run_dir, prepare, refuse_if, scan_committed_durably, shard_rows,
)
from shardrun.states import user_outcome
from shardrun.storage.atomic import create_json_once, utc_now
from shardrun.storage.attempts import recorded_attempts
from shardrun.storage.commits import CommittedUser, clean_tmp, read_errors, results_listing
from shardrun.storage.identity import ensure_identity, read_run_document, run_difference
from shardrun.storage.lock import ShardLock
from shardrun.storage.durability import durable_write
from shardrun.storage.paths import RunPaths
from shardrun.task import Task, UserIndex, heap_advice, task_origin

log = logging.getLogger(__name__)


@dataclass
class ShardOutcome:
    exit_code: int
    plan: ShardPlan
    dirs: ResolvedDirs


def run_shard(config: RunConfig, options: WorkerOptions, stop: StopFlag | None = None) -> ShardOutcome:
    stop = stop or StopFlag()
    prepared = prepare(config, options)
    task, index, dirs, heap = prepared.task, prepared.index, prepared.dirs, prepared.heap
    refuse_if(prepared.problems, f"{capitalised(heap_advice(task, config.settings))}, or raise jvm.xmx;"
              " `run_production --dry-run` lists this before any user starts.")
    if stop.requested_by:
        log.warning("%s received before the shard started: nothing was written, and the same command starts it"
                    " again whenever you like", stop.requested_by)
        return ShardOutcome(exit_code=EXIT_PREEMPTED if stop.preempted else EXIT_INTERRUPTED, plan=prepared.plan,
                            dirs=dirs)
    dirs = create_run_dir(dirs)  # every check passed: only now a new run dir appears
    # From here on the config carries the resolved heap and threads: the JVM, the task, status.json,
    # run.json, errors.jsonl.
    threads = resolve_threads(config.jvm.threads, dirs.spec.count)
    config = replace(config, jvm=replace(heap.jvm, threads=threads),
                     settings=with_threads(task, config.settings, threads))
    identity = {
        "shard": str(dirs.spec),
        "config_hash": config.hash,
        "data_fingerprint": index.fingerprint,
        "pilot": options.pilot,
        "task": config.task,
        "task_origin": task_origin(config.task),
        "users_planned": list(prepared.plan.assigned),
    }
    # Every write of the set-up goes through durable_write like the loop's own: a read-only or full
    # output dir is a StorageError naming the dir and the fix (exit 6), not an unexpected crash.
    run_doc = {**run_document(config, task, index, dirs.spec.count, options.pilot), "jvm": config.jvm.jvm_args()}
    durable_write("run.json", dirs.run.dir, lambda: ensure_run_document(dirs.run, run_doc))
    durable_write("the shard dir", dirs.shard.dir, lambda: (dirs.shard.make(), attach_shard_log(dirs.shard.log)))
    log.info("JVM heap: %s", heap.jvm_line())
    if heap.over_budget_count:
        log.warning("%s", "\n".join(heap.report_lines()))
    # In a SLURM job, the lease records it, and a lease left on another node is judged by SLURM's view of its job.
    lock = ShardLock(dirs.shard, **lease_scheduler(os.environ))
    durable_write("the shard lock", dirs.shard.dir, lock.acquire)
    try:
        ensure_identity(dirs.shard, identity, resuming=dirs.resuming,
                        guard=lambda write: durable_write("shard.json", dirs.shard.dir, write))
        durable_write("the scratch dir", dirs.shard.tmp, lambda: clean_tmp(dirs.shard))
        committed = committed_under_lock(prepared)
        plan = plan_shard(prepared.assignment, dirs.spec, options.pilot, committed, options.retry_failed)
        dataset = prepared.dataset
        loaded = set(dataset.user_ids) if dataset is not None else set()
        if not loaded.issuperset(plan.todo):  # a result file quarantined since prepare: its user is to do again
            dataset = shard_rows(task, config, plan.todo, index)
        previous = [user_outcome(committed[u].rows) for u in plan.done]
        earlier = recorded_attempts(read_errors(dirs.shard), {u: committed[u].records for u in plan.retry})
        shard = replace(prepared, dirs=dirs, plan=plan, dataset=dataset)
        exit_code = ShardLoop(config, shard, options, previous, stop, earlier).run()
    finally:
        lock.release()
    return ShardOutcome(exit_code=exit_code, plan=plan, dirs=dirs)


def committed_under_lock(prepared: PreparedShard) -> dict[str, CommittedUser]:
    """The committed users now that this process holds the lock: prepare's scan while the result files
    are those it saw (one scan for a resume, however many users it has), else a new scan, since another
    process may have committed between prepare and the lock."""
    shard = prepared.dirs.shard
    if prepared.dirs.resuming and results_listing(shard) == prepared.committed_listing:
        return prepared.committed
    return scan_committed_durably(shard)


def capitalised(text: str) -> str:
    return text[:1].upper() + text[1:]


def with_threads(task: Task, settings: Any, threads: int) -> Any:
    """The task's settings for `threads` threads, if the task can use them (Task.with_threads)."""
    set_threads = getattr(task, "with_threads", None)
    return settings if set_threads is None else set_threads(settings, threads)


def versions(task: Task) -> dict[str, str]:
    try:
        own = importlib.metadata.version("shardrun")
    except importlib.metadata.PackageNotFoundError:
        own = "unknown (not installed)"
    return {
        "shardrun": own,
        "python": platform.python_version(),
        **{k: str(v) for k, v in task.describe_versions().items()},
    }


def run_document(config: RunConfig, task: Task, index: UserIndex, shard_count: int,
                 pilot: int | None = None) -> dict[str, Any]:
    """run.json: what a run is (config snapshot and hash, K, --pilot, versions), written once per run dir."""
    return {
        "config": dict(config.raw),
        "config_path": str(config.source) if config.source else None,
        "config_hash": config.hash,
        "task": config.task,
        "task_origin": task_origin(config.task),
        "shards": shard_count,
        "data_fingerprint": index.fingerprint,
        "users_total": len(index.user_ids),
        "partition": config.partition,
        "pilot": pilot,
        "versions": versions(task),
        "created_at": utc_now(),
    }


def ensure_run_document(run: RunPaths, document: Mapping[str, Any]) -> None:
    """First process of a run writes run.json; every later one checks it describes the same run."""
    run.dir.mkdir(parents=True, exist_ok=True)
    if create_json_once(run.run_json, document):
        return
    existing = read_run_document(run.run_json)
    difference = run_difference(existing, document["shards"], document["config_hash"], document["data_fingerprint"])
    if difference:
        raise ResumeMismatch(f"run dir {run.dir} belongs to another run: {difference[1]}. Use the run's own config,"
                             f" data and K (--shard i/{existing.get('shards')}), or a new --out.")


def attach_shard_log(path: Path) -> None:
    handler = ShardLogFile(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.getLogger().addHandler(handler)


class ShardLogFile(logging.FileHandler):
    """shard.log, in the shard dir: on a disk that fails under the shard (full, read-only, gone) its lines
    cannot be written. That is said once on stderr, where every line goes too (cli/common.configure_logging),
    instead of logging's "--- Logging error ---" and a traceback for every line; the shard's own error
    (exit 6) says what to do."""

    def __init__(self, path: Path):
        super().__init__(path, encoding="utf-8")
        self._said_failure = False

    def handleError(self, record: logging.LogRecord) -> None:
        failure = sys.exc_info()[1]
        if isinstance(failure, OSError):
            self._say_failure(failure)
        else:
            super().handleError(record)

    def close(self) -> None:
        try:
            super().close()  # flushes what is buffered
        except OSError as failure:
            self._say_failure(failure)

    def _say_failure(self, failure: OSError) -> None:
        if not self._said_failure:
            self._said_failure = True
            sys.stderr.write(f"warning: cannot write the shard's log {self.baseFilename}"
                             f" ({failure.strerror or failure}); its lines go to stderr only\n")
