"""The run-level verdict of a result set, pure: ok, skipped and failed counts, and whether it may be used.

It passes when a user was analysed and failures are within --max-failed (default 0). The error class
is read from the rows' reason, not errors.jsonl, so a set merged from anywhere is classified alike.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import pandas as pd

from shardrun.results.tolerance import NO_FAILED, FailedTolerance
from shardrun.states import STATUSES, UserStatus, failure_class

# What to do about the error classes the core itself raises; any other class is shown with one of its
# users and the start of its reason (a task's reason names its own fix).
KNOWN_FIXES = MappingProxyType({
    "HeapTooSmall": "raise jvm.xmx in the config, or --xmx",
    "Java heap exhausted": "raise jvm.xmx in the config, or --xmx",
})
MAX_REASONS_SHOWN = 5  # groups of skip reasons and error classes in a line; then "and N more"
_REASON_CHARS = 120
_DIGITS = re.compile(r"\d+(?:\.\d+)?")


@dataclass(frozen=True)
class ReasonGroup:
    """Users that share a reason (skipped) or an error class (failed), with one of them as the example."""

    label: str  # the skip reason as its first user's row says it, or the error class
    users: int
    example_user: str
    example_reason: str
    variants: int = 1  # distinct reason texts in the group (skip reasons that differ only in their numbers)


@dataclass(frozen=True)
class UserOutcomes:
    """The users of a result set by outcome (a user's outcome is the worst status of its rows)."""

    users: int
    ok: int
    skipped: list[ReasonGroup] = field(default_factory=list)  # most users first
    failed: list[ReasonGroup] = field(default_factory=list)

    @property
    def skipped_users(self) -> int:
        return sum(group.users for group in self.skipped)

    @property
    def failed_users(self) -> int:
        return sum(group.users for group in self.failed)

    def to_json(self) -> dict[str, Any]:
        return {
            "total": self.users, "ok": self.ok, "skipped": self.skipped_users, "failed": self.failed_users,
            "skipped_by_reason": {group.label: group.users for group in self.skipped},
            "failed_by_class": {group.label: group.users for group in self.failed},
        }


def _texts(column: pd.Series) -> pd.Series:
    """A column as plain text, a missing value as ""."""
    return column.astype("object").where(column.notna(), "").astype(str).str.strip()


def _groups(users: pd.DataFrame, key: pd.Series) -> list[ReasonGroup]:
    """`users` (user, reason), one row per user, grouped by `key`; the most users first, then by label."""
    groups = []
    for label, members in users.groupby(key, sort=False):
        first = members.iloc[0]
        groups.append(ReasonGroup(str(label), len(members), str(first["user"]), str(first["reason"]),
                                  variants=members["reason"].nunique()))
    return sorted(groups, key=lambda group: (-group.users, group.label))


def count_outcomes(frame: pd.DataFrame, user_column: str) -> UserOutcomes:
    """Each user's outcome from its rows (states.user_outcome's rule, for every user at once): failed
    when a row failed or has no known status, skipped when every row was skipped, else ok. Skipped
    users are grouped by their reason with its numbers aside ("only 3 observations" and "only 0
    observations" are one reason), failed users by error class (states.failure_class)."""
    if frame.empty:
        return UserOutcomes(users=0, ok=0)
    status = frame["status"]
    known = status.isin(STATUSES).to_numpy(dtype=bool)  # a missing status is not known
    failed_row = status.eq(UserStatus.FAILED.value).fillna(False).to_numpy(dtype=bool) | ~known
    skipped_row = status.eq(UserStatus.SKIPPED.value).fillna(False).to_numpy(dtype=bool)
    flags = pd.DataFrame({"failed": failed_row, "skipped": skipped_row}, index=frame.index)
    per_user = flags.groupby(frame[user_column], sort=False, dropna=False).agg(failed=("failed", "any"),
                                                                               skipped=("skipped", "all"))
    skipped_ids = per_user.index[~per_user["failed"] & per_user["skipped"]]
    has_reason = "reason" in frame.columns

    def first_rows(mask) -> pd.DataFrame:
        """(user, status, reason) as text of the first row of each user among the rows of `mask`."""
        chosen = frame.loc[mask]
        chosen = chosen.loc[~chosen[user_column].duplicated()]
        reason = _texts(chosen["reason"]) if has_reason else pd.Series("", index=chosen.index)
        return pd.DataFrame({"user": _texts(chosen[user_column]), "status": _texts(chosen["status"]),
                             "reason": reason})

    # A user's reason: that of its first failed row (failed), or of its first row (skipped).
    failed_rows = first_rows(failed_row)
    failed_rows["reason"] = failed_rows["reason"].where(
        failed_rows["status"].eq(UserStatus.FAILED.value),
        "status " + failed_rows["status"].map(repr) + " is not one of " + ", ".join(STATUSES))
    skipped_rows = first_rows(frame[user_column].isin(skipped_ids).to_numpy(dtype=bool))
    failed = _groups(failed_rows, failed_rows["reason"].map(failure_class))
    skipped = _groups(skipped_rows, skipped_rows["reason"].map(lambda text: _DIGITS.sub("#", text)
                                                                 or "no reason given"))
    # A group's label is a reason as written (its first user's), not the masked key.
    skipped = [ReasonGroup(group.example_reason or "no reason given", group.users, group.example_user,
                           group.example_reason, group.variants) for group in skipped]
    return UserOutcomes(users=len(per_user), ok=len(per_user) - len(failed_rows) - len(skipped_rows),
                        skipped=skipped, failed=failed)


# --- words ---------------------------------------------------------------------------------------


def _cut(text: str, limit: int = _REASON_CHARS) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _plural(count: int, word: str) -> str:
    return f"{count} {word}{'' if count == 1 else 's'}"


def _listed(parts: Sequence[str], what: str) -> str:
    shown = list(parts[:MAX_REASONS_SHOWN])
    if len(parts) > MAX_REASONS_SHOWN:
        shown.append(f"and {len(parts) - MAX_REASONS_SHOWN} more {what}")
    return ", ".join(shown)


def skipped_part(group: ReasonGroup) -> str:
    similar = f" (and {group.variants - 1} alike but for numbers)" if group.variants > 1 else ""
    return f"{group.users} {_cut(group.label)!r}{similar}"


def failed_part(group: ReasonGroup) -> str:
    fix = KNOWN_FIXES.get(group.label)
    if fix is None:
        said = group.example_reason
        # A Java exception's message repeats its class ("java.lang.X: java.lang.X: text"): said once, in the label.
        while said.startswith(f"{group.label}:"):
            said = said[len(group.label) + 1:].lstrip()
        fix = f"e.g. user {group.example_user!r}: {_cut(said)}"
    return f"{group.users} {group.label} ({fix})"


@dataclass(frozen=True)
class Rerun:
    """Where the failed users' errors are and the command that runs only them again, for the message."""

    errors: str = "each shard dir's errors.jsonl"
    # run_production takes no resume without --full (or the run's --pilot N) and its run's own config
    command: str = ("run_production --config CONFIG --full --resume SHARD_DIR --retry-failed (with the run's"
                    " config, and its --pilot N in place of --full for a pilot) for each shard dir the set was merged"
                    " from, then merge again")


def verdict_problems(outcomes: UserOutcomes, tolerance: FailedTolerance = NO_FAILED,
                     rerun: Rerun = Rerun()) -> list[str]:
    """What keeps these outcomes from being a result: failed users beyond the tolerance, no user analysed."""
    problems = []
    if outcomes.users == 0:
        return ["the result set has no users: nothing was analysed"]
    failed = outcomes.failed_users
    if failed and not tolerance.allows(failed, outcomes.users):
        problems.append(
            f"{_plural(failed, 'user')} of {outcomes.users} failed (--max-failed {tolerance}):"
            f" {_listed([failed_part(group) for group in outcomes.failed], 'error classes')}; see {rerun.errors}"
            f" for each failure's message and stack; once the cause is fixed, run only them again: {rerun.command}"
        )
    if outcomes.ok == 0:
        if failed == 0:
            problems.append(
                f"nothing was analysed: every one of the {_plural(outcomes.users, 'user')} was skipped"
                f" ({_listed([skipped_part(group) for group in outcomes.skipped], 'reasons')}); the reasons say"
                " what to change in the input data or the task's settings"
            )
        else:
            problems.append(f"nothing was analysed: of {_plural(outcomes.users, 'user')}, {failed} failed and"
                            f" {outcomes.skipped_users} skipped; no user has a result")
    return problems


def outcome_lines(outcomes: UserOutcomes, tolerance: FailedTolerance = NO_FAILED) -> list[str]:
    """The final lines about the users: how many ended how, skips by reason, failures by error class."""
    within = (f" (within --max-failed {tolerance})"
              if outcomes.failed_users and tolerance.allows(outcomes.failed_users, outcomes.users) else "")
    lines = [f"users: {outcomes.users} in the result set: {outcomes.ok} ok, {outcomes.skipped_users} skipped,"
             f" {outcomes.failed_users} failed{within}"]
    if outcomes.skipped:
        lines.append(f"  skipped by reason: {_listed([skipped_part(g) for g in outcomes.skipped], 'reasons')}")
    if outcomes.failed:
        lines.append(f"  failed by error class: {_listed([failed_part(g) for g in outcomes.failed], 'error classes')}")
    return lines


def outcome_document(outcomes: UserOutcomes | None, tolerance: FailedTolerance) -> Mapping[str, Any]:
    """validation.json's counts: the users by outcome, skips by reason, failures by class, the tolerance."""
    return {"users": outcomes.to_json() if outcomes is not None else None, "max_failed": str(tolerance)}
