"""A preempted shard asks its scheduler to run it again: whether (pure), which job (pure) and how
(SLURM's scontrol).

Only SLURM has a command an element can run on itself; elsewhere a preempted shard ends with
EXIT_PREEMPTED and its `preempted` status.json, and the same command continues it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

from shardrun.scheduler.slurm import SlurmCommands, own_slurm_job


@dataclass(frozen=True)
class RequeueDecision:
    requeue: bool
    reason: str  # why not, for the log and status.json; empty when requeueing


def decide_requeue(users_todo: int, requeues_done: int, limit: int, env: Mapping[str, str]) -> RequeueDecision:
    if users_todo <= 0:
        return RequeueDecision(False, "no users left to do")
    if own_slurm_job(env) is None:
        return RequeueDecision(False, "not a SLURM job: run the same command again to continue")
    if requeues_done >= limit:
        return RequeueDecision(False, f"requeued {requeues_done} times already (--requeue-limit {limit}): resubmit the"
                                      " missing elements with launch_shards --scheduler slurm --out RUN_DIR")
    return RequeueDecision(True, "")


def requeue_slurm_job(env: Mapping[str, str], slurm: SlurmCommands | None = None) -> str:
    """`scontrol requeue` this job, and only it (own_slurm_job); SLURM then stops it and starts it
    again later. Returns the job id it named. Called only once decide_requeue said yes."""
    job = own_slurm_job(env)
    if job is None:
        raise ValueError("requeue_slurm_job outside a SLURM job: decide_requeue says no there")
    (slurm or SlurmCommands()).requeue(job)
    return job
