"""Shard dirs -> one result set: combine rows, drop identical duplicates, report conflicts and gaps.

Merging is the last step before anyone reads the numbers, so it never guesses silently: rows
that share a key but differ are conflicts (listed, and the set is marked incomplete), users a
shard planned but never committed are listed, and shards of a K-way split that were not given
are listed. The shards may come from one run or from several separately started runs (for
example four runs of one shard each, or a run copied from another machine); rows are combined
from all of them.

The rules (dedupe, coverage) are pure functions of what was read; reading the shard dirs and
writing the outputs are kept at the two ends of `merge_shards`.
"""

from __future__ import annotations

import csv
import io
import logging
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import pandas as pd

from shardrun.config import parse_config
from shardrun.errors import ShardrunError
from shardrun.storage.paths import MergedPaths, RunPaths, ShardPaths
from shardrun.results.summary import UserSpan, user_span, write_summary_png
from shardrun.sharding import ShardSpec
from shardrun.storage.store import read_json, scan_committed, utc_now, write_bytes_atomic, write_json_atomic
from shardrun.task import BOOKKEEPING_COLUMNS, Task, load_task

log = logging.getLogger(__name__)

# Columns the core itself reads (besides the task's key columns); kept as text when a CSV is read
# back, so that an id such as "007" or "NA" is not turned into a number or a missing value.
STATUS_COLUMNS = ("status", "reason")


class MergeError(ShardrunError):
    """The given dirs cannot be merged as they are (not shard dirs, or shards of different configs)."""


# --- what is read from one shard dir ---------------------------------------------------------


@dataclass(frozen=True)
class ShardInput:
    """One shard dir as merge sees it: its identity, its state and its committed rows."""

    dir: Path
    identity: Mapping[str, Any]
    spec: ShardSpec
    state: str | None
    committed: Mapping[str, Sequence[Mapping[str, Any]]]  # user id -> rows
    committed_at: Mapping[str, Any] = field(default_factory=dict)  # user id -> commit time (for the timeline)

    @property
    def config_hash(self) -> str | None:
        return self.identity.get("config_hash")

    @property
    def data_fingerprint(self) -> str | None:
        return self.identity.get("data_fingerprint")

    @property
    def users_planned(self) -> list[str]:
        return list(self.identity.get("users_planned") or [])

    def describe(self) -> dict[str, Any]:
        return {
            "dir": str(self.dir),
            "shard": str(self.spec),
            "config_hash": self.config_hash,
            "data_fingerprint": self.data_fingerprint,
            "pilot": self.identity.get("pilot"),
            "users_planned": len(self.users_planned),
            "users_committed": len(self.committed),
            "state": self.state,
        }


def shard_dirs_of_run(run_dir: Path) -> list[Path]:
    """The shard dirs of a run dir (`shard-<i>-of-<K>/` holding a shard.json), sorted."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise MergeError(f"run dir {run_dir} does not exist; pass the run dir that holds the shard-<i>-of-<K>/ dirs.")
    dirs = RunPaths(run_dir).shard_dirs()
    if not dirs:
        raise MergeError(
            f"{run_dir} holds no shard dirs (shard-<i>-of-<K>/ with a shard.json); pass a run dir made by"
            " run_production or launch_shards with --run, or list shard dirs with --shards."
        )
    return dirs


def read_shard(shard_dir: Path) -> ShardInput:
    paths = ShardPaths(Path(shard_dir))
    if not paths.dir.is_dir():
        raise MergeError(f"{paths.dir} does not exist; pass existing shard dirs (shard-<i>-of-<K>/) to --shards.")
    if not paths.identity.is_file():
        hint = (
            " It looks like a run dir: pass it with --run instead."
            if RunPaths(paths.dir).shard_dirs()
            else " Pass dirs named shard-<i>-of-<K>/ written by run_production."
        )
        raise MergeError(f"{paths.dir} is not a shard dir (it has no shard.json).{hint}")
    try:
        identity = read_json(paths.identity)
        spec = ShardSpec.parse(identity["shard"])
    except (OSError, ValueError, KeyError, TypeError, ShardrunError) as exc:
        raise MergeError(
            f"{paths.identity} is not a valid shard identity ({exc!r}); it must be the shard.json written by"
            " run_production. Leave that dir out of the merge or restore the file."
        ) from None
    users = scan_committed(paths)
    return ShardInput(
        dir=paths.dir,
        identity=identity,
        spec=spec,
        state=_read_state(paths),
        committed={user_id: user.rows for user_id, user in users.items()},
        committed_at={user_id: user.record.get("committed_at") for user_id, user in users.items()},
    )


def _read_state(paths: ShardPaths) -> str | None:
    """The shard's last recorded state; only reported, so an unreadable status.json must not stop a merge."""
    if not paths.status.is_file():
        return None
    try:
        return read_json(paths.status).get("state")
    except (OSError, ValueError, AttributeError) as exc:
        log.warning("status file %s cannot be read (%s); its state is reported as 'unreadable'", paths.status, exc)
        return "unreadable"


