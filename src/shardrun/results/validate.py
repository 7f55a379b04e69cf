"""A result set's problems, one line each (empty = valid): merge_report.json's, the rows' (`check_frame`)
and the run-level verdict (`verdict_problems`: a user was analysed, failures within --max-failed), gathered
from disk by `validation_of`. Problems are an answer, not an error; merge and validate word them alike."""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Annotated, Any, NotRequired, TypedDict

import pandas as pd

from shardrun.config import RunConfig
from shardrun.results.frame import schema_columns
from shardrun.results.read import STATUS_COLUMNS, MergedShard, read_result_file, recorded_config
from shardrun.results.tolerance import NO_FAILED, FailedTolerance
from shardrun.states import STATUSES, UserStatus, failure_class
from shardrun.storage.atomic import read_json, utc_now, write_json_atomic
from shardrun.storage.paths import MergedPaths, RunPaths
from shardrun.task import BOOKKEEPING_COLUMNS, Task, load_task, read_user_index

log = logging.getLogger(__name__)

MAX_LISTED = 20  # a long list of the same problem shows this many, then the count of the rest
_MAX_VALUE_CHARS = 60  # user ids are untrusted text and may be very long
# What to do about the error classes the core itself raises; any other class is shown with one of its
# users and the start of its reason (a task's reason names its own fix).
KNOWN_FIXES = MappingProxyType({
    "HeapTooSmall": "raise jvm.xmx in the config, or --xmx",
    "Java heap exhausted": "raise jvm.xmx in the config, or --xmx",
})
MAX_REASONS_SHOWN = 5  # groups of skip reasons and error classes in a line; then "and N more"
_REASON_CHARS = 120
_DIGITS = re.compile(r"\d+(?:\.\d+)?")


def _shortened(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def show(value: Any) -> str:
    """A value as it appears in a message: repr (so NUL and newlines stay visible), cut if long."""
    return _shortened(repr(value), _MAX_VALUE_CHARS)


def describe_key(row: Mapping[Any, Any], key_columns: Sequence[str]) -> str:
    return ", ".join(f"{c}={show(row.get(c))}" for c in key_columns)


def capped(problems: Sequence[str], what: str) -> list[str]:
    """The first MAX_LISTED problems of one kind, then one line with how many more there are."""
    if len(problems) <= MAX_LISTED:
        return list(problems)
    rest = len(problems) - MAX_LISTED
    return list(problems[:MAX_LISTED]) + [f"... and {rest} more {what} ({len(problems)} in all)"]


# --- merge_report.json ------------------------------------------------------------------------


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
    ("users_short_of_rows",
     lambda m: f"user {show(m['user_id'])} has {m['rows']} rows, others have {m['expected_rows']}",
     "users short of rows"),
    ("unplanned_users", lambda m: f"user {show(m['user_id'])} has results but no shard planned it", "unplanned users"),
)


def _report_lines(report: Mapping[str, Any], kinds: Sequence[tuple[str, Any, str | None]]) -> list[str]:
    problems: list[str] = []
    for key, line, what in kinds:
        lines = [line(entry) for entry in report.get(key, [])]
        problems += capped(lines, what) if what else lines
    return problems


def report_problems(report: Mapping[str, Any], coverage: bool = True) -> list[str]:
    """One line per problem recorded in a merge report (the dict of merge_report.json)."""
    problems = _report_lines(report, _CONFLICTS)
    if report.get("forced_mismatch"):
        problems.append("shards of different configs or input data were merged with --force")
    problems += _report_lines(report, _FILES)
    if not coverage:
        return problems
    problems += _report_lines(report, _COVERAGE)
    if not report.get("complete", False) and not problems:
        problems.append("the merge is marked incomplete")
    return problems


