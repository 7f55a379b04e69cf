"""The per-shard timeline of a merge (run.png), pure: committed users as spans, the shards' process
starts, and the tables drawn from them (drawing is run_picture.py's job).
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np
import pandas as pd
import pyarrow as pa

from shardrun.results.read import USER, ShardInput
from shardrun.states import STATUSES, UserStatus

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
START_COLUMNS = ("shard", "started")  # a start table (start_table): one row per process start, POSIX seconds


def shard_sort_key(label: str) -> tuple:
    """Shards as people count them: "2/4" before "10/16", by K then i; other labels after, as text."""
    match = _SHARD_LABEL.match(label)
    if match:
        return (0, int(match.group(2)), int(match.group(1)), label)
    return (1, 0, 0, label)


def mapped(column: pd.Series, mapping: Mapping[Any, Any], default: Any) -> np.ndarray:
    """column.map(mapping), `default` for a value it does not name, looked up once per distinct value
    (map() on a text column calls Python once per row)."""
    codes, distinct = pd.factorize(column, use_na_sentinel=False)
    return np.array([mapping.get(value, default) for value in distinct])[codes]


def timeline_table(spans: pd.DataFrame | Iterable[Sequence[Any]], starts: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per span: shard, start_s, end_s (seconds since the run start), seconds, status, user_id,
    predicted_s (the task's estimate; NaN without one)."""
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
    order = {label: rank for rank, label in enumerate(sorted(table["shard"].unique(), key=shard_sort_key))}
    table["shard_rank"] = mapped(table["shard"], order, default=len(order))
    table = table.sort_values(["shard_rank", "start_s", "end_s"], kind="stable").reset_index(drop=True)
    table = table[["shard", "start_s", "end_s", "seconds", "status", "user_id", PREDICTED]]
    table.attrs["run_start"] = run_start
    return table


def relative_starts(starts: pd.DataFrame | None, timeline: pd.DataFrame) -> pd.DataFrame:
    """The start table in the timeline's seconds (since its run start): shard, started_s, sorted;
    only the shards the timeline has (a shard without committed users has nothing to draw)."""
    run_start = timeline.attrs.get("run_start")
    if starts is None or not len(starts) or run_start is None:
        return pd.DataFrame({"shard": pd.Series(dtype=object), "started_s": pd.Series(dtype="float64")})
    table = pd.DataFrame({"shard": starts["shard"].astype(str),
                          "started_s": starts["started"].astype("float64") - run_start})
    table = table[table["shard"].isin(timeline["shard"].unique())]
    return table.sort_values(["shard", "started_s"], kind="stable").reset_index(drop=True)


def _process_firsts(timeline: pd.DataFrame, starts: pd.DataFrame) -> list[tuple[str, float, int | None]]:
    """For each process start of `starts` (relative_starts): its shard, its time and the timeline row of
    the first user at or after it (None when no user came after it)."""
    begins = timeline["start_s"].to_numpy()
    rows_of = timeline.groupby("shard", sort=False).indices  # rows of a shard, in start order
    firsts = []
    for shard, started in zip(starts["shard"], starts["started_s"]):
        rows = rows_of.get(shard)
        if rows is None:
            continue
        # a user's start is its commit time less its seconds: a few milliseconds early at most
        after = np.searchsorted(begins[rows], started - 0.05)
        firsts.append((shard, float(started), int(rows[after]) if after < len(rows) else None))
    return firsts


def first_users(timeline: pd.DataFrame, starts: pd.DataFrame) -> np.ndarray:
    """Which spans of the timeline are the first user of a process (of a JVM just started, so its time
    holds the JIT's warm-up): the first span at or after each process start (`starts`: relative_starts),
    and the first span of a shard whose starts are not known."""
    first = np.zeros(len(timeline), dtype=bool)
    if timeline.empty:
        return first
    known = set(starts["shard"].unique()) if len(starts) else set()
    for shard, rows in timeline.groupby("shard", sort=False).indices.items():
        if shard not in known:
            first[rows[0]] = True
    for _, _, row in _process_firsts(timeline, starts):
        if row is not None:
            first[row] = True
    return first


