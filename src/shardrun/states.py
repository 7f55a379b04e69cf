"""The states shardrun tracks (user outcome, shard state, launcher phase), each named once.

str enums, so they compare equal to the plain strings on disk.
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
    """failed if any row failed (or no rows, or an unknown status), skipped if all skipped, else ok."""
    statuses = {row.get("status") for row in rows}
    if not statuses or UserStatus.FAILED in statuses or not statuses <= set(STATUSES):
        return UserStatus.FAILED
    if statuses == {UserStatus.SKIPPED}:
        return UserStatus.SKIPPED
    return UserStatus.OK


# A failed user's reason begins with the class of the error that failed it, "<ExceptionClass>: <message>"
# (shard.attempts.failure_reason writes it so); a Java exception's class is its dotted Java name.
_LEADING_CLASS = re.compile(r"^\s*([A-Za-z_][\w.$]*)\s*:")
_FIRST_PHRASE = re.compile(r"[:;(]")
_MAX_CLASS_CHARS = 80


def failure_class(reason: Any) -> str:
    """A failed user's error class from its reason: the leading "<Class>:", else its first phrase (pure)."""
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