@dataclass(frozen=True)
class MergeReport:
    """merge_report.json: these fields, then `complete`."""

    output_dir: Annotated[str, "where the set is"]
    shards: Annotated[list[MergedShard], "per shard dir (below)"]
    config_hash: Annotated[str | None, "of the set (null when shards of different configs were merged with `--force`)"]
    data_fingerprint: Annotated[str | None, "of the set (null as `config_hash`)"]
    rows: Annotated[int, "rows in the set"]
    users: Annotated[int, "users in the set"]
    identical_duplicates: Annotated[int, "rows dropped as identical duplicates (every value the same JSON type and"
                                         " value, bookkeeping columns aside)"]
    conflicts: Annotated[list[dict[str, Any]], "*problem*: rows of one key whose values differ (`key`, `dirs`,"
                                               " `differences`)"]
    missing_users: Annotated[list[dict[str, Any]], "*problem*: planned users without results"]
    missing_shards: Annotated[list[dict[str, Any]], "*problem*: shards of the run not merged"]
    users_short_of_rows: Annotated[list[dict[str, Any]], "*problem*: users with fewer rows than the others"]
    unplanned_users: Annotated[list[dict[str, Any]], "*problem*: users no shard planned"]
    dropped_columns: Annotated[list[str], "columns the rows carry that the task's schema does not have (left out)"]
    forced_mismatch: Annotated[list[dict[str, Any]], "*problem*: shards of different configs or data merged with"
                                                     " `--force`"]
    provenance: Annotated[list[dict[str, Any]], "each run's run.json (and its `run_dir`)"]
    untrusted_files: Annotated[list[dict[str, Any]], "*problem*: batch files that fail their checksum, carry another"
                                                     " config's hash or copy earlier ones (`dir`, `file`, `user_id`,"
                                                     " `problem`); their rows are left out"] = field(
        default_factory=list)
    mixed_columns: Annotated[list[dict[str, Any]], "*problem*: columns mixing JSON types (`column`, `types`)"] = field(
        default_factory=list)
    task: Annotated[dict[str, Any], "the task's facts about the whole set (Task.set_report); the default task:"
                                    " `q_values` and `cleaning`"
                                    " ([ANALYSIS.md](ANALYSIS.md#what-the-merge-adds))"] = field(default_factory=dict)
    created_at: Annotated[str, "when"] = field(default_factory=utc_now)

    @property
    def complete(self) -> bool:
        """the set is whole and sane: none of the lists marked *problem* has an entry"""
        return not (self.conflicts or self.missing_users or self.missing_shards or self.users_short_of_rows
                    or self.unplanned_users or self.forced_mismatch or self.untrusted_files or self.mixed_columns)

    def to_json(self) -> dict[str, Any]:
        """The content of merge_report.json."""
        return {**asdict(self), "complete": self.complete}

    def problem_lines(self) -> list[str]:
        """What keeps the result set from being complete (empty if complete)."""
        return report_problems(self.to_json())

    def summary(self) -> str:
        head = (f"merged {self.rows} rows of {self.users} users from {len(self.shards)} shard dirs into"
                f" {self.output_dir} ({self.identical_duplicates} identical duplicates dropped)")
        if self.complete:
            return head + "; the result set is complete"
        return f"{head}; INCOMPLETE, see {self.output_dir}/merge_report.json: " + "; ".join(self.problem_lines())


# --- the checks of the rows (pure) ------------------------------------------------------------


def _blank(column: pd.Series) -> pd.Series:
    """None, NaN, pandas' NA or text of only whitespace, for each value."""
    return column.isna() | column.astype(str).str.strip().eq("")


def check_columns(frame: pd.DataFrame, expected: Sequence[str]) -> list[str]:
    found = list(frame.columns)
    problems = [f"missing column {c!r}" for c in expected if c not in found]
    problems += [f"unexpected column {c!r} (not in the task's schema)" for c in found if c not in expected]
    if not problems and found != list(expected):
        problems.append(f"columns are not in schema order: expected {list(expected)}, found {found}")
    return problems


def check_one_row_per_key(frame: pd.DataFrame, key_columns: Sequence[str]) -> list[str]:
    duplicated = frame[frame.duplicated(subset=list(key_columns), keep=False)]
    return capped([f"duplicate key {describe_key(dict(zip(key_columns, key)), key_columns)}: {len(group)} rows"
                   " (expected one)" for key, group in duplicated.groupby(list(key_columns), sort=True, dropna=False)],
                  "duplicate keys")


