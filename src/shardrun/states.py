"""The states of the things shardrun tracks, each named once: a user's outcome, a shard's state in
status.json, and a shard's phase in the launcher (launcher.json).

They are str enums, so they compare equal to the plain strings that the files on disk hold.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any, Iterable, Mapping


class UserStatus(StrEnum):
    """The `status` of a result row; a user's outcome is the worst status of its rows."""

    OK = "ok"
    SKIPPED = "skipped"  # by a rule of the analysis, with a reason
    FAILED = "failed"  # its analysis raised; the error is in errors.jsonl


STATUSES = tuple(status.value for status in UserStatus)


def user_outcome(rows: Iterable[Mapping[str, Any]]) -> UserStatus:
    """One user's outcome from its rows: failed if any row failed, skipped if every row was skipped,
    else ok. A user with no rows, or with a status nobody knows, counts as failed: it cannot be trusted.
    """
    statuses = {row.get("status") for row in rows}
    if not statuses or UserStatus.FAILED in statuses or not statuses <= set(STATUSES):
        return UserStatus.FAILED
    if statuses == {UserStatus.SKIPPED}:
        return UserStatus.SKIPPED
    return UserStatus.OK


class ShardState(StrEnum):
    """`state` in a shard's status.json."""

    STARTING = "starting"
    RUNNING = "running"
    COMPLETED = "completed"
    COMPLETED_WITH_FAILURES = "completed_with_failures"
    FAILED = "failed"  # stopped by an error of its own (a storage failure): resume after the fix
    INTERRUPTED = "interrupted"  # drained on a signal: resume to continue
    PREEMPTED = "preempted"  # drained on the scheduler's warning signal: requeued, or resume to continue
    KILLED = "killed"  # written by the launcher: the process died abnormally

    @property
    def active(self) -> bool:
        return self in (ShardState.STARTING, ShardState.RUNNING)


class ShardPhase(StrEnum):
    """A shard's phase as the launcher sees it (`phase` in launcher.json)."""

    WAITING = "waiting"  # not started yet, or waiting for its restart
    RUNNING = "running"
    SUSPENDED = "suspended"  # SIGSTOPped by --cpu-limit
    DONE = "done"  # exited and will not be started again

    @property
    def alive(self) -> bool:
        return self in (ShardPhase.RUNNING, ShardPhase.SUSPENDED)
