"""The loop of one shard process: for each user, analyse -> commit -> status, with a drain on signals.

A user is done only by its commit; every way out first commits the users already finished. What the log
says of users (UserLog, shard.log) and fail fast (a shard whose first N users all fail with one error
class stops: only the first N count, so later or differing failures never stop a run by this rule).
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shardrun.config import RunConfig
from shardrun.errors import EXIT_OK, EXIT_USERS_FAILED, AlreadyCommitted, StorageError
from shardrun.shard.attempts import Attempts, error_record, failure_reason, shard_committer, shard_status, write_error
from shardrun.shard.jvm import start_task_jvm
from shardrun.shard.lifecycle import ShardEnding, StopFlag
from shardrun.shard.prepare import PreparedShard, ShardOptions
from shardrun.states import ShardState, UserStatus, failure_class, user_outcome
from shardrun.storage.commits import read_errors, recorded_attempts

log = logging.getLogger(__name__)

SLOW_USER_SECONDS = 1.0
PROGRESS_EVERY_SECONDS = 30.0


class ShardLoop:
    def __init__(self, config: RunConfig, shard: PreparedShard, options: ShardOptions, stop: StopFlag):
        """`shard`: its plan, dataset and committed users as of the lock (resume_under_lock)."""
        self.config = config
        self.task, self.dataset, self.dirs, self.plan = shard.task, shard.dataset, shard.dirs, shard.plan
        self.options = options
        self.stop = stop
        dirs, plan = self.dirs, self.plan
        previous = [user_outcome(shard.committed[u].rows) for u in plan.done]
        # Retried users' attempts are numbered on from those recorded.
        earlier = recorded_attempts(read_errors(dirs.shard), {u: shard.committed[u].records for u in plan.retry})
        self.status = shard_status(dirs.shard, {
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
        })
        self.attempts = Attempts(earlier)
        self.commits = shard_committer(dirs.shard, {"config_hash": config.hash, "shard": str(dirs.spec)}, plan.done,
                                       options.commit_interval_seconds, self._count_committed)
        # The drain ends once: by the loop, or by the abandon timer of a preemption (whichever is first).
        self.ending = ShardEnding(stop, self.status, lambda wait: self.commits.try_flush(wait_seconds=wait),
                                  str(dirs.spec), dirs.shard)
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
        self.stop.on_second = self.ending.stop_now
        self.stop.on_preempt = self.ending.arm_abandon_timer
        if self.stop.preempted:  # the warning came while the data was read or the JVM started
            self.ending.arm_abandon_timer()
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
        try:
            java_version, provenance = start_task_jvm(self.task, self.config.settings, self.config.jvm,
                                                  self.dirs.shard.hs_err_pattern)
        except Exception as exc:
            self.status.update(state=ShardState.FAILED.value, last_error=str(exc))
            raise
        core_keys = self.status.snapshot().keys() | {"java_version", "exit_code"}  # never overridden by a task
        self.status.update(state=ShardState.RUNNING.value, java_version=java_version,
                           **{key: value for key, value in provenance.items() if key not in core_keys})

    def _cool_down(self) -> None:
        """Pause between users (--cooldown), waking early when a stop is requested."""
        until = time.monotonic() + self.options.cooldown_seconds
        while not self.stop.requested_by and time.monotonic() < until:
            time.sleep(min(0.2, until - time.monotonic()))

    def _record_shard_failure(self, exc: BaseException) -> None:
        try:
            self.status.update(state=ShardState.FAILED.value, last_error=f"{type(exc).__name__}: {exc}")
        # The failed disk may refuse this too; the shard's first error is the one to report.
        except (OSError, StorageError) as status_error:
            log.error("could not record the failure in %s: %s", self.dirs.shard.status, status_error)

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
            self._record_error(user_id, failure, reason, record)
        self._outcomes_queued[user_id] = outcome  # before add: the background flusher may commit it at once
        try:
            self.commits.add(user_id, rows, replaces=user_id in self.plan.retry, attempt=record)
        except AlreadyCommitted:
            self._outcomes_queued.pop(user_id)
            log.error("user %r was already committed in %s; keeping the first commit", user_id, self.dirs.shard.dir)
        self.status.end_user(attempt.heap_used_bytes)
        self.user_log.user_ended(user_id, outcome, record["seconds"])  # set by record()
        if len(self._first_users) < self.options.fail_fast:
            self._first_users.append((outcome, reason))
            self._fail_fast = fail_fast_stop(self._first_users, self.options.fail_fast)
        self.commits.flush_if_due()

    def _count_committed(self, user_ids: Sequence[str]) -> None:
        self.status.count_committed([self._outcomes_queued.pop(user_id) for user_id in user_ids])

    def _record_error(self, user_id: str, exc: BaseException, reason: str, attempt: Mapping[str, Any]) -> None:
        write_error(self.dirs.shard, error_record(user_id, str(self.dirs.spec), exc, self.config.jvm.xmx, attempt,
                                                  self.task))
        self.status.update(last_error=f"{user_id}: {reason}")
        log.error("user %r failed: %s", user_id, reason)

    def _finish(self) -> int:
        if not self.ending.claim():
            threading.Event().wait()  # the abandon timer is ending the process (os._exit)
        doc = self.status.snapshot()
        stopped, record = self.ending.stopped(doc)
        if stopped is not None:
            return stopped
        if self._fail_fast is not None and doc["users_todo"] > 0:
            mode = "--full" if self.options.pilot is None else f"--pilot {self.options.pilot}"
            config = f"--config {self.config.source} " if self.config.source is not None else ""
            message = fail_fast_message(self._fail_fast, str(self.dirs.spec), str(self.dirs.shard.dir), config + mode)
            self.status.update(state=ShardState.FAILED.value, last_error=message)
            log.error("%s", message)
            return EXIT_USERS_FAILED
        # SLURM's TERM came during the last user: the drain finished it; SLURM's next run finds nothing to do.
        self.ending.count_slurm_requeue(record)
        failed = doc["users_failed"] > 0
        state = ShardState.COMPLETED_WITH_FAILURES if failed else ShardState.COMPLETED
        self.status.update(state=state.value, eta_seconds=0)
        log.info("shard %s finished: %d ok, %d skipped, %d failed", self.dirs.spec,
                 doc["users_ok"], doc["users_skipped"], doc["users_failed"])
        return EXIT_USERS_FAILED if failed else EXIT_OK


class UserLog:
    """Its own line for a slow, skipped or failed user; quick ok users summed into an INFO line at most every
    30 s (a line each cost about 6% of a 100,000-user shard)."""

    def __init__(self, logger: logging.Logger, clock: Callable[[], float] = time.monotonic):
        self._log, self._clock = logger, clock
        self._last_line = clock()
        self._quiet = 0  # quick ok users not yet in a progress line
        self._ended = 0  # users ended in this process

    def user_ended(self, user_id: str, outcome: UserStatus, seconds: float) -> None:
        self._ended += 1
        if outcome != UserStatus.OK or seconds >= SLOW_USER_SECONDS:
            self._log.info("user %r %s in %.2f s", user_id, outcome, seconds)
        else:
            self._quiet += 1
            self._log.debug("user %r %s in %.2f s", user_id, outcome, seconds)
        now = self._clock()
        if self._quiet and now - self._last_line >= PROGRESS_EVERY_SECONDS:
            self._log.info("%d more users ok, each in under %.0f s (%d ended in this process so far, the last %r)",
                           self._quiet, SLOW_USER_SECONDS, self._ended, user_id)
            self._quiet, self._last_line = 0, now


def attach_shard_log(path: Path) -> None:
    handler = ShardLogFile(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.getLogger().addHandler(handler)


class ShardLogFile(logging.FileHandler):
    """shard.log; on a failing disk said once on stderr, not a traceback for every line."""

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


@dataclass(frozen=True)
class FailFastStop:
    """Why the shard stops: the error class its first users share and one of their reasons."""

    users: int
    error_class: str
    example_reason: str


def fail_fast_stop(first: Sequence[tuple[UserStatus, str]], limit: int) -> FailFastStop | None:
    """The stop once exactly `limit` users of `first` ended, all failed with one error class; else None."""
    if limit <= 0 or len(first) != limit or any(status != UserStatus.FAILED for status, _ in first):
        return None
    classes = {failure_class(reason) for _, reason in first}
    if len(classes) != 1:
        return None
    return FailFastStop(limit, classes.pop(), first[0][1])


def fail_fast_message(stop: FailFastStop, shard: str, shard_dir: str, run_flags: str = "") -> str:
    """The shard's last error: what failed, the fix, and the command (with `run_flags`) to run it again."""
    return (f"shard {shard} stopped (fail fast): its first {stop.users} users all failed with {stop.error_class}"
            f" (e.g. {stop.example_reason[:500]}). Fix that cause (each user's error and Java stack are in"
            f" {shard_dir}/errors.jsonl), then run the shard again with its failed users:"
            f" run_production {run_flags + ' ' if run_flags else ''}--resume {shard_dir} --retry-failed"
            " (a launch_shards run: launch_shards --out RUN"
            " --retry-failed). --fail-fast 0 turns this check off.")