def shard_phases(timeline: pd.DataFrame, starts: pd.DataFrame) -> pd.DataFrame:
    """What each shard did before its users: shard, phase, start_s, end_s."""
    columns = ["shard", "phase", "start_s", "end_s"]
    begins = timeline["start_s"].to_numpy()
    records = []
    waited: set[str] = set()
    for shard, started, row in _process_firsts(timeline, starts):  # starts are sorted by shard, then time
        if shard not in waited:
            waited.add(shard)
            if started > WAITED_AT_LEAST:
                records.append((shard, "waiting", 0.0, started))
        if row is not None:
            records.append((shard, "start-up", started, max(float(begins[row]), started)))
    return pd.DataFrame.from_records(records, columns=columns)


def shard_summary(timeline: pd.DataFrame, phases: pd.DataFrame | None = None) -> pd.DataFrame:
    """Per shard: users, ok / skipped / failed, first_start_s, finish_s, busy_s (sum of user
    seconds), lag_s (how long after the first shard to finish it finished), waited_s and startup_s
    (its phases' seconds, 0 without them). Ordered straggler first: latest finish first."""
    columns = ["shard", "users", *STATUSES, "first_start_s", "finish_s", "busy_s", "lag_s", "waited_s", "startup_s"]
    if timeline.empty:
        return pd.DataFrame(columns=columns)
    grouped = timeline.groupby("shard", sort=False)
    summary = pd.DataFrame(
        {
            "users": grouped.size(),
            "first_start_s": grouped["start_s"].min(),
            "finish_s": grouped["end_s"].max(),
            "busy_s": grouped["seconds"].sum(),
        }
    )
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


def slow_users(timeline: pd.DataFrame, first: np.ndarray | None = None, factor: float = SLOW_FACTOR,
               per_shard: int = SLOW_PER_SHARD) -> pd.DataFrame:
    """Users that took at least `factor` times what their estimate says, at most `per_shard` per shard,
    the most over their estimate first. A JVM's first user is never judged: its time holds the warm-up."""
    predicted = timeline[PREDICTED].to_numpy(dtype="float64") if PREDICTED in timeline.columns else None
    has_estimate = predicted is not None and bool(np.any(np.isfinite(predicted) & (predicted > 0)))
    if predicted is None or not has_estimate:
        predicted = np.ones(len(timeline))
    judged = np.isfinite(predicted) & (predicted > 0)
    if first is not None:
        judged &= ~first
    ratio = np.where(judged, timeline["seconds"].to_numpy(dtype="float64") / np.where(judged, predicted, 1.0), np.nan)
    slow = timeline.iloc[:0].copy()
    scale = float(np.nanmedian(ratio)) if judged.any() else math.nan
    if judged.any() and scale > 0:
        over = ratio / scale
        slow = timeline.assign(over=over)[(over >= factor) & (timeline["seconds"] > 0).to_numpy()]
        slow = slow.sort_values(["over", "start_s"], ascending=[False, True], kind="stable")
        slow = slow.groupby("shard", sort=False).head(per_shard).reset_index(drop=True)
    slow.attrs.update(basis="estimate" if has_estimate else "median", scale=scale, factor=factor)
    return slow


def timeline_bars(timeline: pd.DataFrame, max_bars_per_shard: int = MAX_BARS_PER_SHARD) -> pd.DataFrame:
    """Bars to draw: shard, start_s, end_s, status, users (how many users the bar stands for).
    Beyond max_bars_per_shard consecutive users share a bar (most common status, ties to the more severe)."""
    columns = ["shard", "start_s", "end_s", "status", "users"]
    if timeline.empty:
        return pd.DataFrame(columns=columns)
    frame = timeline[["shard", "start_s", "end_s", "status"]].copy()
    position = frame.groupby("shard", sort=False).cumcount()
    size = frame.groupby("shard", sort=False)["shard"].transform("size")
    chunk = np.ceil(size / max_bars_per_shard).astype("int64")
    previous_end = frame.groupby("shard", sort=False)["end_s"].shift()
    total = float(frame["end_s"].max() - frame["start_s"].min())
    idle_gap = frame["start_s"] - previous_end > max(total / 2000, 1e-9)
    starts_bar = (position % chunk == 0) | idle_gap
    frame["bar"] = starts_bar.astype("int64").cumsum()  # spans are sorted by shard then start
    frame["severity"] = mapped(frame["status"], STATUS_SEVERITY, default=max(STATUS_SEVERITY.values()))
    grouped = frame.groupby("bar", sort=True)
    bars = pd.DataFrame(
        {
            "shard": grouped["shard"].first(),
            "start_s": grouped["start_s"].min(),
            "end_s": grouped["end_s"].max(),
            "users": grouped.size(),
        }
    )
    # most common status per bar: count per (bar, status), then keep the largest count, the most
    # severe status first among equals
    tally = frame.groupby(["bar", "status"], sort=False).agg(n=("status", "size"), severity=("severity", "first"))
    tally = tally.reset_index().sort_values(["bar", "n", "severity"], ascending=[True, False, False], kind="stable")
    bars["status"] = tally.drop_duplicates("bar").set_index("bar")["status"]
    return bars[columns].reset_index(drop=True)


