"""merge_report.json and the readable one-liners of its problems.

MergeReport is what a merge found (written as merge_report.json); `report_problems` turns that
document into one line per problem. validate reports the same problems from the file, with the
same helpers (`show`, `capped`, `describe_key`), so a problem reads the same from both commands.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from shardrun.storage.atomic import utc_now

MAX_LISTED = 20  # a long list of the same problem shows this many, then the count of the rest
_MAX_VALUE_CHARS = 60  # user ids are untrusted text and may be very long


def show(value: Any) -> str:
    """A value as it appears in a message: repr (so NUL and newlines stay visible), cut if long."""
    text = repr(value)
    return text if len(text) <= _MAX_VALUE_CHARS else text[: _MAX_VALUE_CHARS - 3] + "..."


def describe_key(row: Mapping[Any, Any], key_columns: Sequence[str]) -> str:
    return ", ".join(f"{c}={show(row.get(c))}" for c in key_columns)


def capped(problems: Sequence[str], what: str) -> list[str]:
    """The first MAX_LISTED problems of one kind, then one line with how many more there are."""
    if len(problems) <= MAX_LISTED:
        return list(problems)
    rest = len(problems) - MAX_LISTED
    return list(problems[:MAX_LISTED]) + [f"... and {rest} more {what} ({len(problems)} in all)"]


def mismatch_message(mismatch: Sequence[Mapping[str, Any]]) -> str:
    """Why shards of different configs or data are refused (the list from combine.find_mismatch)."""
    lines = "; ".join(
        f"{m['dir']}: config hash {m['config_hash']}, data fingerprint {m['data_fingerprint']}" for m in mismatch
    )
    return (
        f"refusing to merge shards of different configs or input data ({lines}). Merge only shards of one"
        " config and one input; --force merges anyway and records the mismatch in merge_report.json."
    )


def report_problems(report: Mapping[str, Any], coverage: bool = True) -> list[str]:
    """One line per problem recorded in a merge report (the dict of merge_report.json).

    `coverage` False leaves out the coverage lists, for a caller that checks users another way.
    """
    problems = capped(
        [
            f"conflicting rows for {describe_key(c['key'], list(c['key']))} in {', '.join(c['dirs'])}:"
            f" {', '.join(d['column'] for d in c['differences'])} differ"
            for c in report.get("conflicts", [])
        ],
        "conflicts",
    )
    if report.get("forced_mismatch"):
        problems.append("shards of different configs or input data were merged with --force")
    problems += capped(
        [
            f"result file {u['dir']}/results/{u['file']}"
            f" ({'no user readable in it' if u['user_id'] is None else 'user ' + show(u['user_id'])}) is left out:"
            f" {u['problem']}"
            for u in report.get("untrusted_files", [])
        ],
        "untrusted result files",
    )
    problems += [
        f"column {m['column']!r} mixes JSON types ({', '.join(f'{t}: {n} rows' for t, n in m['types'].items())});"
        " it is written as text"
        for m in report.get("mixed_columns", [])
    ]
    if not coverage:
        return problems
    problems += capped(
        [
            f"user {show(m['user_id'])} has no results (planned in shard {', '.join(m['shards'])})"
            for m in report.get("missing_users", [])
        ],
        "missing users",
    )
    problems += [f"shard {m['shard']} was not merged (its users are unknown)" for m in report.get("missing_shards", [])]
    problems += capped(
        [
            f"user {show(m['user_id'])} has {m['rows']} rows, others have {m['expected_rows']}"
            for m in report.get("users_short_of_rows", [])
        ],
        "users short of rows",
    )
    problems += capped(
        [f"user {show(m['user_id'])} has results but no shard planned it" for m in report.get("unplanned_users", [])],
        "unplanned users",
    )
    if not report.get("complete", False) and not problems:
        problems.append("the merge is marked incomplete")
    return problems


@dataclass(frozen=True)
class MergeReport:
    output_dir: str
    shards: list[dict[str, Any]]
    config_hash: str | None  # None when shards of different configs were merged with force
    data_fingerprint: str | None
    rows: int
    users: int
    identical_duplicates: int
    conflicts: list[dict[str, Any]]
    missing_users: list[dict[str, Any]]
    missing_shards: list[dict[str, Any]]
    users_short_of_rows: list[dict[str, Any]]
    unplanned_users: list[dict[str, Any]]
    dropped_columns: list[str]
    forced_mismatch: list[dict[str, Any]]
    provenance: list[dict[str, Any]]
    # batch files that fail their checksum, carry another config's hash or copy others (left out; a problem)
    untrusted_files: list[dict[str, Any]] = field(default_factory=list)
    # columns whose values are of more than one JSON type (frame.column_types); a problem
    mixed_columns: list[dict[str, Any]] = field(default_factory=list)
    # the task's facts about the whole set (Task.set_report); a record, not a problem
    task: dict[str, Any] = field(default_factory=dict)
    created_at: str = field(default_factory=utc_now)

    @property
    def complete(self) -> bool:
        return not (
            self.conflicts
            or self.missing_users
            or self.missing_shards
            or self.users_short_of_rows
            or self.unplanned_users
            or self.forced_mismatch
            or self.untrusted_files
            or self.mixed_columns
        )

    def to_json(self) -> dict[str, Any]:
        """The content of merge_report.json."""
        return {**asdict(self), "complete": self.complete}

    def problem_lines(self) -> list[str]:
        """Readable one-liners of what keeps the result set from being complete (empty if complete)."""
        return report_problems(self.to_json())

    def summary(self) -> str:
        head = (
            f"merged {self.rows} rows of {self.users} users from {len(self.shards)} shard dirs into"
            f" {self.output_dir} ({self.identical_duplicates} identical duplicates dropped)"
        )
        if self.complete:
            return head + "; the result set is complete"
        return f"{head}; INCOMPLETE, see {self.output_dir}/merge_report.json: " + "; ".join(self.problem_lines())
