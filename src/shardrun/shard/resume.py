"""What a shard continues from, under its lock: the lock, its identity, the committed users, the plan and rows."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from shardrun.config import RunConfig
from shardrun.scheduler.slurm import lease_scheduler
from shardrun.shard.plan import plan_shard
from shardrun.shard.prepare import PreparedShard, scan_committed_durably, shard_rows
from shardrun.states import UserStatus, user_outcome
from shardrun.storage.commits import (
    CommittedUser,
    clean_tmp,
    read_errors,
    recorded_attempts,
    results_listing,
)
from shardrun.storage.durability import durable_write
from shardrun.storage.lock import ShardLock
from shardrun.storage.paths import ensure_identity


def hold_shard(prepared: PreparedShard, identity: Mapping[str, Any]) -> ShardLock:
    """Lock the shard, check or write shard.json, empty its scratch dir (a SLURM lease is judged by SLURM)."""
    dirs = prepared.dirs
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


def resume_under_lock(prepared: PreparedShard, config: RunConfig, pilot: int | None,
                      retry_failed: bool) -> tuple[PreparedShard, list[UserStatus], dict[str, int]]:
    """The shard as the loop takes it, the outcomes of users done, and retried users' earlier attempts."""
    committed = committed_under_lock(prepared)
    plan = plan_shard(prepared.assignment, prepared.dirs.spec, pilot, committed, retry_failed)
    dataset = prepared.dataset
    loaded = set(dataset.user_ids) if dataset is not None else set()
    if not loaded.issuperset(plan.todo):  # a result file quarantined since prepare: its user is to do again
        dataset = shard_rows(prepared.task, config, plan.todo, prepared.index)
    previous = [user_outcome(committed[u].rows) for u in plan.done]
    earlier = recorded_attempts(read_errors(prepared.dirs.shard), {u: committed[u].records for u in plan.retry})
    return replace(prepared, plan=plan, dataset=dataset), previous, earlier


def committed_under_lock(prepared: PreparedShard) -> dict[str, CommittedUser]:
    """The committed users under the lock: prepare's scan if unchanged, else a new one."""
    shard = prepared.dirs.shard
    if prepared.dirs.resuming and results_listing(shard) == prepared.committed_listing:
        return prepared.committed
    return scan_committed_durably(shard)
