"""One shard, start to end: prepare -> (new run dir) -> run.json -> lock -> shard.json -> the loop."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from shardrun.config import RunConfig, resolve_threads
from shardrun.scheduler.slurm import lease_scheduler
from shardrun.shard.dirs import ResolvedDirs, ShardOptions, create_run_dir, ensure_run_document, run_document
from shardrun.shard.lifecycle import StopFlag
from shardrun.shard.loop import ShardLoop, attach_shard_log
from shardrun.shard.prepare import PreparedShard, prepare, refuse_if, resume_under_lock
from shardrun.storage.commits import clean_tmp
from shardrun.storage.durability import durable_write
from shardrun.storage.lock import ShardLock
from shardrun.storage.paths import ensure_identity

log = logging.getLogger(__name__)


@dataclass
class ShardOutcome:
    exit_code: int
    shard: PreparedShard  # its dirs and its plan


def run_shard(config: RunConfig, options: ShardOptions, stop: StopFlag | None = None) -> ShardOutcome:
    stop = stop or StopFlag()
    prepared = prepare(config, options)
    advice = prepared.task.heap_advice(config.settings)
    refuse_if(prepared.problems, f"{advice[:1].upper()}{advice[1:]}, or raise jvm.xmx;"
              " `run_production --dry-run` lists this before any user starts.")
    if stop.requested_by:
        log.warning("%s received before the shard started: nothing was written, and the same command starts it"
                    " again whenever you like", stop.requested_by)
        return ShardOutcome(stop.exit_code, prepared)
    prepared = replace(prepared, dirs=create_run_dir(prepared.dirs))  # every check passed: only now a new run dir
    config, run_doc = set_up(config, prepared, options)
    # shard.json: what run.json says of the run, plus the shard and its users.
    lock = hold_shard(prepared.dirs, {
        "shard": str(prepared.dirs.spec),
        **{key: run_doc[key] for key in ("config_hash", "data_fingerprint", "pilot", "task", "task_origin")},
        "users_planned": list(prepared.plan.assigned),
    })
    try:
        shard = resume_under_lock(prepared, config, options)
        exit_code = ShardLoop(config, shard, options, stop).run()
    finally:
        lock.release()
    return ShardOutcome(exit_code, shard)


def set_up(config: RunConfig, prepared: PreparedShard, options: ShardOptions) -> tuple[RunConfig, dict[str, Any]]:
    """run.json, the shard dir and its log; the config with the resolved heap and threads, and run.json's
    document. Writes go through durable_write: a bad output dir is a StorageError (exit 6), not a crash."""
    dirs, heap, task = prepared.dirs, prepared.heap, prepared.task
    threads = resolve_threads(config.jvm.threads, dirs.spec.count)
    config = replace(config, jvm=replace(heap.jvm, threads=threads),
                     settings=task.with_threads(config.settings, threads))
    run_doc = {**run_document(config, task, prepared.index, dirs.spec.count, options.pilot),
               "jvm": config.jvm.jvm_args()}
    durable_write("run.json", dirs.run.dir, lambda: ensure_run_document(dirs.run, run_doc))

    def make_shard_dir() -> None:
        dirs.shard.make()
        attach_shard_log(dirs.shard.log)

    durable_write("the shard dir", dirs.shard.dir, make_shard_dir)
    log.info("JVM heap: %s", heap.jvm_line())
    if heap.over_budget_count:
        log.warning("%s", "\n".join(heap.report_lines()))
    return config, run_doc


def hold_shard(dirs: ResolvedDirs, identity: Mapping[str, Any]) -> ShardLock:
    """Lock the shard, check or write shard.json, empty its scratch dir (a SLURM lease is judged by SLURM)."""
    lock = ShardLock(dirs.shard, **lease_scheduler(os.environ))
    durable_write("the shard lock", dirs.shard.dir, lock.acquire)
    try:
        ensure_identity(dirs.shard, identity, resuming=dirs.resuming,
                        guard=lambda write: durable_write("shard.json", dirs.shard.dir, write))
        durable_write("the scratch dir", dirs.shard.tmp, lambda: clean_tmp(dirs.shard))
    except BaseException:
        lock.release()
        raise
    return lock
