"""The run's timeline, pure: committed users as spans and the shards' process starts, the tables run.png is
drawn from (pictures.py draws it), and every attempt at a user as trace.tsv, with each shard's memory.

trace.tsv is tab-separated, quoted like CSV, so every untrusted user id reads back exactly (docs/FORMATS.md).
"""

from __future__ import annotations

import logging
import math
import re
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, NamedTuple, TypedDict

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from shardrun.results.frame import text_bytes
from shardrun.results.read import STANDING, USER, ShardInput
from shardrun.states import STATUSES, UserStatus
from shardrun.storage.commits import ATTEMPT, attempt_of
from shardrun.units import heap_bytes

log = logging.getLogger(__name__)

MAX_BARS_PER_SHARD = 400  # beyond a few hundred bars a shard's row is wider in bars than in pixels
SLOW_FACTOR = 3.0  # a user is slow when it took this many times its estimate (scaled to the run's median user)
WAITED_AT_LEAST = 0.5  # seconds: a shard started later than the run's first only by the launcher's turn did not wait
SLOW_PER_SHARD = 3  # the slowest users outlined per shard (more would hide the others)
# also the display order of statuses
STATUS_SEVERITY = {UserStatus.OK.value: 0, UserStatus.SKIPPED.value: 1, UserStatus.FAILED.value: 2}

_SHARD_LABEL = re.compile(r"^(\d+)/(\d+)")


class UserSpan(NamedTuple):
    """One committed user of one shard: from its start to its commit, in POSIX seconds."""

    shard: str
    start: float
    end: float
    status: str
    user_id: str | None = None


SPAN_COLUMNS = UserSpan._fields  # the columns of a span table (span_table)
PREDICTED = "predicted_s"  # a span table's optional column: the task's estimate of the user's seconds


def shard_sort_key(label: str) -> tuple:
    """Shards as people count them: "2/4" before "10/16", by K then i; other labels after, as text."""
    match = _SHARD_LABEL.match(label)
    if match:
        return (0, int(match.group(2)), int(match.group(1)), label)
    return (1, 0, 0, label)


# --- the spans and starts of the shard dirs -----------------------------------------------------


def shard_labels(shards: Sequence[ShardInput]) -> list[str]:
    """Each shard dir's label: its shard ("1/4"), and its run dir's name where runs share that shard."""
    labels = [str(s.spec) for s in shards]
    repeated = {label for label in labels if labels.count(label) > 1}
    return [f"{label} {shard.dir.parent.name}" if label in repeated else label for shard, label in zip(shards, labels)]


def span_table(shards: Sequence[ShardInput]) -> pd.DataFrame:
    """Every committed user of every shard dir as a span, one row each with SPAN_COLUMNS (duplicates
    included: each was real work of its shard): its end at its commit (ended_at), its start its rows'
    seconds before."""
    parts = []
    untimed = 0
    for shard, label in zip(shards, shard_labels(shards)):
        seconds, status = users_seconds_and_status(shard.table, shard.users)
        ended = pd.to_datetime(pd.Series([shard.ended_at.get(u) for u in shard.users], dtype=object),
                               errors="coerce", utc=True, format="ISO8601")
        end = (ended - pd.Timestamp(0, tz="UTC")).dt.total_seconds().to_numpy()
        timed = ~np.isnan(end)
        untimed += int((~timed).sum())
        parts.append(pd.DataFrame({"shard": label, "start": (end - np.nan_to_num(seconds))[timed], "end": end[timed],
                                   "status": status[timed], "user_id": np.array(shard.users, dtype=object)[timed]},
                                  columns=list(SPAN_COLUMNS)))
    if untimed:
        log.warning("%d committed users have no readable ended_at; they are left out of the timeline only", untimed)
    non_empty = [part for part in parts if len(part)]
    return pd.concat(non_empty, ignore_index=True) if non_empty else pd.DataFrame(columns=list(SPAN_COLUMNS))


