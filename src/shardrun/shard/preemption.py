"""How a stopped shard process ends: the drain claimed once, a preemption's abandon and requeue, a second signal.

After a warning signal the drain is bounded by the lead time; the first of the loop and the abandon timer ends it.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import replace
from datetime import datetime
from typing import Any, NoReturn

from shardrun.errors import EXIT_INTERRUPTED, EXIT_PREEMPTED, SchedulerError
from shardrun.scheduler.slurm import JobRecord
from shardrun.shard.lifecycle import StopFlag
from shardrun.shard.requeue import (
    decide_requeue,
    grace_seconds_left,
    own_slurm_job,
    read_own_job,
    requeue_slurm_job,
    requeued_by_slurm,
)
from shardrun.states import ShardState
from shardrun.storage.paths import ShardPaths
from shardrun.storage.periodic import Periodic
from shardrun.storage.status import ShardStatus

log = logging.getLogger(__name__)

# How long an abandon waits for a commit in progress (its users are recomputed after the requeue).
ABANDON_COMMIT_WAIT_SECONDS = 2.0


class ShardEnding:
    """The end of a stopped shard, once: `try_flush(wait_seconds)` keeps the users that ended."""

    def __init__(self, stop: StopFlag, status: ShardStatus, try_flush: Callable[[float], object], shard: str,
                 paths: ShardPaths):
        self.stop = stop
        self.status = status
        self.try_flush = try_flush
        self.shard = shard  # i/K, for the log
        self.paths = paths
        self._lock = threading.Lock()
        self._ending = False
        self._requeue_counted = False  # this process has counted its job's requeue (by SLURM or by itself)
        self._abandon_after: float | None = None  # seconds after the preemption signal (arm_abandon_timer)

    def claim(self) -> bool:
        """True for the first caller only: the loop's end, or the abandon timer's."""
        with self._lock:
            first, self._ending = not self._ending, True
            return first

    def stop_now(self, signal_name: str) -> None:
        """A second signal: leave at once (the user in flight uncommitted), the status said if it can be."""
        if self._requeue_counted:
            # The drain is over and the requeue recorded: this is SLURM stopping this run for that requeue.
            log.info("%s: SLURM stops this run of the shard for its requeue", signal_name)
            leave(EXIT_PREEMPTED)
        log.warning("second %s: stopping now; the user in flight is abandoned uncommitted", signal_name)
        # Not waiting: the signal may have interrupted this very thread inside a commit.
        self.try_flush(0)
        # After a preemption notice the second signal is the scheduler's own stop: still a preemption.
        state, code = ((ShardState.PREEMPTED, EXIT_PREEMPTED) if self.stop.preempted
                       else (ShardState.INTERRUPTED, EXIT_INTERRUPTED))
        try:
            self.status.update(state=state.value, last_error=f"stopped by a second {signal_name}")
            if self.stop.preempted and not self._requeue_counted:
                # The grace time of SLURM's preemption ended before the drain did: SLURM requeues the job.
                self.count_slurm_requeue(read_own_job(os.environ))
        except Exception as exc:  # leaving at once matters more than the status line; say why it is stale
            log.error("could not mark %s %s: %s", self.paths.status, state.value, exc)
        finally:
            leave(code)

    def arm_abandon_timer(self) -> None:
        notice = self.stop.preemption
        assert notice is not None and self.stop.preempted_at is not None
        since_signal = time.monotonic() - self.stop.preempted_at
        # A preemption by SLURM stops the job when its grace time ends, which may come before the lead.
        grace_left = grace_seconds_left(read_own_job(os.environ), datetime.now())
        lead = notice.lead_seconds
        if grace_left is not None and since_signal + grace_left < lead:
            notice = replace(notice, lead_seconds=max(since_signal + grace_left, 0.0))
            log.warning("SLURM's grace time for this preemption ends in %.0f s, before the lead of %.0f s: the user"
                        " in flight is kept if it ends within %.0f s of %s", grace_left, lead,
                        notice.abandon_after, self.stop.requested_by)
        self._abandon_after = notice.abandon_after
        Periodic("preemption-abandon", max(notice.abandon_after - since_signal, 0.0), self.abandon).start()

    def abandon(self) -> bool:
        """The lead time is nearly over: give up the user in flight uncommitted and leave before the kill (once)."""
        if not self.claim():
            return False
        user = self.status.snapshot().get("current_user")
        log.warning("the user in flight (%r) did not end within %.0f s of %s: abandoned uncommitted", user,
                    self._abandon_after, self.stop.requested_by)
        self.try_flush(ABANDON_COMMIT_WAIT_SECONDS)
        try:
            self.status.update(state=ShardState.PREEMPTED.value, current_user=None,
                               last_error=f"preempted by {self.stop.requested_by}; user {user!r} abandoned uncommitted")
            self.requeue_if_work_left(read_own_job(os.environ))
        except Exception as exc:  # leaving before the kill matters more than the status line
            log.error("could not record the preemption in %s: %s", self.paths.status, exc)
        finally:
            leave(EXIT_PREEMPTED)

    def stopped(self, doc: Mapping[str, Any]) -> tuple[int | None, JobRecord | None]:
        """The exit of a shard stopped with users to do, else None, and SLURM's record, which tells a
        preemption or requeue (preempted) from a scancel (interrupted)."""
        record = read_own_job(os.environ) if self.stop.requested_by else None
        if doc["users_todo"] > 0 and (self.stop.preempted or requeued_by_slurm(record, os.environ)):
            self.status.update(state=ShardState.PREEMPTED.value, last_error=f"preempted by {self.stop.requested_by}")
            log.warning("shard %s preempted with %d users to do", self.shard, doc["users_todo"])
            self.requeue_if_work_left(record)
            return EXIT_PREEMPTED, record
        if self.stop.requested_by and doc["users_todo"] > 0:
            self.status.update(state=ShardState.INTERRUPTED.value, last_error=f"stopped by {self.stop.requested_by}")
            log.warning("shard %s interrupted with %d users to do; resume with --resume %s",
                        self.shard, doc["users_todo"], self.paths.dir)
            return EXIT_INTERRUPTED, record
        return None, record

    def requeue_if_work_left(self, record: JobRecord | None) -> None:
        """Requeue the job while users are left, unless SLURM already does (requeue.decide_requeue)."""
        doc = self.status.snapshot()
        limit = self.stop.preemption.requeue_limit if self.stop.preemption is not None else 0
        decision = decide_requeue(doc["users_todo"], doc["requeues"], limit, os.environ, record)
        if decision.requeued_by_slurm:
            self.count_slurm_requeue(record)
            return
        if not decision.requeue:
            log.warning("not requeueing shard %s: %s", self.shard, decision.reason)
            return
        # Counted and said before the request: once SLURM takes it, its TERM stops this process at once.
        count = doc["requeues"] + 1
        why = f"requeue {count}; {decision.reason}" if decision.reason else f"{count} of at most {limit}"
        log.warning("shard %s asks SLURM to requeue it, job %s (%s); %d users to do", self.shard,
                    own_slurm_job(os.environ), why, doc["users_todo"])
        self.status.update(requeues=count)
        self._requeue_counted = True
        try:
            requeue_slurm_job(os.environ)
        except SchedulerError as exc:
            self._requeue_counted = False
            self.status.update(requeues=doc["requeues"], last_error=str(exc))
            log.error("%s", exc)

    def count_slurm_requeue(self, record: JobRecord | None) -> None:
        """SLURM requeues this job itself (its record says so): one more requeue, none asked for."""
        if not requeued_by_slurm(record, os.environ):
            return
        self._requeue_counted = True
        requeues = self.status.snapshot()["requeues"] + 1
        self.status.update(requeues=requeues)
        log.warning("shard %s: SLURM requeued its job itself (a preemption's grace time ended, or scontrol requeue),"
                    " requeue %d; it runs again without asking", self.shard, requeues)


def leave(code: int) -> NoReturn:
    """End the process now, the log flushed: no cleanup may wait on the thread this interrupted."""
    logging.shutdown()
    os._exit(code)