# --- consistency of the shards ---------------------------------------------------------------


def find_mismatch(shards: Sequence[ShardInput]) -> list[dict[str, Any]]:
    """Per dir, its config hash and data fingerprint, when the shards do not all agree; else []."""
    identities = {(s.config_hash, s.data_fingerprint) for s in shards}
    if len(identities) <= 1:
        return []
    return [
        {"dir": str(s.dir), "config_hash": s.config_hash, "data_fingerprint": s.data_fingerprint} for s in shards
    ]


def mismatch_message(mismatch: Sequence[Mapping[str, Any]]) -> str:
    lines = "; ".join(
        f"{m['dir']}: config hash {m['config_hash']}, data fingerprint {m['data_fingerprint']}" for m in mismatch
    )
    return (
        f"refusing to merge shards of different configs or input data ({lines}). Merge only shards of one"
        " config and one input; --force merges anyway and records the mismatch in merge_report.json."
    )


# --- combining rows -------------------------------------------------------------------------


@dataclass(frozen=True)
class KeptRow:
    row: Mapping[str, Any]
    user_id: str  # the committed user the row belongs to (as stored in the result file)
    source: Path


@dataclass(frozen=True)
class Combined:
    rows: list[KeptRow]
    identical_duplicates: int
    conflicts: list[dict[str, Any]]


def is_missing(value: Any) -> bool:
    """JSON null and NaN both mean 'no number' (NaN is stored as null)."""
    return value is None or (isinstance(value, float) and math.isnan(value))


def values_equal(a: Any, b: Any) -> bool:
    """Exact equality, with missing == missing (so NaN == NaN and null == NaN)."""
    if is_missing(a) or is_missing(b):
        return is_missing(a) and is_missing(b)
    return a == b


def differing_columns(a: Mapping[str, Any], b: Mapping[str, Any]) -> list[str]:
    """Columns whose values differ, bookkeeping aside (shard, seconds and config hash differ by design)."""
    columns = sorted((set(a) | set(b)) - set(BOOKKEEPING_COLUMNS))
    return [c for c in columns if not values_equal(a.get(c), b.get(c))]


def row_key(row: Mapping[str, Any], key_columns: Sequence[str]) -> tuple:
    return tuple(row.get(c) for c in key_columns)


def combine_rows(shards: Sequence[ShardInput], key_columns: Sequence[str]) -> Combined:
    """One row per key. The first row (shards in the given order) is kept; later ones with the same
    key are counted as identical duplicates, or listed as conflicts when any value differs."""
    kept: dict[tuple, KeptRow] = {}
    identical = 0
    conflicts: list[dict[str, Any]] = []
    for shard in shards:
        for user_id, rows in shard.committed.items():
            for row in rows:
                key = row_key(row, key_columns)
                first = kept.get(key)
                if first is None:
                    kept[key] = KeptRow(row=row, user_id=user_id, source=shard.dir)
                    continue
                differences = differing_columns(first.row, row)
                if not differences:
                    identical += 1
                    continue
                conflicts.append(
                    {
                        "key": dict(zip(key_columns, key)),
                        "dirs": [str(first.source), str(shard.dir)],
                        "differences": [
                            {"column": c, "values": [first.row.get(c), row.get(c)]} for c in differences
                        ],
                    }
                )
    return Combined(rows=list(kept.values()), identical_duplicates=identical, conflicts=conflicts)


# --- coverage -------------------------------------------------------------------------------


def find_missing_shards(shards: Sequence[ShardInput]) -> list[dict[str, Any]]:
    """For every K seen, the indices 0..K-1 that no given dir covers."""
    covered: dict[int, set[int]] = {}
    for shard in shards:
        covered.setdefault(shard.spec.count, set()).add(shard.spec.index)
    return [
        {
            "shard": str(ShardSpec(index, count)),
            "note": "no dir of this shard was given; which users it holds is unknown to merge",
        }
        for count, indices in sorted(covered.items())
        for index in range(count)
        if index not in indices
    ]