def check_statuses(frame: pd.DataFrame, key_columns: Sequence[str]) -> list[str]:
    # The rule found for every row at once; only the rows that break it are looked at one by one.
    statuses = frame["status"]
    unknown = ~statuses.isin(STATUSES)
    bad = unknown
    if "reason" in frame.columns:
        bad = bad | (statuses.isin([UserStatus.SKIPPED, UserStatus.FAILED]) & _blank(frame["reason"]))
    bad_rows = bad.to_numpy(dtype=bool)
    problems = []
    for row, status_unknown in zip(frame[bad_rows].to_dict("records"), unknown.to_numpy(dtype=bool)[bad_rows]):
        where, status = describe_key(row, key_columns), row.get("status")
        problems.append(f"{where}: status {show(status)} is not one of {', '.join(STATUSES)}" if status_unknown
                        else f"{where}: status {status!r} but reason is empty")
    return capped(problems, "rows with a bad status or reason")


def check_config_hash(frame: pd.DataFrame, config_hash: str | None) -> list[str]:
    blank = _blank(frame["config_hash"])
    values = sorted({str(v) for v in frame["config_hash"][~blank].unique()})
    problems = []
    if blank.any():
        problems.append("some rows have no config_hash")
    if len(values) > 1:
        problems.append(f"column config_hash has {len(values)} values ({', '.join(map(show, values))});"
                        " a result set must come from one config")
    elif values and config_hash is not None and values[0] != config_hash:
        problems.append(f"config_hash is {values[0]!r} but the config's hash is {config_hash!r};"
                        " the results were computed with another config")
    return problems


def check_users(frame: pd.DataFrame, user_column: str, expected_users: Sequence[str]) -> list[str]:
    present = {str(u) for u in frame[user_column] if not pd.isna(u)}  # "  " is a (strange) user id, not a blank
    expected = set(expected_users)
    missing = [f"user {show(u)} from the input has no rows" for u in sorted(expected - present)]
    unknown = [f"user {show(u)} is not in the input" for u in sorted(present - expected)]
    return capped(missing, "users without rows") + capped(unknown, "users not in the input")


def check_rows_per_user(frame: pd.DataFrame, key_columns: Sequence[str]) -> list[str]:
    """Every user has a row for every value of the other key columns seen (e.g. every feature mode)."""
    user_column, other = key_columns[0], list(key_columns[1:])
    if not other or frame.empty:
        return []
    all_keys = set(frame[other].itertuples(index=False, name=None))
    # Counted for every user at once; only the users short of rows are looked at one by one.
    per_user = frame[[user_column, *other]].drop_duplicates().groupby(user_column, sort=True).size()
    short = frame[frame[user_column].isin(per_user.index[per_user < len(all_keys)])]
    return capped([f"user {show(user)} has no row for {describe_key(dict(zip(other, absent)), other)}"
                   for user, group in short.groupby(user_column, sort=True)
                   for absent in sorted(all_keys - set(group[other].itertuples(index=False, name=None)), key=repr)],
                  "missing rows")


def check_frame(frame: pd.DataFrame, task: Task, settings: Any, expected_users: Sequence[str] | None,
                config_hash: str | None = None) -> list[str]:
    """Problems of a result frame; no I/O. `expected_users` None skips the input-coverage check;
    `config_hash` None checks only that the set has a single hash."""
    key_columns = list(task.key_columns)
    columns = schema_columns(task, settings)
    problems = check_columns(frame, columns)
    present = set(frame.columns)
    if set(key_columns) <= present:
        problems += check_one_row_per_key(frame, key_columns)
        problems += check_rows_per_user(frame, key_columns)
        if expected_users is not None:  # by convention the first key column names the user
            problems += check_users(frame, key_columns[0], expected_users)
    if "status" in present:
        problems += check_statuses(frame, key_columns)
    if "config_hash" in present:
        problems += check_config_hash(frame, config_hash)
    if set(columns) <= present:
        # The task's value checks assume its schema; with columns missing they would only fail noisily.
        problems += capped(list(task.check_rows(frame, settings)), "value problems")
    return problems


# --- the verdict (pure) -----------------------------------------------------------------------


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


