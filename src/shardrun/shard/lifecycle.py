"""How a shard process stops: the drain on signals, the scheduler's warning signal (a preemption: the
abandon timer, `preempted`, exit 7, the SLURM requeue), a second signal, dying with its launcher.

After a warning signal the drain is bounded by the lead time; the first of the loop and the abandon timer ends it.
A job is requeued once, by SLURM (GraceTime ended while running) or by the shard, never both
(docs/dev/CLUSTER_TESTS.md).
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any, NoReturn

from shardrun.early_signals import STOP_SIGNALS
from shardrun.errors import EXIT_INTERRUPTED, EXIT_PREEMPTED, SchedulerError
from shardrun.platforms import signal_on_parent_death
from shardrun.scheduler.slurm import SLURM_RESTART_ENV, JobRecord, SlurmCommands, own_slurm_job
from shardrun.states import ShardState
from shardrun.storage.paths import ShardPaths
from shardrun.storage.periodic import Periodic
from shardrun.storage.status import ShardStatus

log = logging.getLogger(__name__)

# Set by launch_shards in each shard's environment: the pid the shard must not outlive.
LAUNCHER_PID_ENV = "SHARDRUN_LAUNCHER_PID"

# Signals a scheduler can be asked to send ahead of its stop (sbatch --signal): their names as flags take them.
PREEMPT_SIGNALS = ("TERM", "USR1", "USR2")


@dataclass(frozen=True)
class PreemptionNotice:
    """`signal` comes `lead_seconds` before the scheduler's stop; the user in flight is abandoned after
    `abandon_after`; `requeue_limit` bounds the shard's requeue requests (0: never)."""

    signal: signal.Signals
    lead_seconds: float
    requeue_limit: int = 3

    @property
    def abandon_after(self) -> float:
        margin = min(max(5.0, 0.1 * self.lead_seconds), self.lead_seconds / 2)
        return self.lead_seconds - margin

    @classmethod
    def named(cls, name: str, lead_seconds: float, requeue_limit: int) -> PreemptionNotice:
        return cls(signal.Signals[f"SIG{name.upper().removeprefix('SIG')}"], lead_seconds, requeue_limit)


class StopFlag:
    """Set by a stop signal: finish and commit the user in flight, then stop; a second calls `on_second`.

    A thread watches the wakeup fd for the preemption signal: Python's handlers wait out a long Java call.
    """

    def __init__(self, preemption: PreemptionNotice | None = None) -> None:
        self.preemption = preemption
        self.requested_by: str | None = None
        self.preempted_at: float | None = None  # time.monotonic() of the preemption signal
        self.on_second: Callable[[str], None] = lambda _name: os._exit(EXIT_INTERRUPTED)
        self.on_preempt: Callable[[], None] = lambda: None
        self._preempt_lock = threading.Lock()
        self._preemption_handled = False  # the handler has seen the preemption signal (the watcher may have first)
        self._signals = {*STOP_SIGNALS, *([preemption.signal] if preemption else [])}

    @property
    def preempted(self) -> bool:
        return self.preempted_at is not None

    @property
    def exit_code(self) -> int:
        """A stop after the scheduler's warning is a preemption (exit 7), else an interruption."""
        return EXIT_PREEMPTED if self.preempted else EXIT_INTERRUPTED

    def install(self, caught_before: Sequence[int] = ()) -> None:
        """Take the stop (and warning) signals from now on; `caught_before`: the signals that came before,
        while the process was still importing (entry.py), handled now in their order."""
        for sig in self._signals:
            signal.signal(sig, self._handle)
        if self.preemption is not None:
            self._watch_wakeup_fd(self.preemption)
        for signum in caught_before:
            self._handle(signum, None)

    def _handle(self, signum: int, _frame: Any) -> None:
        name = signal.Signals(signum).name
        if self.preemption is not None and signum == self.preemption.signal and not self._preemption_handled:
            self._preemption_handled = True
            self._note_preemption(self.preemption)  # a no-op when the watcher thread noted it first
            return
        if self.requested_by is not None:
            self.on_second(name)
            return
        self.requested_by = name
        log.warning("%s received: finishing the user in flight, then stopping", name)

    def ignore_from_now(self) -> None:
        """Ignore stop signals once the end is recorded: during exit they would kill a finished shard."""
        for sig in self._signals:
            signal.signal(sig, signal.SIG_IGN)

    def _note_preemption(self, notice: PreemptionNotice) -> None:
        """Record the preemption signal once, from the watcher thread or the handler, whichever is first."""
        with self._preempt_lock:
            if self.preempted_at is not None:
                return
            self.preempted_at = time.monotonic()
            self.requested_by = self.requested_by or notice.signal.name
        log.warning("%s received: the scheduler stops this shard in %.0f s; the user in flight is kept if it ends"
                    " within %.0f s, then the shard stops",
                    notice.signal.name, notice.lead_seconds, notice.abandon_after)
        self.on_preempt()

    def _watch_wakeup_fd(self, notice: PreemptionNotice) -> None:
        read_end, write_end = os.pipe()
        os.set_blocking(write_end, False)
        signal.set_wakeup_fd(write_end, warn_on_full_buffer=False)
        wanted = int(notice.signal)

        def watch() -> None:
            while True:
                for signum in os.read(read_end, 64):
                    if signum == wanted:
                        self._note_preemption(notice)

        threading.Thread(target=watch, name="preemption-watch", daemon=True).start()


