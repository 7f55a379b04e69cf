"""Fail fast: a shard whose first N users all fail with the same error class stops (pure; N = 0: off).

Only the first N count, so later or differing failures never stop a run by this rule.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from shardrun.states import UserStatus, failure_class

DEFAULT_FAIL_FAST = 5  # users: enough that chance rarely stops a shard, few enough to stop a doomed one in minutes


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
            f" run_production {run_flags + ' ' if run_flags else ''}--resume {shard_dir} --retry-failed (a launch_shards"
            " run: launch_shards --out RUN"
            " --retry-failed). --fail-fast 0 turns this check off.")