def _groups(users: pd.DataFrame, key: pd.Series, by_reason: bool = False) -> list[ReasonGroup]:
    """`users` (user, reason), one row per user, grouped by `key`; the most users first, then by key. A group
    is labelled by its key, or `by_reason` by its first user's reason as written."""
    groups = []
    for label, members in users.groupby(key, sort=False):
        first = members.iloc[0]
        reason = str(first["reason"])
        groups.append((-len(members), str(label), ReasonGroup(
            (reason or "no reason given") if by_reason else str(label), len(members), str(first["user"]), reason,
            variants=members["reason"].nunique())))
    return [group for *_, group in sorted(groups, key=lambda entry: entry[:2])]


def count_outcomes(frame: pd.DataFrame, user_column: str) -> UserOutcomes:
    """Each user's outcome from its rows (states.user_outcome's rule, for every user at once). Skipped users are
    grouped by their reason with its numbers aside ("only 3 observations" and "only 0 observations" are one
    reason), failed users by error class, read from the reason (states.failure_class), not errors.jsonl."""
    if frame.empty:
        return UserOutcomes(users=0, ok=0)
    status = frame["status"]
    # a row with no known status (a missing one too) fails its user
    failed_row = ~status.isin([UserStatus.OK.value, UserStatus.SKIPPED.value]).to_numpy(dtype=bool)
    skipped_row = status.isin([UserStatus.SKIPPED.value]).to_numpy(dtype=bool)
    flags = pd.DataFrame({"failed": failed_row, "skipped": skipped_row}, index=frame.index)
    per_user = flags.groupby(frame[user_column], sort=False, dropna=False).agg(failed=("failed", "any"),
                                                                               skipped=("skipped", "all"))
    skipped_ids = per_user.index[~per_user["failed"] & per_user["skipped"]]

    def first_rows(mask) -> pd.DataFrame:
        """(user, status, reason) as text of the first row of each user among the rows of `mask`."""
        chosen = frame.loc[mask]
        chosen = chosen.loc[~chosen[user_column].duplicated()]
        reason = _texts(chosen["reason"]) if "reason" in frame.columns else pd.Series("", index=chosen.index)
        return pd.DataFrame({"user": _texts(chosen[user_column]), "status": _texts(chosen["status"]),
                             "reason": reason})

    # A user's reason: that of its first failed row (failed), or of its first row (skipped).
    failed_rows = first_rows(failed_row)
    failed_rows["reason"] = failed_rows["reason"].where(
        failed_rows["status"].eq(UserStatus.FAILED.value),
        "status " + failed_rows["status"].map(repr) + " is not one of " + ", ".join(STATUSES))
    skipped_rows = first_rows(frame[user_column].isin(skipped_ids).to_numpy(dtype=bool))
    masked = skipped_rows["reason"].map(lambda text: _DIGITS.sub("#", text) or "no reason given")
    return UserOutcomes(users=len(per_user), ok=len(per_user) - len(failed_rows) - len(skipped_rows),
                        skipped=_groups(skipped_rows, masked, by_reason=True),
                        failed=_groups(failed_rows, failed_rows["reason"].map(failure_class)))


def _cut(text: str) -> str:
    return _shortened(" ".join(str(text).split()), _REASON_CHARS)


def _plural(count: int, word: str) -> str:
    return f"{count} {word}{'' if count == 1 else 's'}"


def _listed(parts: Sequence[str], what: str) -> str:
    shown = list(parts[:MAX_REASONS_SHOWN])
    if len(parts) > MAX_REASONS_SHOWN:
        shown.append(f"and {len(parts) - MAX_REASONS_SHOWN} more {what}")
    return ", ".join(shown)


def _skipped_parts(outcomes: UserOutcomes) -> str:
    return _listed([f"{group.users} {_cut(group.label)!r}"
                    + (f" (and {group.variants - 1} alike but for numbers)" if group.variants > 1 else "")
                    for group in outcomes.skipped], "reasons")


