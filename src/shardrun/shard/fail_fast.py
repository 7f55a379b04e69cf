"""Fail fast: a shard whose first N users all fail with the same error class stops (pure).

A missing class on the classpath, a heap far too small, a broken input column: such a cause fails
every user alike, and a shard that goes on spends hours recording the same failure. The first N users
of a shard process are the sample: when all of them failed, with one error class, the shard stops
after committing them, and says the error and the fix. Only the first N count, so a run whose
failures come later (or differ) is never stopped by this rule. N = 0 turns it off.
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
    """`first`: (outcome, reason) of the users a shard process has ended so far, in order. The stop,
    once exactly `limit` users have ended and all failed with one error class; None otherwise, and for
    every user after the first `limit` (the loop asks after each user; only the limit-th can stop it)."""
    if limit <= 0 or len(first) != limit or any(status != UserStatus.FAILED for status, _ in first):
        return None
    classes = {failure_class(reason) for _, reason in first}
    if len(classes) != 1:
        return None
    return FailFastStop(limit, classes.pop(), first[0][1])


def fail_fast_message(stop: FailFastStop, shard: str, shard_dir: str, run_flags: str = "") -> str:
    """The shard's last error: what failed, the fix, and how to run the stopped shard again; `run_flags`
    ("--config FILE --full") make that a command run_production takes (it requires --full or --pilot, and
    its default config is another run's)."""
    return (f"shard {shard} stopped (fail fast): its first {stop.users} users all failed with {stop.error_class}"
            f" (e.g. {stop.example_reason[:500]}). Fix that cause (each user's error and Java stack are in"
            f" {shard_dir}/errors.jsonl), then run the shard again with its failed users:"
            f" run_production {run_flags + ' ' if run_flags else ''}--resume {shard_dir} --retry-failed (a launch_shards"
            " run: launch_shards --out RUN"
            " --retry-failed). --fail-fast 0 turns this check off.")