def find_missing_users(shards: Sequence[ShardInput]) -> list[dict[str, Any]]:
    """Users some shard planned that no given dir committed, with the shard(s) that should have them."""
    committed = {u for s in shards for u in s.committed}
    planned_in: dict[str, list[ShardInput]] = {}
    for shard in shards:
        for user_id in shard.users_planned:
            planned_in.setdefault(user_id, []).append(shard)
    return [
        {
            "user_id": user_id,
            "shards": sorted({str(s.spec) for s in planned_in[user_id]}),
            "dirs": [str(s.dir) for s in planned_in[user_id]],
        }
        for user_id in sorted(planned_in)
        if user_id not in committed
    ]


def find_unplanned_users(shards: Sequence[ShardInput]) -> list[dict[str, Any]]:
    """Users with committed rows that no shard planned: the shard dirs disagree about the user list."""
    planned = {u for s in shards for u in s.users_planned}
    return [
        {"user_id": user_id, "dir": str(s.dir)}
        for s in shards
        for user_id in sorted(s.committed)
        if user_id not in planned
    ]


def find_users_short_of_rows(rows: Sequence[KeptRow]) -> list[dict[str, Any]]:
    """Users with fewer rows than the user with the most (for example a feature mode missing)."""
    counts: dict[str, int] = {}
    for kept in rows:
        counts[kept.user_id] = counts.get(kept.user_id, 0) + 1
    expected = max(counts.values(), default=0)
    return [
        {"user_id": user_id, "rows": n, "expected_rows": expected}
        for user_id, n in sorted(counts.items())
        if n < expected
    ]


# --- the result frame -----------------------------------------------------------------------


def schema_columns(task: Task, settings: Any) -> list[str]:
    """The columns of a result set, in order: the task's, then the bookkeeping ones."""
    task_columns = list(task.result_columns(settings))
    return task_columns + [c for c in BOOKKEEPING_COLUMNS if c not in task_columns]


def output_columns(task: Task, settings: Any | None, rows: Iterable[Mapping[str, Any]]) -> list[str]:
    """The schema; without settings (no run.json), the key columns then the other columns the rows carry."""
    if settings is not None:
        return schema_columns(task, settings)
    seen = {c for row in rows for c in row}
    rest = sorted(seen - set(task.key_columns) - set(BOOKKEEPING_COLUMNS))
    return list(task.key_columns) + rest + list(BOOKKEEPING_COLUMNS)


def _sortable(value: Any) -> tuple:
    """A sort key for mixed key values: numbers, then text, then anything else, missing last."""
    if is_missing(value):
        return (3, "")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return (0, value)
    if isinstance(value, str):
        return (1, value)
    return (2, repr(value))


def sorted_rows(rows: Iterable[KeptRow], key_columns: Sequence[str]) -> list[KeptRow]:
    return sorted(rows, key=lambda kept: tuple(_sortable(v) for v in row_key(kept.row, key_columns)))


def _typed_column(values: list[Any]) -> pd.Series:
    """A column with a stable type: int, float or text. Rows are JSON, where a missing number is
    null; pandas alone would make an int column with one null into floats."""
    present = [v for v in values if not is_missing(v)]
    has_missing = len(present) < len(values)
    if present and all(isinstance(v, bool) for v in present):
        return pd.Series(values, dtype="boolean" if has_missing else bool)
    if present and all(isinstance(v, int) and not isinstance(v, bool) for v in present):
        return pd.Series([None if is_missing(v) else v for v in values], dtype="Int64" if has_missing else "int64")
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in present):
        # also an all-null column: a missing number is the only thing null stands for in a result row
        return pd.Series([math.nan if is_missing(v) else float(v) for v in values], dtype="float64")
    return pd.Series([None if is_missing(v) else v for v in values], dtype=object)