def die_with_launcher() -> None:
    """A shard of launch_shards ends with its launcher (Linux PR_SET_PDEATHSIG; elsewhere only forwarding)."""
    launcher_pid = os.environ.get(LAUNCHER_PID_ENV)
    if not launcher_pid or not signal_on_parent_death(signal.SIGTERM):
        return
    if os.getppid() != int(launcher_pid):
        os.kill(os.getpid(), signal.SIGTERM)


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
    """Seconds from `now` (local time, as scontrol prints) to a preempted job's EndTime (the preemption
    + GraceTime); None when SLURM has not preempted it or the record does not say."""
    if record is None or record.preempt_time is None or record.end_time is None:
        return None
    try:
        return (datetime.fromisoformat(record.end_time) - now).total_seconds()
    except ValueError:
        return None


def decide_requeue(users_todo: int, requeues_done: int, limit: int, env: Mapping[str, str],
                   record: JobRecord | None = None) -> RequeueDecision:
    """Whether a stopping shard asks SLURM to requeue its job. `record` None (not known): as if SLURM had
    neither preempted nor requeued it (a requeue SLURM already does refuses the ask: still once).
    SLURM's own requeue is never asked for again; a preemption by SLURM is requeued whatever the limit,
    as SLURM would at the grace time's end; --requeue-limit bounds those of the shard's own warning
    signal (a time limit), so that a shard that cannot progress stops."""
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
    """SLURM's record of this job; None outside SLURM, or when scontrol does not answer in time (logged)."""
    job = own_slurm_job(env)
    if job is None:
        return None
    try:
        return (slurm or SlurmCommands()).job_state(job, timeout=JOB_QUERY_TIMEOUT_SECONDS)
    except SchedulerError as exc:
        log.warning("could not read SLURM's record of job %s (%s): deciding the requeue without it", job, exc)
        return None


def requeue_slurm_job(env: Mapping[str, str], slurm: SlurmCommands | None = None) -> str:
    """`scontrol requeue` this job, and only it (own_slurm_job); its id. Only after decide_requeue's yes."""
    job = own_slurm_job(env)
    assert job is not None  # decide_requeue says no outside SLURM
    (slurm or SlurmCommands()).requeue(job)
    return job


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
        state = ShardState.PREEMPTED if self.stop.preempted else ShardState.INTERRUPTED
        try:
            self.status.update(state=state.value, last_error=f"stopped by a second {signal_name}")
            if self.stop.preempted and not self._requeue_counted:
                # The grace time of SLURM's preemption ended before the drain did: SLURM requeues the job.
                self.count_slurm_requeue(read_own_job(os.environ))
        except Exception as exc:  # leaving at once matters more than the status line; say why it is stale
            log.error("could not mark %s %s: %s", self.paths.status, state.value, exc)
        finally:
            leave(self.stop.exit_code)

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