def users_seconds_and_status(table: pa.Table | None, users: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Per user of `users` (in that order), from its rows in `table` (column read.USER): the largest
    finite, non-negative `seconds` of its rows (NaN without one) and its status by states.user_outcome's
    rule. Counted with numpy: a pandas group-by per shard costs more than its rows."""
    if table is None or not table.num_rows:
        return np.full(len(users), np.nan), np.full(len(users), UserStatus.FAILED.value)
    owner = pd.Index(list(users), dtype=object).get_indexer(table.column(USER).to_numpy(zero_copy_only=False))
    row_seconds = pd.to_numeric(_column(table, "seconds"), errors="coerce").to_numpy(dtype=float, na_value=np.nan)
    usable = np.isfinite(row_seconds) & (row_seconds >= 0)
    seconds = np.full(len(users), np.nan)
    np.fmax.at(seconds, owner[usable], row_seconds[usable])
    row_status = _column(table, "status")
    rows = np.bincount(owner, minlength=len(users))
    failed = np.bincount(owner, weights=((row_status == UserStatus.FAILED) | ~row_status.isin(STATUSES)).to_numpy(),
                         minlength=len(users))
    skipped = np.bincount(owner, weights=(row_status == UserStatus.SKIPPED).to_numpy(), minlength=len(users))
    status = np.where((rows == 0) | (failed > 0), UserStatus.FAILED.value,
                      np.where(skipped == rows, UserStatus.SKIPPED.value, UserStatus.OK.value))
    return seconds, status


def _column(table: pa.Table, name: str) -> pd.Series:
    """A column of the rows as pandas values; all missing when no row has it."""
    if name not in table.column_names:
        return pd.Series([None] * table.num_rows, dtype=object)
    return table.column(name).to_pandas()


def start_table(shards: Sequence[ShardInput]) -> pd.DataFrame:
    """Every recorded process start (ShardInput.process_starts, POSIX seconds): shard (labelled as
    span_table labels it), started."""
    rows = [(label, started) for shard, label in zip(shards, shard_labels(shards)) for started in shard.process_starts]
    return pd.DataFrame(rows, columns=["shard", "started"]).astype({"started": "float64"})


# --- the tables run.png is drawn from -----------------------------------------------------------


def timeline_table(spans: pd.DataFrame | Iterable[Sequence[Any]], starts: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per span: shard, start_s, end_s (seconds since the run start, in attrs), seconds, status,
    user_id, predicted_s (NaN without an estimate); by shard, then start."""
    if isinstance(spans, pd.DataFrame):
        table = spans.reindex(columns=[*SPAN_COLUMNS, PREDICTED]).copy()
    else:
        table = pd.DataFrame([tuple(span) + (None,) * (len(SPAN_COLUMNS) - len(span)) for span in spans],
                             columns=list(SPAN_COLUMNS)).assign(**{PREDICTED: np.nan})
    table["shard"] = table["shard"].astype(str)
    table["status"] = table["status"].astype(str)
    run_start = float(table["start"].min()) if len(table) else None
    if run_start is not None and starts is not None and len(starts):
        run_start = min(run_start, float(starts["started"].min()))
    table["start_s"] = table["start"].astype("float64") - (run_start or 0.0)
    table["end_s"] = table["end"].astype("float64") - (run_start or 0.0)
    table["seconds"] = table["end_s"] - table["start_s"]
    table[PREDICTED] = pd.to_numeric(table[PREDICTED], errors="coerce").astype("float64")
    # unique() rather than set(): iterating a text column value by value costs a second per million
    table["shard_rank"] = pd.Categorical(table["shard"], sorted(table["shard"].unique(), key=shard_sort_key)).codes
    table = table.sort_values(["shard_rank", "start_s", "end_s"], kind="stable").reset_index(drop=True)
    table = table[["shard", "start_s", "end_s", "seconds", "status", "user_id", PREDICTED]]
    table.attrs["run_start"] = run_start
    return table


def relative_starts(starts: pd.DataFrame | None, timeline: pd.DataFrame) -> pd.DataFrame:
    """The start table in the timeline's seconds: shard, started_s, sorted; only the timeline's shards."""
    run_start = timeline.attrs.get("run_start")
    if starts is None or not len(starts) or run_start is None:
        return pd.DataFrame({"shard": pd.Series(dtype=object), "started_s": pd.Series(dtype="float64")})
    table = pd.DataFrame({"shard": starts["shard"].astype(str),
                          "started_s": starts["started"].astype("float64") - run_start})
    table = table[table["shard"].isin(timeline["shard"].unique())]
    return table.sort_values(["shard", "started_s"], kind="stable").reset_index(drop=True)


def process_phases(timeline: pd.DataFrame, starts: pd.DataFrame) -> tuple[pd.DataFrame, np.ndarray]:
    """From the process starts (relative_starts): what each shard did before its users (shard, phase:
    "waiting" for a core or "start-up", start_s, end_s), and which spans are a process's first user (a JVM
    just started: its time holds the JIT's warm-up), a shard's first where its starts are not known."""
    begins = timeline["start_s"].to_numpy()
    rows_of = timeline.groupby("shard", sort=False).indices  # rows of a shard, in start order
    first = np.zeros(len(timeline), dtype=bool)
    known = set(starts["shard"])
    for shard, rows in rows_of.items():
        if shard not in known:
            first[rows[0]] = True
    records = []
    waited: set[str] = set()
    for shard, started in zip(starts["shard"], starts["started_s"]):  # by shard, then time; only drawn shards
        if shard not in waited:
            waited.add(shard)
            if started > WAITED_AT_LEAST:
                records.append((shard, "waiting", 0.0, started))
        rows = rows_of[shard]
        # the first user at or after the start: a user's start is its commit time less its seconds, a few
        # milliseconds early at most
        after = np.searchsorted(begins[rows], started - 0.05)
        if after < len(rows):
            first[rows[after]] = True
            records.append((shard, "start-up", started, max(float(begins[rows[after]]), started)))
    return pd.DataFrame.from_records(records, columns=["shard", "phase", "start_s", "end_s"]), first


def shard_summary(timeline: pd.DataFrame, phases: pd.DataFrame | None = None) -> pd.DataFrame:
    """Per shard: users, ok / skipped / failed, first_start_s, finish_s, busy_s (its users' seconds), lag_s
    (after the first shard to finish), waited_s and startup_s (its phases). Latest finish first."""
    columns = ["shard", "users", *STATUSES, "first_start_s", "finish_s", "busy_s", "lag_s", "waited_s", "startup_s"]
    if timeline.empty:
        return pd.DataFrame(columns=columns)
    grouped = timeline.groupby("shard", sort=False)
    summary = pd.DataFrame({"users": grouped.size(), "first_start_s": grouped["start_s"].min(),
                            "finish_s": grouped["end_s"].max(), "busy_s": grouped["seconds"].sum()})
    counts = pd.crosstab(timeline["shard"], timeline["status"])
    for status in UserStatus:
        summary[status.value] = counts.get(status, 0)
    summary["lag_s"] = summary["finish_s"] - summary["finish_s"].min()
    for phase, column in (("waiting", "waited_s"), ("start-up", "startup_s")):
        mine = phases[phases["phase"] == phase] if phases is not None and len(phases) else None
        seconds = (mine["end_s"] - mine["start_s"]).groupby(mine["shard"]).sum() if mine is not None else pd.Series()
        summary[column] = seconds.reindex(summary.index, fill_value=0.0).astype("float64")
    summary = summary.reset_index(names="shard")
    summary["rank"] = summary["shard"].map(shard_sort_key)
    summary = summary.sort_values(["finish_s", "rank"], ascending=[False, True], kind="stable")
    return summary[columns].reset_index(drop=True)


def slow_users(timeline: pd.DataFrame, first: np.ndarray | None = None) -> pd.DataFrame:
    """Users that took SLOW_FACTOR times their estimate (scaled to the run's median; the median user without
    estimates) or more, SLOW_PER_SHARD per shard, the most over first. A JVM's first user is never judged."""
    predicted = timeline[PREDICTED].to_numpy(dtype="float64")
    has_estimate = bool(np.any(np.isfinite(predicted) & (predicted > 0)))
    if not has_estimate:
        predicted = np.ones(len(timeline))
    judged = np.isfinite(predicted) & (predicted > 0)
    if first is not None:
        judged &= ~first
    ratio = np.where(judged, timeline["seconds"].to_numpy(dtype="float64") / np.where(judged, predicted, 1.0), np.nan)
    slow = timeline.iloc[:0].copy()
    scale = float(np.nanmedian(ratio)) if judged.any() else math.nan
    if judged.any() and scale > 0:
        over = ratio / scale
        slow = timeline.assign(over=over)[(over >= SLOW_FACTOR) & (timeline["seconds"] > 0).to_numpy()]
        slow = slow.sort_values(["over", "start_s"], ascending=[False, True], kind="stable")
        slow = slow.groupby("shard", sort=False).head(SLOW_PER_SHARD).reset_index(drop=True)
    slow.attrs.update(basis="estimate" if has_estimate else "median", scale=scale, factor=SLOW_FACTOR)
    return slow


def timeline_bars(timeline: pd.DataFrame, max_bars_per_shard: int = MAX_BARS_PER_SHARD) -> pd.DataFrame:
    """Bars to draw: shard, start_s, end_s, status, users (how many users the bar stands for). Beyond
    max_bars_per_shard consecutive users share a bar (most common status, ties to the more severe)."""
    columns = ["shard", "start_s", "end_s", "status", "users"]
    if timeline.empty:
        return pd.DataFrame(columns=columns)
    frame = timeline[["shard", "start_s", "end_s", "status"]].copy()
    by_shard = frame.groupby("shard", sort=False)
    chunk = np.ceil(by_shard["shard"].transform("size") / max_bars_per_shard).astype("int64")
    total = float(frame["end_s"].max() - frame["start_s"].min())
    idle_gap = frame["start_s"] - by_shard["end_s"].shift() > max(total / 2000, 1e-9)
    frame["bar"] = ((by_shard.cumcount() % chunk == 0) | idle_gap).astype("int64").cumsum()  # by shard, then start
    frame["severity"] = frame["status"].map(STATUS_SEVERITY).fillna(max(STATUS_SEVERITY.values()))
    grouped = frame.groupby("bar", sort=True)
    bars = pd.DataFrame({"shard": grouped["shard"].first(), "start_s": grouped["start_s"].min(),
                         "end_s": grouped["end_s"].max(), "users": grouped.size()})
    # per bar the status with the largest count, the most severe first among equals
    tally = frame.groupby(["bar", "status"], sort=False).agg(n=("status", "size"), severity=("severity", "first"))
    tally = tally.reset_index().sort_values(["bar", "n", "severity"], ascending=[True, False, False], kind="stable")
    bars["status"] = tally.drop_duplicates("bar").set_index("bar")["status"]
    return bars[columns].reset_index(drop=True)


# --- trace.tsv: one row per attempt at a user -----------------------------------------------------

class TraceRow(TypedDict):
    """A row of trace.tsv (its columns in order; TRACE_SCHEMA types them for Arrow)."""

    user_id: Annotated[str, "the user"]
    shard: Annotated[str, "the shard (`i/K`) that ran it"]
    host: Annotated[str | None, "the machine that ran the attempt"]
    pid: Annotated[int | None, "the shard process that ran the attempt"]
    attempt: Annotated[int, "1 for the first attempt at the user in its shard dir, counting every earlier one recorded"
                            " (its errors.jsonl lines and committed records, replaced ones included); an attempt whose"
                            " commit a crash lost without an error line left no record and is not counted"]
    start: Annotated[str | None, "milliseconds (`2026-12-07T08:31:02.120+00:00`)"]
    end: Annotated[str | None, "`start` + `seconds`, milliseconds"]
    seconds: Annotated[float | None, "the attempt's duration (the rows' `seconds`, on the monotonic clock)"]
    status: Annotated[str, "`ok`, `skipped` or `failed`, as the user's rows say"]
    error_class: Annotated[str | None, "for a failed attempt, the class of what the analysis raised: the Java class for"
                                       " a Java exception (`java.lang.ArrayIndexOutOfBoundsException`), else the"
                                       " Python one (`HeapTooSmall`); empty otherwise. The message and stacks are in"
                                       " errors.jsonl"]
    heap_used_bytes: Annotated[int | None, "the JVM heap in use right after the attempt (`Runtime.totalMemory() -"
                                           " freeMemory()`)"]
    peak_rss_bytes: Annotated[int | None, "the shard process's peak resident size so far, at the attempt's end"]
    cpu_seconds: Annotated[float | None, "CPU time of the whole shard process during the attempt (the JVM's threads"
                                         " included); above `seconds` when the analysis ran on several threads"]
    committed: Annotated[str, "`yes` (its rows are the user's result), `replaced` (committed, then replaced through"
                              " `--retry-failed`), `no` (only its errors.jsonl line: the shard stopped before the"
                              " commit)"]


TRACE_SCHEMA = pa.schema([
    ("user_id", pa.string()), ("shard", pa.string()), ("host", pa.string()), ("pid", pa.int64()),
    ("attempt", pa.int64()), ("start", pa.string()), ("end", pa.string()), ("seconds", pa.float64()),
    ("status", pa.string()), ("error_class", pa.string()), ("heap_used_bytes", pa.int64()),
    ("peak_rss_bytes", pa.int64()), ("cpu_seconds", pa.float64()), ("committed", pa.string()),
])
TRACE_COLUMNS = tuple(TRACE_SCHEMA.names)
# the trace's columns as fields of an attempt record (storage/commits.py): all but `attempt` by their name
RECORD_FIELDS = {"attempt": "number", **{name: name for name in TRACE_COLUMNS[2:-1] if name != "attempt"}}
# `committed`: whether the attempt's rows are the shard's result for the user
COMMITTED = "yes"
REPLACED = "replaced"  # committed, then replaced by a later attempt (--retry-failed)
NOT_COMMITTED = "no"  # only its errors.jsonl line: the shard stopped before its commit landed

TSV_CHUNK_ROWS = 2**16  # rows built into text at once: the text of millions of rows is never one string
_TEXT = pa.large_string()
_TAB, _NEWLINE, _QUOTE, _EMPTY = (pa.scalar(text, _TEXT) for text in ("\t", "\n", '"', ""))


def trace_and_memory(shards: Sequence[ShardInput]) -> tuple[pa.Table, list[ShardMemory]]:
    """The trace of all shards, by shard (K, then i), then start (else end, for an older record without
    its start); and each shard's memory section (shard_memory), in the order of `shards`."""
    parts = [_shard_trace(shard) for shard in shards]
    memory = [shard_memory(shard, part) for shard, part in zip(shards, parts)]
    if not parts:
        return TRACE_SCHEMA.empty_table(), memory
    ranked = [part.append_column("_shard", pa.array([(shard.spec.count << 32) + shard.spec.index] * part.num_rows,
                                                    pa.int64())) for part, shard in zip(parts, shards)]
    table = pa.concat_tables(ranked)
    table = table.append_column("_when", pc.coalesce(table.column("start"), table.column("end")))
    table = table.sort_by([("_shard", "ascending"), ("_when", "ascending"), ("user_id", "ascending"),
                           ("attempt", "ascending")])
    return table.select(list(TRACE_COLUMNS)), memory


def _shard_trace(shard: ShardInput) -> pa.Table:
    committed = _committed_attempts(shard)
    table = pa.concat_tables([committed, _uncommitted_errors(shard.errors, committed)])
    table = table.set_column(TRACE_COLUMNS.index("shard"), "shard", pa.array([str(shard.spec)] * table.num_rows))
    return _numbered_by_end(table) if table.column("attempt").null_count else table


def _committed_attempts(shard: ShardInput) -> pa.Table:
    """A row per committed record from its attempt record, over whole columns; records without one (older
    runs) from their rows."""
    records = shard.attempts
    if records is None or not records.num_rows:
        return TRACE_SCHEMA.empty_table()
    attempts = records.column(ATTEMPT).combine_chunks()
    columns = {"user_id": records.column("user_id"), "shard": pa.nulls(records.num_rows, pa.string()),
               "committed": pc.if_else(records.column(STANDING), COMMITTED, REPLACED)}
    for column, field in RECORD_FIELDS.items():
        columns[column] = _field(attempts, field, TRACE_SCHEMA.field(column).type)
    table = pa.table({name: columns[name] for name in TRACE_COLUMNS}, schema=TRACE_SCHEMA)
    legacy = attempts.is_null()
    if not pc.any(legacy).as_py():
        return table
    return pa.concat_tables([table.filter(pc.invert(legacy)), _older_records(shard, records.filter(legacy))])


def _field(attempts: pa.Array, name: str, type: pa.DataType) -> pa.Array:
    """One field of the attempt records, as `type`; all null when no record has it."""
    if not pa.types.is_struct(attempts.type) or attempts.type.get_field_index(name) < 0:
        return pa.nulls(len(attempts), type)
    values = pc.struct_field(attempts, name)
    if pa.types.is_null(values.type):
        return pa.nulls(len(attempts), type)
    return values if values.type == type else pc.cast(values, type)


def _older_records(shard: ShardInput, records: pa.Table) -> pa.Table:
    """Records without an attempt record: status and seconds from the standing record's rows, end at its
    commit, start that many seconds before; a replaced one failed (only failed users run again), its
    duration unknown."""
    seconds, status = users_seconds_and_status(shard.table, shard.users)
    position = {user: at for at, user in enumerate(shard.users)}
    rows = []
    columns = [records.column(name).to_pylist() for name in ("user_id", "ended_at", STANDING)]
    for user_id, ended_at, standing in zip(*columns):
        at = position.get(user_id) if standing else None
        took = None if at is None or np.isnan(seconds[at]) else float(seconds[at])
        end = pd.to_datetime(ended_at, utc=True, errors="coerce", format="ISO8601")
        rows.append({"user_id": user_id, "status": UserStatus.FAILED.value if at is None else str(status[at]),
                     "seconds": took, "end": _iso(end), "committed": COMMITTED if standing else REPLACED,
                     "start": _iso(end - pd.Timedelta(seconds=took)) if took is not None else None})
    return pa.Table.from_pylist(rows, schema=TRACE_SCHEMA)


def _uncommitted_errors(errors: Sequence[Mapping[str, Any]], committed: pa.Table) -> pa.Table:
    """The errors.jsonl lines whose attempt no committed record carries. A line written before attempts
    were recorded is paired with one of the user's committed failed records of that age instead, its
    latest lines first; the lines left over are attempts."""
    if not errors:
        return TRACE_SCHEMA.empty_table()
    user_ids, hosts = committed.column("user_id").to_pylist(), committed.column("host").to_pylist()
    seen = set(zip(user_ids, committed.column("pid").to_pylist(), committed.column("start").to_pylist()))
    older_failed: dict[str | None, int] = defaultdict(int)
    for user_id, host, status in zip(user_ids, hosts, committed.column("status").to_pylist()):
        if host is None and status == UserStatus.FAILED.value:
            older_failed[user_id] += 1
    older_lines: dict[str | None, list[Mapping[str, Any]]] = defaultdict(list)
    rows = []
    for line in errors:
        attempt = attempt_of(line)
        if attempt is None:
            older_lines[line.get("user_id")].append(line)
        elif (line.get("user_id"), attempt.get("pid"), attempt.get("start")) not in seen:
            rows.append({"user_id": line.get("user_id"), "committed": NOT_COMMITTED,
                         **{column: attempt.get(field) for column, field in RECORD_FIELDS.items()}})
    for user_id, lines in older_lines.items():
        for line in lines[:max(len(lines) - older_failed[user_id], 0)]:
            end = pd.to_datetime(line.get("time", ""), utc=True, errors="coerce")
            rows.append({"user_id": user_id, "end": _iso(end),
                         "status": UserStatus.FAILED.value, "committed": NOT_COMMITTED,
                         "error_class": line.get("java_class") or line.get("error_type")})
    # values read from JSON: one of the wrong type is unknown (None)
    kinds: dict[Any, type | tuple[type, ...]] = {pa.int64(): int, pa.float64(): (int, float), pa.string(): str}
    typed = [{name: value if isinstance(value, kinds[TRACE_SCHEMA.field(name).type]) and not isinstance(value, bool)
              else None for name, value in row.items()} for row in rows]
    return pa.Table.from_pylist(typed, schema=TRACE_SCHEMA)


def _numbered_by_end(table: pa.Table) -> pa.Table:
    """A user with an attempt recorded without its number (an older run) has its attempts numbered 1, 2,
    ... in the order they ended."""
    frame = table.select(["user_id", "attempt", "end"]).to_pandas()
    unnumbered = set(frame.loc[frame["attempt"].isna(), "user_id"])
    mine = frame[frame["user_id"].isin(unnumbered)].assign(
        _ended=lambda f: pd.to_datetime(f["end"], utc=True, errors="coerce", format="ISO8601"))
    mine = mine.sort_values(["_ended", "attempt"], kind="stable", na_position="first")
    numbers = frame["attempt"].astype("Int64").copy()
    numbers.loc[mine.index] = mine.groupby("user_id", sort=False).cumcount().to_numpy() + 1
    return table.set_column(TRACE_COLUMNS.index("attempt"), "attempt", pa.array(numbers, pa.int64()))


def _iso(moment: Any) -> str | None:
    return None if moment is None or pd.isna(moment) else moment.isoformat(timespec="milliseconds")


def write_trace(table: pa.Table, path: Path) -> None:
    """trace.tsv: a header line, then a line per row, fields separated by tabs; a text field that holds a
    tab, a newline, a carriage return or a quote is quoted like CSV, its quotes doubled; unknown is empty.
    Each chunk of rows is joined by one Arrow call (64-bit offsets: long ids cannot overflow them)."""
    with open(path, "wb") as out:
        out.write(("\t".join(table.column_names) + "\n").encode("utf-8"))
        for start in range(0, table.num_rows, TSV_CHUNK_ROWS):
            pieces: list[pa.Array | pa.Scalar] = []
            for column in table.slice(start, TSV_CHUNK_ROWS).columns:
                pieces += [_tsv_field(column.combine_chunks()), _TAB]
            pieces[-1] = _NEWLINE
            out.write(text_bytes(pc.binary_join_element_wise(*pieces, _EMPTY)))


def _tsv_field(values: pa.Array) -> pa.Array:
    """A column's fields as text, none null: unknown is empty; text that needs it is quoted."""
    if not (pa.types.is_string(values.type) or pa.types.is_large_string(values.type)):
        return pc.fill_null(pc.cast(values, _TEXT), _EMPTY)
    values = pc.cast(values, _TEXT)
    needs_quotes = pc.match_substring_regex(values, '[\t\n\r"]')
    quoted = pc.binary_join_element_wise(_QUOTE, pc.replace_substring(values, pattern='"', replacement='""'), _QUOTE,
                                         _EMPTY)
    return pc.fill_null(pc.if_else(needs_quotes, quoted, values), _EMPTY)


# --- the merge report's memory section ----------------------------------------------------------


class ShardMemory(TypedDict):
    """A shard's `memory` in merge_report.json: what it was given against what it used (None where unknown)."""

    xmx: Annotated[str | None, "the `-Xmx` of the shard's JVM (of its last process, from status.json's `jvm`)"]
    xmx_bytes: Annotated[int | None, "the same in bytes"]
    budget_bytes: Annotated[int | None, "the memory set aside for the shard: SLURM's allocation where it ran as an"
                                        " array element, else what the launcher's admission counted (from"
                                        " launcher.json); null for a shard started by hand outside SLURM"]
    budget_source: Annotated[str | None, "`\"slurm --mem\"` or `\"launcher admission\"`"]
    peak_rss_bytes: Annotated[int | None, "the largest peak resident size of the shard's processes"]
    peak_heap_used_bytes: Annotated[int | None, "the largest JVM heap in use after any of its users"]
    processes: Annotated[int, "how many shard processes ran its attempts (distinct host and pid in the trace)"]


def shard_memory(shard: ShardInput, trace: pa.Table) -> ShardMemory:
    status = shard.status
    jvm_args = status.get("jvm") or shard.identity.get("jvm")
    # the last -Xmx is the one the JVM takes
    sizes = [arg[4:] for arg in jvm_args if isinstance(arg, str) and arg.startswith("-Xmx")] \
        if isinstance(jvm_args, list) else []
    xmx = sizes[-1] if sizes else None
    slurm = _count(status.get("slurm_mem_bytes"))
    launcher = _count(shard.launcher_slot.get("memory_budget_bytes"))
    budget, source = ((slurm, "slurm --mem") if slurm is not None
                      else (launcher, "launcher admission") if launcher is not None else (None, None))
    processes = trace.select(["host", "pid"]).drop_null().group_by(["host", "pid"]).aggregate([])
    return {
        "xmx": xmx,
        "xmx_bytes": heap_bytes(xmx) if xmx is not None else None,
        "budget_bytes": budget,
        "budget_source": source,
        "peak_rss_bytes": _largest(status.get("peak_rss_bytes"), pc.max(trace.column("peak_rss_bytes"))),
        "peak_heap_used_bytes": _largest(status.get("peak_heap_used_bytes"), pc.max(trace.column("heap_used_bytes"))),
        "processes": processes.num_rows,
    }


def _count(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def _largest(recorded: Any, seen: pa.Scalar) -> int | None:
    values = [value for value in (_count(recorded), seen.as_py()) if value is not None]
    return max(values) if values else None