def table_spans(label: str, shard: ShardInput) -> tuple[pd.DataFrame, int]:
    """user_span for every committed user of a shard, over whole columns.
    Returns the spans (a span table) and the number of users without a readable ended_at."""
    seconds, status = users_seconds_and_status(shard.table, shard.users)
    ended = pd.to_datetime(pd.Series([shard.ended_at.get(u) for u in shard.users], dtype=object),
                           errors="coerce", utc=True, format="ISO8601")
    end = (ended - pd.Timestamp(0, tz="UTC")).dt.total_seconds().to_numpy()
    timed = ~np.isnan(end)
    spans = pd.DataFrame({"shard": label, "start": (end - seconds)[timed], "end": end[timed],
                          "status": status[timed], "user_id": np.array(shard.users, dtype=object)[timed]},
                         columns=list(SPAN_COLUMNS))
    return spans, int((~timed).sum())


def users_seconds_and_status(table: pa.Table | None, users: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Per user of `users` (in that order), from its rows in `table` (column read.USER): its
    seconds, the largest finite, non-negative `seconds` of its rows (0 without one), and its status
    by user_outcome's rule. Counted with numpy: a pandas group-by per shard costs more than its rows."""
    if table is None or not table.num_rows:
        return np.zeros(len(users)), np.full(len(users), UserStatus.FAILED.value)
    owner = pd.Index(list(users), dtype=object).get_indexer(table.column(USER).to_numpy(zero_copy_only=False))
    row_seconds = pd.to_numeric(_column(table, "seconds"), errors="coerce").to_numpy(dtype=float, na_value=np.nan)
    usable = np.isfinite(row_seconds) & (row_seconds >= 0)
    seconds = np.zeros(len(users))
    np.maximum.at(seconds, owner[usable], row_seconds[usable])  # seconds are >= 0: 0 is "none"
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


def shard_labels(shards: Sequence[ShardInput]) -> list[str]:
    """Each shard dir's label on the timeline: its shard ("1/4"), with its run dir's name where shards
    of one index from different runs are merged."""
    labels = [str(s.spec) for s in shards]
    repeated = {label for label in labels if labels.count(label) > 1}
    return [f"{label} {shard.dir.parent.name}" if label in repeated else label for shard, label in zip(shards, labels)]


def span_table(shards: Sequence[ShardInput]) -> pd.DataFrame:
    """Every committed user of every shard dir as a timeline span, one row each with UserSpan's fields
    as columns (duplicates included: each was real work of its shard), built over whole columns."""
    parts = []
    untimed = 0
    for shard, label in zip(shards, shard_labels(shards)):
        part, shard_untimed = table_spans(label, shard)
        parts.append(part)
        untimed += shard_untimed
    if untimed:
        log.warning("%d committed users have no readable ended_at; they are left out of the timeline only", untimed)
    non_empty = [part for part in parts if len(part)]
    if not non_empty:
        return pd.DataFrame(columns=list(SPAN_COLUMNS))
    return pd.concat(non_empty, ignore_index=True)


def start_table(shards: Sequence[ShardInput]) -> pd.DataFrame:
    """Every recorded process start of every shard dir (ShardInput.process_starts), one row each with
    START_COLUMNS, labelled as span_table labels the shard's users."""
    rows = [(label, started) for shard, label in zip(shards, shard_labels(shards)) for started in shard.process_starts]
    return pd.DataFrame(rows, columns=list(START_COLUMNS)).astype({"started": "float64"})

