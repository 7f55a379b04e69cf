"""A preempted shard asks its scheduler to run it again: whether (pure) and how (SLURM's scontrol).

Only SLURM has a command an element can run on itself; elsewhere a preempted shard ends with
EXIT_PREEMPTED and its `preempted` status.json, and the same command continues it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

from shardrun.scheduler.slurm import SlurmCommands

# SLURM_JOB_ID is the element's own job id inside an array (SLURM_ARRAY_JOB_ID is the array's).
SLURM_JOB_ENV = "SLURM_JOB_ID"


@dataclass(frozen=True)
class RequeueDecision:
    requeue: bool
    reason: str  # why not, for the log and status.json; empty when requeueing


def decide_requeue(users_todo: int, requeues_done: int, limit: int, env: Mapping[str, str]) -> RequeueDecision:
    if users_todo <= 0:
        return RequeueDecision(False, "no users left to do")
    if not env.get(SLURM_JOB_ENV):
        return RequeueDecision(False, "not a SLURM job: run the same command again to continue")
    if requeues_done >= limit:
        return RequeueDecision(False, f"requeued {requeues_done} times already (--requeue-limit {limit}): resubmit the"
                                      " missing elements with launch_shards --scheduler slurm --out RUN_DIR")
    return RequeueDecision(True, "")


def requeue_slurm_job(env: Mapping[str, str], slurm: SlurmCommands | None = None) -> None:
    """`scontrol requeue` this job; SLURM then stops it and starts it again later."""
    (slurm or SlurmCommands()).requeue(env[SLURM_JOB_ENV])
