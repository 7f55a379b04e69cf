"""A shard stopped early with users left asks its scheduler to run it again (SLURM only).

Requeued once, by SLURM (GraceTime ended while running) or by the shard, never both (docs/dev/CLUSTER_TESTS.md).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime

from shardrun.errors import SchedulerError
from shardrun.scheduler.slurm import SLURM_RESTART_ENV, JobRecord, SlurmCommands, own_slurm_job

log = logging.getLogger(__name__)

# How long a stopping shard waits for `scontrol show job`: SLURM's KILL comes KillWait (30 s by default)
# after its TERM, and the answer only decides who requeues.
JOB_QUERY_TIMEOUT_SECONDS = 10.0


@dataclass(frozen=True)
class RequeueDecision:
    requeue: bool  # ask SLURM to requeue this job now
    reason: str  # why not (or why despite the limit), for the log and status.json; empty for a plain requeue
    requeued_by_slurm: bool = False  # SLURM has requeued the job already: it runs again without asking


def restart_count(env: Mapping[str, str]) -> int:
    """Which run of its job this process is: 0 for the first, n after n requeues (SLURM_RESTART_COUNT)."""
    count = env.get(SLURM_RESTART_ENV, "").strip()
    return int(count) if count.isdigit() else 0


def requeued_by_slurm(record: JobRecord | None, env: Mapping[str, str]) -> bool:
    """SLURM has requeued this job since this run of it started (its record counts a newer run)."""
    return record is not None and record.requeued_since(restart_count(env))


def grace_seconds_left(record: JobRecord | None, now: datetime) -> float | None:
    """Seconds from `now` (local time, as scontrol prints) to the end of SLURM's grace time for a
    preempted job (its EndTime: the preemption + GraceTime); None when SLURM has not preempted it or
    the record does not say."""
    if record is None or record.preempt_time is None or record.end_time is None:
        return None
    try:
        return (datetime.fromisoformat(record.end_time) - now).total_seconds()
    except ValueError:
        return None


def decide_requeue(users_todo: int, requeues_done: int, limit: int, env: Mapping[str, str],
                   record: JobRecord | None = None) -> RequeueDecision:
    """Whether a shard that stops with `users_todo` users left asks SLURM to requeue its job, given
    SLURM's record of that job (None: not known, so decided as if SLURM had neither preempted nor
    requeued it; a requeue SLURM already does is then refused by SLURM, so it still happens once).

    SLURM's own requeue (a preemption's GraceTime ended, an admin's `scontrol requeue`) is never asked
    for again. A preemption by SLURM that the shard drained ahead of is requeued whatever the limit,
    as SLURM itself would have at the grace time's end; --requeue-limit bounds the requeues the
    shard's own warning signal leads to (a time limit), so that a shard that cannot progress stops."""
    if users_todo <= 0:
        return RequeueDecision(False, "no users left to do")
    if own_slurm_job(env) is None:
        return RequeueDecision(False, "not a SLURM job: run the same command again to continue")
    if requeued_by_slurm(record, env):
        return RequeueDecision(False, "SLURM has requeued this job itself (a preemption's grace time ended, or"
                                      " scontrol requeue): it runs again without asking", requeued_by_slurm=True)
    if record is not None and record.preempt_time is not None:
        return RequeueDecision(True, f"preempted by SLURM at {record.preempt_time}: requeued now, as SLURM would"
                                     " at the end of its grace time")
    if requeues_done >= limit:
        return RequeueDecision(False, f"requeued {requeues_done} times already (--requeue-limit {limit}): resubmit the"
                                      " missing elements with launch_shards --scheduler slurm --out RUN_DIR")
    return RequeueDecision(True, "")


def read_own_job(env: Mapping[str, str], slurm: SlurmCommands | None = None) -> JobRecord | None:
    """SLURM's record of this job (own_slurm_job); None outside SLURM, or when scontrol does not answer
    in time (logged): decide_requeue then goes on without it."""
    job = own_slurm_job(env)
    if job is None:
        return None
    try:
        return (slurm or SlurmCommands()).job_state(job, timeout=JOB_QUERY_TIMEOUT_SECONDS)
    except SchedulerError as exc:
        log.warning("could not read SLURM's record of job %s (%s): deciding the requeue without it", job, exc)
        return None


def requeue_slurm_job(env: Mapping[str, str], slurm: SlurmCommands | None = None) -> str:
    """`scontrol requeue` this job, and only it (own_slurm_job); SLURM then stops it and starts it
    again later. Returns the job id it named. Called only once decide_requeue said yes."""
    job = own_slurm_job(env)
    if job is None:
        raise ValueError("requeue_slurm_job outside a SLURM job: decide_requeue says no there")
    (slurm or SlurmCommands()).requeue(job)
    return job