def _failed_parts(outcomes: UserOutcomes) -> str:
    parts = []
    for group in outcomes.failed:
        fix = KNOWN_FIXES.get(group.label)
        if fix is None:
            said = group.example_reason
            # A Java exception's message repeats its class ("java.lang.X: java.lang.X: text"): said once, in the label.
            while said.startswith(f"{group.label}:"):
                said = said[len(group.label) + 1:].lstrip()
            fix = f"e.g. user {group.example_user!r}: {_cut(said)}"
        parts.append(f"{group.users} {group.label} ({fix})")
    return _listed(parts, "error classes")


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
    if outcomes.users == 0:
        return ["the result set has no users: nothing was analysed"]
    problems = []
    failed = outcomes.failed_users
    if failed and not tolerance.allows(failed, outcomes.users):
        problems.append(
            f"{_plural(failed, 'user')} of {outcomes.users} failed (--max-failed {tolerance}):"
            f" {_failed_parts(outcomes)}; see {rerun.errors} for each failure's message and stack; once the cause"
            f" is fixed, run only them again: {rerun.command}"
        )
    if outcomes.ok == 0 and failed == 0:
        problems.append(
            f"nothing was analysed: every one of the {_plural(outcomes.users, 'user')} was skipped"
            f" ({_skipped_parts(outcomes)}); the reasons say what to change in the input data or the task's settings"
        )
    elif outcomes.ok == 0:
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
        lines.append(f"  skipped by reason: {_skipped_parts(outcomes)}")
    if outcomes.failed:
        lines.append(f"  failed by error class: {_failed_parts(outcomes)}")
    return lines


# --- gathering from disk ----------------------------------------------------------------------


@dataclass(frozen=True)
class Validation:
    """A result set's problems (empty: valid) and its users by outcome (None: the rows could not be read)."""

    problems: list[str]
    outcomes: UserOutcomes | None = None
    max_failed: FailedTolerance = NO_FAILED

    def lines(self) -> list[str]:
        """The final lines about the users (counts, skips by reason, failures by error class)."""
        return outcome_lines(self.outcomes, self.max_failed) if self.outcomes is not None else []

    def document(self) -> Mapping[str, Any]:
        """validation.json's record of the verdict beyond the problems: users by outcome, the tolerance."""
        return {"users": self.outcomes.to_json() if self.outcomes is not None else None,
                "max_failed": str(self.max_failed)}


def rerun_of(result_dir: Path) -> Rerun:
    """Where a run's own merged dir (RUN/merged) tells its failures and the command that runs only them again."""
    run = RunPaths(Path(result_dir).resolve().parent)
    try:
        document = read_json(run.run_json) if run.run_json.is_file() else None
    except ValueError:  # a damaged run.json names no rerun
        document = None
    if not isinstance(document, dict):
        return Rerun()
    config = document.get("config_path") or "CONFIG"
    pilot = f" --pilot {document['pilot']}" if document.get("pilot") else ""
    scheduler = " --scheduler slurm" if run.slurm_json.is_file() else ""
    return Rerun(errors=f"{run.dir}/shard-*/errors.jsonl",
                 command=f"launch_shards{scheduler} --config {config} --shards {document.get('shards')}"
                         f" --out {run.dir}{pilot} --retry-failed")


