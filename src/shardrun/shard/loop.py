"""The loop of one shard process: for each user, analyse -> commit -> status, with a drain on signals.

A user becomes done only by its commit (commits.GroupCommitter: the users that end within a second
share one batch file, published whole or not at all). One user's failure is recorded (errors.jsonl,
failed rows) and the loop goes on; a storage failure stops the shard clearly. Every way out (the end,
a drain, a preemption, a second signal, a failure) first commits the users already finished. On the
scheduler's warning signal (lifecycle.PreemptionNotice) the drain is bounded by the lead time: the user
in flight is abandoned uncommitted if it has not ended in time, the shard says `preempted` and asks
its scheduler to run it again (requeue.py) while users are left, unless SLURM's record of the job says
SLURM requeues it already (a preemption's grace time ended: then a plain TERM is a preemption too).
A shard whose first --fail-fast users all failed with one error class stops (fail_fast.py): state
`failed`, the error and its fix in status.json's last_error and the log, exit 1.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import traceback
from dataclasses import replace
from datetime import datetime, timezone
from functools import partial
from pathlib import Path
from typing import Any, Mapping, Sequence

from shardrun.storage.atomic import write_json_atomic
from shardrun.storage.commits import GroupCommitter, append_line_once, error_line
from shardrun.config import RunConfig
from shardrun.storage.durability import SHARD, durable_write
from shardrun.errors import (
    EXIT_INTERRUPTED, EXIT_OK, EXIT_PREEMPTED, EXIT_USERS_FAILED, AlreadyCommitted, HeapTooSmall, SchedulerError,
    StorageError,
)
from shardrun.platforms import peak_rss, process_start_time
from shardrun.shard.attempts import Attempts, carried_memory, scheduler_memory_bytes
from shardrun.shard.fail_fast import FailFastStop, fail_fast_message, fail_fast_stop
from shardrun.shard.lifecycle import StopFlag
from shardrun.shard.plan import ShardPlan
from shardrun.shard.requeue import (
    decide_requeue, grace_seconds_left, own_slurm_job, read_own_job, requeue_slurm_job, requeued_by_slurm,
)
from shardrun.shard.user_log import UserLog
from shardrun.shard.prepare import ResolvedDirs, WorkerOptions
from shardrun.states import ShardState, UserStatus, user_outcome
from shardrun.shard.jvm import (
    is_heap_exhaustion, java_class_name, java_stack, start_jvm, task_classpath, task_jvm_options, task_jvm_provenance,
)
from shardrun.scheduler.slurm import JobRecord
from shardrun.storage.attempts import ATTEMPT
from shardrun.storage.status import ShardStatus, status_document
from shardrun.task import Dataset, Task

log = logging.getLogger(__name__)

# How long a preemption's abandon waits for a commit the loop is writing, before leaving without the
# users it holds (they are recomputed after the requeue); within the margin kept before the kill.
ABANDON_COMMIT_WAIT_SECONDS = 2.0


class ShardLoop:
    def __init__(
        self,
        config: RunConfig,
        task: Task,
        dataset: Dataset | None,  # None when the plan has no user to do
        dirs: ResolvedDirs,
        plan: ShardPlan,
        options: WorkerOptions,
        previous_outcomes: Sequence[str],
        stop: StopFlag,
        earlier_attempts: Mapping[str, int] | None = None,  # storage.attempts.recorded_attempts
    ):
        self.config = config
        self.task = task
        self.dataset = dataset
        self.dirs = dirs
        self.plan = plan
        self.options = options
        self.stop = stop
        # The drain ends once: by the loop, or by the abandon timer of a preemption (whichever is first).
        self._ending_lock = threading.Lock()
        self._ending = False
        self._requeue_counted = False  # this process has counted its job's requeue (by SLURM or by itself)
        self._abandon_after: float | None = None  # seconds after the preemption signal (_arm_abandon_timer)
        previous = list(previous_outcomes)
        self.status = ShardStatus(
            dirs.shard,
            {
                "shard": str(dirs.spec),
                "shard_index": dirs.spec.index,
                "shard_count": dirs.spec.count,
                "run_dir": str(dirs.run.dir),
                "config_hash": config.hash,
                "jvm": config.jvm.jvm_args(),
                "threads": config.jvm.threads,
                "users_total": len(plan.assigned),
                "users_done": len(plan.done),
                "users_ok": previous.count(UserStatus.OK),
                "users_failed": previous.count(UserStatus.FAILED),
                "users_skipped": previous.count(UserStatus.SKIPPED),
                "users_todo": len(plan.todo),
                "resumed_with_done": len(plan.done),
                # reports of JVMs that crashed in this shard dir before (-XX:ErrorFile), kept across restarts
                "jvm_crash_logs": [str(p) for p in dirs.shard.hs_err_files()] or None,
                "requeues": previous_requeues(dirs.shard.status),
                "slurm_mem_bytes": scheduler_memory_bytes(os.environ),
                **carried_memory(dirs.shard.status),  # the peaks of this shard's earlier processes
                "process_starts": process_starts(dirs.shard.status),  # run.png's start-up and waiting
            },
            write=lambda path, doc: durable_write("status.json", path.parent, lambda: write_json_atomic(path, doc),
                                                  remedy=SHARD),
            peak_rss=peak_rss,
        )
        self.attempts = Attempts(earlier_attempts or {})
        self.commits = GroupCommitter(
            dirs.shard, {"config_hash": config.hash, "shard": str(dirs.spec), "host": socket.gethostname()},
            committed=plan.done, interval_seconds=options.commit_interval_seconds,
            guard=partial(durable_write, remedy=SHARD),
            on_commit=self._count_committed,
        )
        self._outcomes_queued: dict[str, UserStatus] = {}  # ended users waiting for their batch
        self._first_users: list[tuple[UserStatus, str]] = []  # (outcome, reason) of the first --fail-fast users
        self._fail_fast: FailFastStop | None = None
        self.user_log = UserLog(log)

    def run(self) -> int:
        self.status.update(state=ShardState.STARTING.value)
        log.info(
            "shard %s: %d users assigned, %d already committed, %d to do",
            self.dirs.spec, len(self.plan.assigned), len(self.plan.done), len(self.plan.todo),
        )
        if self.plan.todo:
            self._start_jvm()
        else:
            # A resume of a finished shard: the JVM (seconds, and its whole heap) would serve no user.
            log.info("shard %s: no user to do, so no JVM is started", self.dirs.spec)
        self.stop.on_second = self._stop_now
        self.stop.on_preempt = self._arm_abandon_timer
        if self.stop.preempted:  # the warning came while the data was read or the JVM started
            self._arm_abandon_timer()
        self.status.start_heartbeat(self.options.heartbeat_seconds)
        self.commits.start_flusher()
        try:
            for position, user_id in enumerate(self.plan.todo):
                if position and self.options.cooldown_seconds:
                    self._cool_down()
                if self.stop.requested_by:
                    break
                self._run_user(user_id)
                if self._fail_fast is not None:
                    break
            self.commits.flush()
        except BaseException as exc:
            self.commits.try_flush()  # the users that ended are whole: keep them if the disk still lets us
            self._record_shard_failure(exc)
            raise
        finally:
            self.commits.stop_flusher()
            self.status.stop_heartbeat()
        return self._finish()

    def _start_jvm(self) -> None:
        settings = self.config.settings
        try:
            # The task's flags first, so that the config's jvm.options win; a JVM crash writes its hs_err
            # file into the shard dir, where the launcher and users look.
            options = (*task_jvm_options(self.task, settings), *self.config.jvm.options,
                       f"-XX:ErrorFile={self.dirs.shard.hs_err_pattern}")
            jvm_info = start_jvm(replace(self.config.jvm, options=options),
                                 task_classpath(self.task, settings, self.config.jvm))
            provenance = task_jvm_provenance(self.task, jvm_info.classpath)
        except Exception as exc:
            self.status.update(state=ShardState.FAILED.value, last_error=str(exc))
            raise
        core_keys = self.status.snapshot().keys() | {"java_version", "exit_code"}  # never overridden by a task
        self.status.update(state=ShardState.RUNNING.value, java_version=jvm_info.java_version,
                           **{key: value for key, value in provenance.items() if key not in core_keys})

    def _cool_down(self) -> None:
        """Pause between users (--cooldown), waking early when a stop is requested."""
        until = time.monotonic() + self.options.cooldown_seconds
        while not self.stop.requested_by and time.monotonic() < until:
            time.sleep(min(0.2, until - time.monotonic()))

    def _record_shard_failure(self, exc: BaseException) -> None:
        try:
            self.status.update(state=ShardState.FAILED.value, last_error=f"{type(exc).__name__}: {exc}")
        # The disk that failed the shard may refuse this too (as a StorageError when the status writer
        # goes through durable_write); the shard's first error is the one to report, not this one.
        except (OSError, StorageError) as status_error:
            log.error("could not record the failure in %s: %s", self.dirs.shard.status, status_error)

    def _stop_now(self, signal_name: str) -> None:
        if self._requeue_counted:
            # The drain is over and the requeue recorded: this is SLURM stopping this run for that requeue.
            log.info("%s: SLURM stops this run of the shard for its requeue", signal_name)
            logging.shutdown()
            os._exit(EXIT_PREEMPTED)
        log.warning("second %s: stopping now; the user in flight is abandoned uncommitted", signal_name)
        # Not waiting: the signal may have interrupted this very thread inside a commit.
        self.commits.try_flush(wait_seconds=0)
        # After a preemption notice the second signal is the scheduler's own stop: still a preemption.
        state, code = ((ShardState.PREEMPTED, EXIT_PREEMPTED) if self.stop.preempted
                       else (ShardState.INTERRUPTED, EXIT_INTERRUPTED))
        try:
            self.status.update(state=state.value, last_error=f"stopped by a second {signal_name}")
            if self.stop.preempted and not self._requeue_counted:
                # The grace time of SLURM's preemption ended before the drain did: SLURM requeues the job.
                self._count_slurm_requeue(read_own_job(os.environ))
        except Exception as exc:  # leaving at once matters more than the status line; say why it is stale
            log.error("could not mark %s %s: %s", self.dirs.shard.status, state.value, exc)
        finally:
            logging.shutdown()
            os._exit(code)

    def _arm_abandon_timer(self) -> None:
        notice = self.stop.preemption
        assert notice is not None and self.stop.preempted_at is not None
        since_signal = time.monotonic() - self.stop.preempted_at
        # A preemption by SLURM stops the job when its grace time ends, which may come before the lead.
        grace_left = grace_seconds_left(read_own_job(os.environ), datetime.now())
        if grace_left is not None and since_signal + grace_left < notice.lead_seconds:
            notice = replace(notice, lead_seconds=max(since_signal + grace_left, 0.0))
            log.warning("SLURM's grace time for this preemption ends in %.0f s, before the lead of %.0f s: the user"
                        " in flight is kept if it ends within %.0f s of %s", grace_left,
                        self.stop.preemption.lead_seconds, notice.abandon_after, self.stop.requested_by)
        self._abandon_after = notice.abandon_after
        timer = threading.Timer(max(notice.abandon_after - since_signal, 0.0), self._abandon)
        timer.daemon = True
        timer.start()

    def _claim_ending(self) -> bool:
        with self._ending_lock:
            first, self._ending = not self._ending, True
            return first

    def _abandon(self) -> None:
        """The lead time is nearly over and the user in flight has not ended: give it up uncommitted
        (commits are atomic, so it is simply not done) and leave before the scheduler's kill."""
        if not self._claim_ending():
            return  # the loop is already ending the shard itself
        user = self.status.snapshot().get("current_user")
        log.warning("the user in flight (%r) did not end within %.0f s of %s: abandoned uncommitted", user,
                    self._abandon_after, self.stop.requested_by)
        self.commits.try_flush(wait_seconds=ABANDON_COMMIT_WAIT_SECONDS)
        try:
            self.status.update(state=ShardState.PREEMPTED.value, current_user=None,
                               last_error=f"preempted by {self.stop.requested_by}; user {user!r} abandoned uncommitted")
            self._requeue_if_work_left(read_own_job(os.environ))
        except Exception as exc:  # leaving before the kill matters more than the status line
            log.error("could not record the preemption in %s: %s", self.dirs.shard.status, exc)
        finally:
            logging.shutdown()
            os._exit(EXIT_PREEMPTED)

    def _requeue_if_work_left(self, record: JobRecord | None) -> None:
        """Have the job run again while users are left: counted, and asked for unless SLURM requeues it
        already (requeue.decide_requeue decides from SLURM's `record` of the job)."""
        doc = self.status.snapshot()
        limit = self.stop.preemption.requeue_limit if self.stop.preemption is not None else 0
        decision = decide_requeue(doc["users_todo"], doc["requeues"], limit, os.environ, record)
        if decision.requeued_by_slurm:
            self._count_slurm_requeue(record)
            return
        if not decision.requeue:
            log.warning("not requeueing shard %s: %s", self.dirs.spec, decision.reason)
            return
        # Counted and said before the request: once SLURM takes it, its TERM stops this process at once.
        count = doc["requeues"] + 1
        why = f"requeue {count}; {decision.reason}" if decision.reason else f"{count} of at most {limit}"
        log.warning("shard %s asks SLURM to requeue it, job %s (%s); %d users to do", self.dirs.spec,
                    own_slurm_job(os.environ), why, doc["users_todo"])
        self.status.update(requeues=count)
        self._requeue_counted = True
        try:
            requeue_slurm_job(os.environ)
        except SchedulerError as exc:
            self._requeue_counted = False
            self.status.update(requeues=doc["requeues"], last_error=str(exc))
            log.error("%s", exc)

    def _count_slurm_requeue(self, record: JobRecord | None) -> None:
        """SLURM requeues this job itself (its record says so): one more requeue, none asked for."""
        if not requeued_by_slurm(record, os.environ):
            return
        self._requeue_counted = True
        requeues = self.status.snapshot()["requeues"] + 1
        self.status.update(requeues=requeues)
        log.warning("shard %s: SLURM requeued its job itself (a preemption's grace time ended, or scontrol requeue),"
                    " requeue %d; it runs again without asking", self.dirs.spec, requeues)

    def _run_user(self, user_id: str) -> None:
        self.status.begin_user(user_id)
        attempt = self.attempts.start(user_id)
        failure: Exception | None = None
        reason = ""
        try:
            rows = list(self.task.analyse(self.dataset, user_id, self.config.settings))
        except Exception as exc:  # one user's failure must not end the shard: record it and go on
            failure = exc
            reason = failure_reason(exc, self.task)
            rows = list(self.task.failed_rows(self.config.settings, user_id, reason))
        attempt.stop()
        bookkeeping = {"shard": str(self.dirs.spec), "seconds": attempt.seconds, "config_hash": self.config.hash}
        rows = [{**row, **bookkeeping} for row in rows]
        outcome = user_outcome(rows)
        record = attempt.record(outcome, failure)
        if failure is not None:
            self._record_error(user_id, failure, record)
        self._outcomes_queued[user_id] = outcome  # before add: the background flusher may commit it at once
        try:
            self.commits.add(user_id, rows, replaces=user_id in self.plan.retry, attempt=record)
        except AlreadyCommitted:
            self._outcomes_queued.pop(user_id)
            log.error("user %r was already committed in %s; keeping the first commit", user_id, self.dirs.shard.dir)
        self.status.end_user(attempt.heap_used_bytes)
        self.user_log.user_ended(user_id, outcome, attempt.seconds)
        if len(self._first_users) < self.options.fail_fast:
            self._first_users.append((outcome, reason))
            self._fail_fast = fail_fast_stop(self._first_users, self.options.fail_fast)
        self.commits.flush_if_due()

    def _count_committed(self, user_ids: Sequence[str]) -> None:
        self.status.count_committed([self._outcomes_queued.pop(user_id) for user_id in user_ids])

    def _record_error(self, user_id: str, exc: BaseException, attempt: Mapping[str, Any]) -> None:
        record: dict[str, Any] = {
            "user_id": user_id,
            "shard": str(self.dirs.spec),
            "error_type": type(exc).__name__,
            "message": str(exc),
            "java_class": java_class_name(exc) or java_class_name(exc.__cause__ or exc),
            "java_stack": java_stack(exc) or (java_stack(exc.__cause__) if exc.__cause__ else None),
            "traceback": "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)),
            "xmx": self.config.jvm.xmx,
            ATTEMPT: attempt,
        }
        if isinstance(exc, HeapTooSmall):
            record["heap_needed_bytes"] = exc.needed_bytes
        elif is_heap_exhaustion(exc, self.task):
            record["heap_needed_bytes"] = None
        line = error_line(record)  # once: a retry appends this very line, or finds it landed
        durable_write("errors.jsonl", self.dirs.shard.dir, lambda: append_line_once(self.dirs.shard.errors, line),
                      remedy=SHARD)
        reason = failure_reason(exc, self.task)
        self.status.update(last_error=f"{user_id}: {reason}")
        log.error("user %r failed: %s", user_id, reason)

    def _finish(self) -> int:
        if not self._claim_ending():
            threading.Event().wait()  # the abandon timer is ending the process (os._exit)
        doc = self.status.snapshot()
        # After a stop signal, SLURM's record tells a preemption whose grace time ended, or an admin's
        # requeue (SLURM runs the job again: preempted), from a plain stop (scancel: interrupted).
        record = read_own_job(os.environ) if self.stop.requested_by else None
        if doc["users_todo"] > 0 and (self.stop.preempted or requeued_by_slurm(record, os.environ)):
            self.status.update(state=ShardState.PREEMPTED.value, last_error=f"preempted by {self.stop.requested_by}")
            log.warning("shard %s preempted with %d users to do", self.dirs.spec, doc["users_todo"])
            self._requeue_if_work_left(record)
            return EXIT_PREEMPTED
        if self.stop.requested_by and doc["users_todo"] > 0:
            self.status.update(state=ShardState.INTERRUPTED.value, last_error=f"stopped by {self.stop.requested_by}")
            log.warning("shard %s interrupted with %d users to do; resume with --resume %s",
                        self.dirs.spec, doc["users_todo"], self.dirs.shard.dir)
            return EXIT_INTERRUPTED
        if self._fail_fast is not None and doc["users_todo"] > 0:
            mode = "--full" if self.options.pilot is None else f"--pilot {self.options.pilot}"
            config = f"--config {self.config.source} " if self.config.source is not None else ""
            message = fail_fast_message(self._fail_fast, str(self.dirs.spec), str(self.dirs.shard.dir), config + mode)
            self.status.update(state=ShardState.FAILED.value, last_error=message)
            log.error("%s", message)
            return EXIT_USERS_FAILED
        # SLURM's TERM came during the last user: the drain finished it; SLURM's next run finds nothing to do.
        self._count_slurm_requeue(record)
        failed = doc["users_failed"] > 0
        state = ShardState.COMPLETED_WITH_FAILURES if failed else ShardState.COMPLETED
        self.status.update(state=state.value, eta_seconds=0)
        log.info("shard %s finished: %d ok, %d skipped, %d failed", self.dirs.spec,
                 doc["users_ok"], doc["users_skipped"], doc["users_failed"])
        return EXIT_USERS_FAILED if failed else EXIT_OK


def previous_requeues(status_path: Path) -> int:
    """How often this shard's job was requeued so far, by its own request or by SLURM's (kept in status.json
    across starts)."""
    count = status_document(status_path).get("requeues")
    return count if isinstance(count, int) and count >= 0 else 0


def process_starts(status_path: Path, keep: int = 100) -> list[str]:
    """When this shard's processes started: earlier ones (kept in status.json across starts) and this
    one, in UTC with milliseconds; the last `keep`."""
    earlier = status_document(status_path).get("process_starts")
    earlier = [s for s in earlier if isinstance(s, str)] if isinstance(earlier, list) else []
    started = process_start_time() or time.time()
    return [*earlier, datetime.fromtimestamp(started, timezone.utc).isoformat(timespec="milliseconds")][-keep:]


def failure_reason(exc: BaseException, task: Task | None = None) -> str:
    if is_heap_exhaustion(exc, task) and not isinstance(exc, HeapTooSmall):
        return f"Java heap exhausted ({exc}); raise jvm.xmx and retry the failed users (--retry-failed)"
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:500]