def build_frame(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> pd.DataFrame:
    return pd.DataFrame({c: _typed_column([row.get(c) for row in rows]) for c in columns}, columns=list(columns))


def frame_to_csv_bytes(frame: pd.DataFrame) -> bytes:
    # Every text field quoted: an id with a bare carriage return, a comma or a NUL then reads back as
    # itself; missing values are empty fields.
    return frame.to_csv(index=False, quoting=csv.QUOTE_NONNUMERIC, lineterminator="\n").encode("utf-8")


def frame_to_parquet_bytes(frame: pd.DataFrame) -> bytes:
    buffer = io.BytesIO()
    frame.to_parquet(buffer, index=False, engine="pyarrow")
    return buffer.getvalue()


def read_result_file(path: Path, text_columns: Iterable[str]) -> pd.DataFrame:
    """Read results.parquet or results.csv as merge wrote it."""
    if path.suffix == ".parquet":
        return pd.read_parquet(path, engine="pyarrow")
    # Only empty fields are missing: default NA strings such as "NA" or "None" may be real user ids.
    return pd.read_csv(
        path,
        dtype={c: str for c in text_columns},
        keep_default_na=False,
        na_values=[""],
        encoding="utf-8",
    )


# --- settings and provenance ----------------------------------------------------------------


def read_provenance(shard_dirs: Iterable[Path]) -> list[dict[str, Any]]:
    """run.json of every distinct parent run dir of the shard dirs (in the order first seen)."""
    provenance = []
    seen: set[Path] = set()
    for shard_dir in shard_dirs:
        run = RunPaths(shard_dir.parent)
        if run.dir in seen or not run.run_json.is_file():
            continue
        seen.add(run.dir)
        try:
            provenance.append({"run_dir": str(run.dir), **read_json(run.run_json)})
        except (OSError, ValueError, TypeError) as exc:
            raise MergeError(f"{run.run_json} cannot be read ({exc}); restore it or merge without its shards.") from None
    return provenance


def resolve_task(provenance: Sequence[Mapping[str, Any]], shards: Sequence[ShardInput]) -> tuple[Task, Any | None]:
    """The task and its settings, from the first run.json's config snapshot. Without any run.json
    only the task is known (from shard.json), and the columns come from the rows."""
    if provenance:
        source = provenance[0]
        try:
            config = parse_config(source["config"])
        except (KeyError, ShardrunError) as exc:
            raise MergeError(
                f"the config snapshot in {source['run_dir']}/run.json cannot be parsed ({exc}); the code may have"
                " changed since the run. Merge with the shardrun version that made the run."
            ) from None
        return load_task(config.task), config.settings
    task_path = shards[0].identity.get("task")
    if not isinstance(task_path, str):
        raise MergeError(f"{shards[0].dir}/shard.json names no task and there is no run.json; cannot merge it.")
    return load_task(task_path), None


# --- describing problems ---------------------------------------------------------------------
# Shared with validate, which reports the same merge problems from merge_report.json.

MAX_LISTED = 20  # a long list of the same problem shows this many, then the count of the rest
_MAX_VALUE_CHARS = 60  # user ids are untrusted text and may be very long


def show(value: Any) -> str:
    """A value as it appears in a message: repr (so NUL and newlines stay visible), cut if long."""
    text = repr(value)
    return text if len(text) <= _MAX_VALUE_CHARS else text[: _MAX_VALUE_CHARS - 3] + "..."


def describe_key(row: Mapping[str, Any], key_columns: Sequence[str]) -> str:
    return ", ".join(f"{c}={show(row.get(c))}" for c in key_columns)


def capped(problems: Sequence[str], what: str) -> list[str]:
    """The first MAX_LISTED problems of one kind, then one line with how many more there are."""
    if len(problems) <= MAX_LISTED:
        return list(problems)
    rest = len(problems) - MAX_LISTED
    return list(problems[:MAX_LISTED]) + [f"... and {rest} more {what} ({len(problems)} in all)"]


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


# --- the report -----------------------------------------------------------------------------


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


# --- the command ----------------------------------------------------------------------------


def _distinct_dirs(shard_dirs: Sequence[Path]) -> list[Path]:
    """Sorted, each dir once: the same dir named twice is one source, not a duplicate of itself."""
    unique = sorted({Path(d).resolve() for d in shard_dirs})
    if len(unique) < len(shard_dirs):
        log.info("a shard dir was given more than once; it is read once")
    return unique


def merge_shards(shard_dirs: Sequence[Path], output_dir: Path, force: bool = False) -> MergeReport:
    """Merge shard dirs (of one run or of several) into results.csv, results.parquet and merge_report.json."""
    dirs = _distinct_dirs(list(shard_dirs))
    if not dirs:
        raise MergeError("no shard dirs given; pass shard dirs with --shards or a run dir with --run.")
    shards = [read_shard(d) for d in dirs]

    mismatch = find_mismatch(shards)
    if mismatch and not force:
        raise MergeError(mismatch_message(mismatch))
    if mismatch:
        log.warning("%s (merging anyway: --force)", mismatch_message(mismatch))

    provenance = read_provenance(dirs)
    task, settings = resolve_task(provenance, shards)
    combined = combine_rows(shards, task.key_columns)
    ordered = sorted_rows(combined.rows, task.key_columns)
    rows = [kept.row for kept in ordered]
    columns = output_columns(task, settings, rows)
    dropped = sorted({c for row in rows for c in row} - set(columns))
    if dropped:
        log.warning("columns %s are not in the task's schema and are left out of the merged results", dropped)

    report = MergeReport(
        output_dir=str(output_dir),
        shards=[s.describe() for s in shards],
        config_hash=None if mismatch else shards[0].config_hash,
        data_fingerprint=None if mismatch else shards[0].data_fingerprint,
        rows=len(rows),
        users=len({kept.user_id for kept in ordered}),
        identical_duplicates=combined.identical_duplicates,
        conflicts=combined.conflicts,
        missing_users=find_missing_users(shards),
        missing_shards=find_missing_shards(shards),
        users_short_of_rows=find_users_short_of_rows(ordered),
        unplanned_users=find_unplanned_users(shards),
        dropped_columns=dropped,
        forced_mismatch=mismatch,
        provenance=provenance,
    )
    frame = build_frame(rows, columns)
    write_result_set(Path(output_dir), frame, report)
    write_summary(MergedPaths(Path(output_dir)).summary_png, frame, commit_spans(shards), run_title(dirs))
    if report.complete:
        log.info("%s", report.summary())
    else:
        log.warning("%s", report.summary())
    return report


def write_result_set(output_dir: Path, frame: pd.DataFrame, report: MergeReport) -> None:
    """The report is written last and stale reports are removed first, so a merge that dies half-way
    never leaves new results next to an old report (or validation) that vouches for them."""
    paths = MergedPaths(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    paths.report.unlink(missing_ok=True)
    paths.validation.unlink(missing_ok=True)
    write_bytes_atomic(paths.csv, frame_to_csv_bytes(frame))
    write_bytes_atomic(paths.parquet, frame_to_parquet_bytes(frame))
    write_json_atomic(paths.report, report.to_json())


# --- the summary picture ---------------------------------------------------------------------


def commit_spans(shards: Sequence[ShardInput]) -> list[UserSpan]:
    """Every committed user of every shard dir as a timeline span (duplicates included: each was
    real work of its shard). Shards of one index from different runs are told apart by run dir."""
    labels = [str(s.spec) for s in shards]
    repeated = {label for label in labels if labels.count(label) > 1}
    spans = []
    untimed = 0
    for shard, label in zip(shards, labels):
        if label in repeated:
            label = f"{label} {shard.dir.parent.name}"
        for user_id, rows in shard.committed.items():
            span = user_span(label, shard.committed_at.get(user_id), rows)
            if span is None:
                untimed += 1
            else:
                spans.append(span)
    if untimed:
        log.warning("%d committed users have no readable committed_at; they are left out of the timeline only", untimed)
    return spans


def run_title(shard_dirs: Sequence[Path]) -> str:
    """The run dir's name for the picture's heading, or how many runs were combined."""
    runs = sorted({d.parent.name for d in shard_dirs})
    return runs[0] if len(runs) == 1 else f"{len(runs)} runs"


def write_summary(path: Path, frame: pd.DataFrame, spans: Sequence[UserSpan], title: str) -> bool:
    """Draw summary.png; True if it was written.

    The one guarded step of a merge: the picture only illustrates results already written, so a
    plotting failure (a matplotlib bug, an odd value, a missing font) is logged as an error with
    its traceback and the merge goes on. A picture of an earlier merge is removed first, so it is
    never shown next to results it does not describe.
    """
    path.unlink(missing_ok=True)
    try:
        write_summary_png(frame, spans, path, title=title)
    except Exception as exc:  # noqa: BLE001 - documented guard: the picture must not cost the results
        log.error("could not draw %s (%s: %s); the merged results are complete without it", path,
                  type(exc).__name__, exc, exc_info=True)
        return False
    log.info("summary picture: %s", path)
    return True