def validation_of(result_dir: Path, config: RunConfig | None = None, frame: pd.DataFrame | None = None,
                  max_failed: FailedTolerance = NO_FAILED) -> Validation:
    """The result set in `result_dir` checked (`frame`: the rows this process just merged there, not read back).
    Coverage is against the config's input users when `config` is given, else against merge_report.json;
    a bad config or unreadable input raises (a usage error, not a property of the results)."""
    def refused(problems: list[str]) -> Validation:
        return Validation(problems, max_failed=max_failed)

    paths = MergedPaths(Path(result_dir))
    if not paths.dir.is_dir():
        return refused([f"result dir {paths.dir} does not exist; pass the --output dir of merge_shard_results"])
    try:
        report = read_json(paths.report) if paths.report.is_file() else None
    except (OSError, ValueError) as exc:
        return refused([f"{paths.report} cannot be read ({exc}); merge again with merge_shard_results"])
    coverage_from_report = config is None
    if config is None:
        if report is None:
            return refused([f"no merge_report.json in {paths.dir}; pass --config to validate results without it"])
        config, problems = recorded_config(report)
        if config is None:
            return refused(problems)
    task = load_task(config.task)
    # The user index where the task has one: the ids without loading every row.
    expected_users = None if coverage_from_report else list(read_user_index(task, config.settings)[0].user_ids)
    if frame is None:
        source = paths.parquet if paths.parquet.is_file() else paths.csv
        if not source.is_file():
            return refused([f"no results.parquet or results.csv in {paths.dir}; run merge_shard_results --output"
                            f" {paths.dir}"])
        try:
            frame = read_result_file(source, [*task.key_columns, *STATUS_COLUMNS, *BOOKKEEPING_COLUMNS])
        except (OSError, ValueError) as exc:  # pyarrow's and pandas' parse errors are ValueErrors
            return refused([f"{source} cannot be read: {exc}"])
    problems = check_frame(frame, task, config.settings, expected_users, config_hash=config.hash)
    if report is not None:  # merge's coverage lists count only when there is no config to check the users against
        problems += [f"merge report: {line}" for line in report_problems(report, coverage=coverage_from_report)]
    user_column = task.key_columns[0]  # by convention the first key column names the user
    outcomes = count_outcomes(frame, user_column) if {user_column, "status"} <= set(frame.columns) else None
    if outcomes is not None:
        problems += verdict_problems(outcomes, max_failed, rerun_of(paths.dir))
    return Validation(problems, outcomes, max_failed)


def checked_config_hash(result_dir: Path, config: RunConfig | None) -> str | None:
    """The config hash a validation checked against: the given config's, else the one merge_report.json records."""
    if config is not None:
        return config.hash
    try:
        report = read_json(MergedPaths(Path(result_dir)).report)
    except (OSError, ValueError):
        return None
    value = report.get("config_hash") if isinstance(report, dict) else None
    return value if isinstance(value, str) else None


class ValidationJson(TypedDict):
    valid: Annotated[bool, "true when it passed"]
    verdict: Annotated[str, "`passed` or `failed`"]
    problems: Annotated[list[str], "one line per problem"]
    users: Annotated[dict[str, Any] | None, "`total`, `ok`, `skipped`, `failed`, `skipped_by_reason`,"
                                            " `failed_by_class` (null when the rows could not be read)"]
    max_failed: Annotated[str, "the `--max-failed` it was judged with (`\"0\"`, `\"5\"`, `\"2%\"`)"]
    config_hash: Annotated[str | None, "the config it was checked against"]
    checked_at: Annotated[str, "when"]
    previous: NotRequired[Annotated[dict[str, Any], "when the file there recorded another config hash: its"
                                                    " `config_hash`, `valid` and `checked_at`"]]


def write_validation(result_dir: Path, problems: Sequence[str], config_hash: str | None = None,
                     verdict: Mapping[str, Any] | None = None) -> str | None:
    """Write validation.json (verdict, problems, the config hash checked, Validation.document()). An earlier one
    against another config hash is kept under `previous`, and the returned (and logged) note says so."""
    paths = MergedPaths(Path(result_dir))
    if config_hash is None:
        config_hash = checked_config_hash(paths.dir, None)
    document: dict[str, Any] = {"valid": not problems, "verdict": "passed" if not problems else "failed",
                                "problems": list(problems), **(verdict or {}), "config_hash": config_hash,
                                "checked_at": utc_now()}
    note = None
    try:
        earlier = read_json(paths.validation) if paths.validation.is_file() else None
    except (OSError, ValueError):
        earlier = None
    if isinstance(earlier, dict) and earlier.get("config_hash") not in (None, config_hash):
        document["previous"] = {k: earlier.get(k) for k in ("config_hash", "valid", "checked_at")}
        note = (f"{paths.validation} recorded a validation against config hash {earlier.get('config_hash')!r}"
                f" (checked at {earlier.get('checked_at')}); it is replaced by this one against {config_hash!r},"
                " and both are recorded in it (the earlier one under 'previous')")
        log.warning("%s", note)
    write_json_atomic(paths.validation, document)
    log.info("wrote %s (%s)", paths.validation, "valid" if not problems else f"{len(problems)} problems")
    return note
