"""A merged result set's problems as one-liners (empty = valid): `check_frame` is the pure core,
`validation_of` gathers from disk and adds the run-level verdict. Problems are an answer, not an error."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from shardrun.config import RunConfig
from shardrun.results.frame import schema_columns
from shardrun.results.read import STATUS_COLUMNS, read_result_file, recorded_config
from shardrun.results.report import capped, describe_key, report_problems, show
from shardrun.results.tolerance import NO_FAILED, FailedTolerance
from shardrun.results.verdict import (
    Rerun,
    UserOutcomes,
    count_outcomes,
    outcome_document,
    outcome_lines,
    verdict_problems,
)
from shardrun.states import STATUSES, UserStatus
from shardrun.storage.atomic import read_json, utc_now, write_json_atomic
from shardrun.storage.paths import MergedPaths, RunPaths
from shardrun.task import BOOKKEEPING_COLUMNS, Task, load_task, read_user_index

log = logging.getLogger(__name__)


def _is_blank(value: Any) -> bool:
    """None, NaN, pandas' NA, or text of only whitespace."""
    return value is None or pd.isna(value) or not str(value).strip()


# --- the pure checks ------------------------------------------------------------------------


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


def _blank_mask(column: pd.Series) -> pd.Series:
    """_is_blank for a whole column at once."""
    return column.isna() | column.astype(str).str.strip().eq("")


def check_statuses(frame: pd.DataFrame, key_columns: Sequence[str]) -> list[str]:
    # The rule found for every row at once; only the rows that break it are looked at one by one.
    statuses = frame["status"]
    bad = _blank_mask(statuses) | ~statuses.isin(STATUSES)
    if "reason" in frame.columns:
        bad |= statuses.isin([UserStatus.SKIPPED, UserStatus.FAILED]) & _blank_mask(frame["reason"])
    problems = []
    for row in frame[bad.to_numpy(dtype=bool)].to_dict("records"):
        where = describe_key(row, key_columns)
        status = row.get("status")
        if _is_blank(status) or status not in STATUSES:
            problems.append(f"{where}: status {show(status)} is not one of {', '.join(STATUSES)}")
        elif status in (UserStatus.SKIPPED, UserStatus.FAILED) and ("reason" in row and _is_blank(row["reason"])):
            problems.append(f"{where}: status {status!r} but reason is empty")
    return capped(problems, "rows with a bad status or reason")


def check_config_hash(frame: pd.DataFrame, config_hash: str | None) -> list[str]:
    blank = _blank_mask(frame["config_hash"])
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
    # By convention the first key column names the user (the Task protocol has no separate name for it).
    user_column = key_columns[0]
    columns = schema_columns(task, settings)
    problems = check_columns(frame, columns)
    present = set(frame.columns)
    if set(key_columns) <= present:
        problems += check_one_row_per_key(frame, key_columns)
        problems += check_rows_per_user(frame, key_columns)
        if expected_users is not None:
            problems += check_users(frame, user_column, expected_users)
    if "status" in present:
        problems += check_statuses(frame, key_columns)
    if "config_hash" in present:
        problems += check_config_hash(frame, config_hash)
    if set(columns) <= present:
        # The task's value checks assume its schema; with columns missing they would only fail noisily.
        problems += capped(list(task.check_rows(frame, settings)), "value problems")
    return problems


# --- gathering from disk --------------------------------------------------------------------


def _read_frame(paths: MergedPaths, task: Task) -> tuple[pd.DataFrame | None, list[str]]:
    source = paths.parquet if paths.parquet.is_file() else paths.csv
    if not source.is_file():
        return None, [f"no results.parquet or results.csv in {paths.dir}; run merge_shard_results --output {paths.dir}"]
    try:
        return read_result_file(source, [*task.key_columns, *STATUS_COLUMNS, *BOOKKEEPING_COLUMNS]), []
    except (OSError, ValueError) as exc:
        # pyarrow's and pandas' parse errors derive from ValueError (ArrowInvalid, ParserError)
        return None, [f"{source} cannot be read: {exc}"]


@dataclass(frozen=True)
class Validation:
    """A result set's problems (empty: valid) and its users by outcome (None: the rows could not be read)."""

    problems: list[str]
    outcomes: UserOutcomes | None = None
    max_failed: FailedTolerance = NO_FAILED

    @property
    def valid(self) -> bool:
        return not self.problems

    def lines(self) -> list[str]:
        """The final lines about the users (counts, skips by reason, failures by error class)."""
        return outcome_lines(self.outcomes, self.max_failed) if self.outcomes is not None else []

    def document(self) -> Mapping[str, Any]:
        """What validation.json records of the verdict beyond the problems."""
        return outcome_document(self.outcomes, self.max_failed)


def rerun_of(result_dir: Path) -> Rerun:
    """Where a run's own merged dir (RUN/merged) tells its failures and the command that runs only them again."""
    run = RunPaths(Path(result_dir).resolve().parent)
    if not run.run_json.is_file():
        return Rerun()
    try:
        document = read_json(run.run_json)
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
        frame, problems = _read_frame(paths, task)
        if frame is None:
            return refused(problems)
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
