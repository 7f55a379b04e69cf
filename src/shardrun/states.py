"""The states of the things shardrun tracks, each named once: a user's outcome, a shard's state in
status.json, and a shard's phase in the launcher (launcher.json).

They are str enums, so they compare equal to the plain strings that the files on disk hold.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from enum import StrEnum
from typing import Any


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


# A failed user's reason begins with the class of the error that failed it, "<ExceptionClass>: <message>"
# (shard.loop.failure_reason writes it so); a Java exception's class is its dotted Java name.
_LEADING_CLASS = re.compile(r"^\s*([A-Za-z_][\w.$]*)\s*:")
_FIRST_PHRASE = re.compile(r"[:;(]")
_MAX_CLASS_CHARS = 80


def failure_class(reason: Any) -> str:
    """The error class of a failed user, from its reason: the leading "<Class>:" (HeapTooSmall,
    java.lang.NullPointerException), else the reason's first phrase (up to its first ':', ';' or '(',
    as in "Java heap exhausted (...)"); "no reason given" for an empty one. Pure: the merged rows
    alone are enough, so a result set is classified without the shard dirs it came from."""
    text = "" if reason is None else str(reason).strip()
    match = _LEADING_CLASS.match(text)
    found = match.group(1) if match else _FIRST_PHRASE.split(text, maxsplit=1)[0].strip()
    if len(found) > _MAX_CLASS_CHARS:
        found = found[: _MAX_CLASS_CHARS - 3] + "..."
    return found or "no reason given"


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
