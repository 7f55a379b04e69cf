"""merge_report.json (MergeReport) and its problems as one-liners; validate uses the same helpers, so a
problem reads the same from merge and validate."""

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
    lines = "; ".join(f"{m['dir']}: config hash {m['config_hash']}, data fingerprint {m['data_fingerprint']}"
                      for m in mismatch)
    return (f"refusing to merge shards of different configs or input data ({lines}). Merge only shards of one"
            " config and one input; --force merges anyway and records the mismatch in merge_report.json.")


def _untrusted_line(u: Mapping[str, Any]) -> str:
    whose = "no user readable in it" if u["user_id"] is None else "user " + show(u["user_id"])
    return f"result file {u['dir']}/results/{u['file']} ({whose}) is left out: {u['problem']}"


# Per list of merge_report.json: its line for one entry, and what a capped list calls the rest (None: not capped).
_CONFLICTS = (("conflicts", lambda c: f"conflicting rows for {describe_key(c['key'], list(c['key']))} in"
               f" {', '.join(c['dirs'])}: {', '.join(d['column'] for d in c['differences'])} differ", "conflicts"),)
_FILES = (
    ("untrusted_files", _untrusted_line, "untrusted result files"),
    ("mixed_columns", lambda m: f"column {m['column']!r} mixes JSON types"
     f" ({', '.join(f'{t}: {n} rows' for t, n in m['types'].items())}); it is written as text", None),
)
_COVERAGE = (
    ("missing_users", lambda m: f"user {show(m['user_id'])} has no results (planned in shard {', '.join(m['shards'])})",
     "missing users"),
    ("missing_shards", lambda m: f"shard {m['shard']} was not merged (its users are unknown)", None),
    ("users_short_of_rows", lambda m: f"user {show(m['user_id'])} has {m['rows']} rows, others have {m['expected_rows']}",
     "users short of rows"),
    ("unplanned_users", lambda m: f"user {show(m['user_id'])} has results but no shard planned it", "unplanned users"),
)


def _listed(report: Mapping[str, Any], kinds: Sequence[tuple[str, Any, str | None]]) -> list[str]:
    problems: list[str] = []
    for key, line, what in kinds:
        lines = [line(entry) for entry in report.get(key, [])]
        problems += capped(lines, what) if what else lines
    return problems


def report_problems(report: Mapping[str, Any], coverage: bool = True) -> list[str]:
    """One line per problem recorded in a merge report (the dict of merge_report.json)."""
    problems = _listed(report, _CONFLICTS)
    if report.get("forced_mismatch"):
        problems.append("shards of different configs or input data were merged with --force")
    problems += _listed(report, _FILES)
    if not coverage:
        return problems
    problems += _listed(report, _COVERAGE)
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
        return not (self.conflicts or self.missing_users or self.missing_shards or self.users_short_of_rows
                    or self.unplanned_users or self.forced_mismatch or self.untrusted_files or self.mixed_columns)

    def to_json(self) -> dict[str, Any]:
        """The content of merge_report.json."""
        return {**asdict(self), "complete": self.complete}

    def problem_lines(self) -> list[str]:
        """Readable one-liners of what keeps the result set from being complete (empty if complete)."""
        return report_problems(self.to_json())

    def summary(self) -> str:
        head = (f"merged {self.rows} rows of {self.users} users from {len(self.shards)} shard dirs into"
                f" {self.output_dir} ({self.identical_duplicates} identical duplicates dropped)")
        if self.complete:
            return head + "; the result set is complete"
        return f"{head}; INCOMPLETE, see {self.output_dir}/merge_report.json: " + "; ".join(self.problem_lines())
