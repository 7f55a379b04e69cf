"""One shard, start to end: prepare -> run.json -> lock -> shard.json -> the loop (run_production's work)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace

from shardrun.config import RunConfig, resolve_threads
from shardrun.shard.dirs import ShardOptions, create_run_dir, ensure_run_document, run_document
from shardrun.shard.lifecycle import StopFlag
from shardrun.shard.loop import ShardLoop, attach_shard_log
from shardrun.shard.prepare import PreparedShard, prepare, refuse_if
from shardrun.shard.resume import hold_shard, resume_under_lock
from shardrun.storage.durability import durable_write
from shardrun.task import task_origin

log = logging.getLogger(__name__)


@dataclass
class ShardOutcome:
    exit_code: int
    shard: PreparedShard  # its dirs and its plan


def run_shard(config: RunConfig, options: ShardOptions, stop: StopFlag | None = None) -> ShardOutcome:
    stop = stop or StopFlag()
    prepared = prepare(config, options)
    refuse_if(prepared.problems, f"{capitalised(prepared.task.heap_advice(config.settings))}, or raise jvm.xmx;"
              " `run_production --dry-run` lists this before any user starts.")
    if stop.requested_by:
        log.warning("%s received before the shard started: nothing was written, and the same command starts it"
                    " again whenever you like", stop.requested_by)
        return ShardOutcome(stop.exit_code, prepared)
    prepared = replace(prepared, dirs=create_run_dir(prepared.dirs))  # every check passed: only now a new run dir
    config = set_up(config, prepared, options)
    lock = hold_shard(prepared, {
        "shard": str(prepared.dirs.spec),
        "config_hash": config.hash,
        "data_fingerprint": prepared.index.fingerprint,
        "pilot": options.pilot,
        "task": config.task,
        "task_origin": task_origin(config.task),
        "users_planned": list(prepared.plan.assigned),
    })
    try:
        shard, previous, earlier = resume_under_lock(prepared, config, options.pilot, options.retry_failed)
        exit_code = ShardLoop(config, shard, options, previous, stop, earlier).run()
    finally:
        lock.release()
    return ShardOutcome(exit_code, shard)


def set_up(config: RunConfig, prepared: PreparedShard, options: ShardOptions) -> RunConfig:
    """run.json, the shard dir and its log, and the config with the resolved heap and threads.
    Writes go through durable_write: a bad output dir is a StorageError (exit 6), not a crash."""
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
    return config


def capitalised(text: str) -> str:
    return text[:1].upper() + text[1:]
