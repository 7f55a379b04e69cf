"""merged/trace.tsv (one row per attempt at a user) and the merge report's memory section (pure).

trace.tsv is tab-separated, quoted like CSV, so every untrusted user id reads back exactly (docs/FORMATS.md).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from shardrun.results.frame import text_bytes
from shardrun.results.read import STANDING, USER, ShardInput
from shardrun.states import UserStatus, user_outcome
from shardrun.storage.attempts import ATTEMPT, attempt_of
from shardrun.units import heap_bytes

TRACE_SCHEMA = pa.schema([
    ("user_id", pa.string()), ("shard", pa.string()), ("host", pa.string()), ("pid", pa.int64()),
    ("attempt", pa.int64()), ("start", pa.string()), ("end", pa.string()), ("seconds", pa.float64()),
    ("status", pa.string()), ("error_class", pa.string()), ("heap_used_bytes", pa.int64()),
    ("peak_rss_bytes", pa.int64()), ("cpu_seconds", pa.float64()), ("committed", pa.string()),
])
TRACE_COLUMNS = tuple(TRACE_SCHEMA.names)
# the trace's columns as fields of an attempt record (storage/attempts.py), where they are one
RECORD_FIELDS = {"host": "host", "pid": "pid", "attempt": "number", "start": "start", "end": "end",
                 "seconds": "seconds", "status": "status", "error_class": "error_class",
                 "heap_used_bytes": "heap_used_bytes", "peak_rss_bytes": "peak_rss_bytes",
                 "cpu_seconds": "cpu_seconds"}

# `committed`: whether the attempt's rows are the shard's result for the user
COMMITTED = "yes"
REPLACED = "replaced"  # committed, then replaced by a later attempt (--retry-failed)
NOT_COMMITTED = "no"  # only its errors.jsonl line: the shard stopped before its commit landed

TSV_CHUNK_ROWS = 2**16  # rows built into text at once: the text of millions of rows is never one string
_TEXT = pa.large_string()
_TAB, _NEWLINE, _QUOTE, _EMPTY = (pa.scalar(text, _TEXT) for text in ("\t", "\n", '"', ""))


def trace_and_memory(shards: Sequence[ShardInput]) -> tuple[pa.Table, list[dict[str, Any]]]:
    """The trace (trace_table) and each shard's memory section (shard_memory), in the order of `shards`."""
    parts = [shard_trace(shard) for shard in shards]
    return trace_table(shards, parts), [shard_memory(shard, part) for shard, part in zip(shards, parts)]


def trace_table(shards: Sequence[ShardInput], parts: Sequence[pa.Table]) -> pa.Table:
    """The shards' traces (shard_trace, one per shard) as one table, by shard (K, then i), then start
    (else end, for an older record without its start)."""
    if not parts:
        return TRACE_SCHEMA.empty_table()
    order = [shard.spec.count * 2**32 + shard.spec.index for shard in shards]
    table = pa.concat_tables([part.append_column("_shard", pa.array([rank] * part.num_rows, pa.int64()))
                              for part, rank in zip(parts, order)])
    table = table.append_column("_when", pc.coalesce(table.column("start"), table.column("end")))
    table = table.sort_by([("_shard", "ascending"), ("_when", "ascending"), ("user_id", "ascending"),
                           ("attempt", "ascending")])
    return table.select(list(TRACE_COLUMNS))


def shard_trace(shard: ShardInput) -> pa.Table:
    """One shard dir's attempts, TRACE_SCHEMA's columns."""
    committed = _committed_attempts(shard)
    table = pa.concat_tables([committed, _uncommitted_errors(shard.errors, committed)])
    table = table.set_column(TRACE_COLUMNS.index("shard"), "shard", pa.array([str(shard.spec)] * table.num_rows))
    if table.column("attempt").null_count:
        table = _numbered_by_end(table)
    return table


def _committed_attempts(shard: ShardInput) -> pa.Table:
    """A row per committed record, from its attempt record over whole columns; records without one
    (older runs) from their rows, one by one."""
    records = shard.attempts
    if records is None or not records.num_rows:
        return TRACE_SCHEMA.empty_table()
    attempts = records.column(ATTEMPT).combine_chunks()
    standing = records.column(STANDING)
    columns = {"user_id": records.column("user_id"), "shard": pa.nulls(records.num_rows, pa.string()),
               "committed": pc.if_else(standing, COMMITTED, REPLACED)}
    for column, field in RECORD_FIELDS.items():
        columns[column] = _field(attempts, field, TRACE_SCHEMA.field(column).type)
    table = pa.table({name: columns[name] for name in TRACE_COLUMNS}, schema=TRACE_SCHEMA)
    legacy = attempts.is_null()
    if not pc.any(legacy).as_py():
        return table
    older = _older_records(shard, records.filter(legacy))
    return pa.concat_tables([table.filter(pc.invert(legacy)), older])


def _field(attempts: pa.Array, name: str, type: pa.DataType) -> pa.Array:
    """One field of the attempt records, as `type`; all null when no record has it."""
    if not pa.types.is_struct(attempts.type) or attempts.type.get_field_index(name) < 0:
        return pa.nulls(len(attempts), type)
    values = pc.struct_field(attempts, name)
    if pa.types.is_null(values.type):
        return pa.nulls(len(attempts), type)
    return values if values.type == type else pc.cast(values, type)


def _older_records(shard: ShardInput, records: pa.Table) -> pa.Table:
    """Records without an attempt record (written before attempts were recorded): status and seconds
    from the standing record's rows, end at its commit, start that many seconds before; a replaced one
    failed (only failed users are run again), its duration unknown."""
    outcomes = _row_outcomes(shard, set(records.column("user_id").to_pylist()))
    rows = []
    for user_id, ended_at, standing in zip(records.column("user_id").to_pylist(),
                                          records.column("ended_at").to_pylist(),
                                          records.column(STANDING).to_pylist()):
        status, seconds = outcomes.get(user_id, (UserStatus.FAILED.value, None)) if standing \
            else (UserStatus.FAILED.value, None)
        end = pd.to_datetime(ended_at, utc=True, errors="coerce", format="ISO8601")
        rows.append({"user_id": user_id, "status": status, "seconds": seconds, "end": _iso(end),
                     "start": _iso(end - pd.Timedelta(seconds=seconds)) if seconds is not None else None,
                     "committed": COMMITTED if standing else REPLACED})
    return pa.Table.from_pylist(rows, schema=TRACE_SCHEMA)


def _row_outcomes(shard: ShardInput, users: set[str]) -> dict[str, tuple[str, float | None]]:
    """Each user's outcome (states.user_outcome) and seconds (its rows' largest), from its standing rows."""
    rows_by_user: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
    if shard.table is not None:
        table = shard.table
        table = table.filter(pc.is_in(table.column(USER), pa.array(sorted(users), pa.string())))
        for row in table.select([c for c in (USER, "status", "seconds") if c in table.column_names]).to_pylist():
            rows_by_user[row[USER]].append(row)
    outcomes = {}
    for user, rows in rows_by_user.items():
        seconds = [r["seconds"] for r in rows if isinstance(r.get("seconds"), (int, float))]
        outcomes[user] = (user_outcome(rows).value, max(seconds) if seconds else None)
    return outcomes


def _uncommitted_errors(errors: Sequence[Mapping[str, Any]], committed: pa.Table) -> pa.Table:
    """The errors.jsonl lines that are attempts of their own: those whose attempt record no committed
    record carries. A line written before attempts were recorded is paired with one of the user's
    committed failed records of that age instead, its latest lines first; the lines left over are
    attempts."""
    if not errors:
        return TRACE_SCHEMA.empty_table()
    seen = set(zip(committed.column("user_id").to_pylist(), committed.column("pid").to_pylist(),
                   committed.column("start").to_pylist()))
    older_failed: dict[str | None, int] = defaultdict(int)
    for user_id, host, status in zip(committed.column("user_id").to_pylist(), committed.column("host").to_pylist(),
                                     committed.column("status").to_pylist()):
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
            rows.append({"user_id": user_id, "end": _iso(pd.to_datetime(line.get("time", ""), utc=True, errors="coerce")),
                         "status": UserStatus.FAILED.value, "committed": NOT_COMMITTED,
                         "error_class": line.get("java_class") or line.get("error_type")})
    return pa.Table.from_pylist([_typed_row(row) for row in rows], schema=TRACE_SCHEMA)


def _typed_row(row: Mapping[str, Any]) -> dict[str, Any]:
    """A row of TRACE_SCHEMA from values read from JSON: a value of the wrong type is unknown (None)."""
    kinds: dict[Any, type | tuple[type, ...]] = {pa.int64(): int, pa.float64(): (int, float), pa.string(): str}
    return {name: value if isinstance(value, kinds[TRACE_SCHEMA.field(name).type])
            and not isinstance(value, bool) else None for name, value in row.items()}


def _numbered_by_end(table: pa.Table) -> pa.Table:
    """A user with an attempt recorded without its number (an older run) has its attempts numbered
    1, 2, ... in the order they ended."""
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


# --- trace.tsv ----------------------------------------------------------------------------------


def write_trace(table: pa.Table, path: Path) -> None:
    """trace.tsv: a header line, then a line per row, fields separated by tabs; a text field that holds
    a tab, a newline, a carriage return or a quote is quoted like CSV, its quotes doubled; unknown is empty."""
    with open(path, "wb") as out:
        out.write(("\t".join(table.column_names) + "\n").encode("utf-8"))
        for start in range(0, table.num_rows, TSV_CHUNK_ROWS):
            out.write(_tsv_lines(table.slice(start, TSV_CHUNK_ROWS)))


def _tsv_lines(chunk: pa.Table) -> pa.Buffer:
    """The chunk's rows as lines, one buffer: each field, then a tab, the last one a newline, joined by
    one Arrow call (64-bit offsets: a chunk of long ids cannot overflow them)."""
    pieces: list[pa.Array | pa.Scalar] = []
    for column in chunk.columns:
        pieces += [_tsv_field(column.combine_chunks()), _TAB]
    pieces[-1] = _NEWLINE
    return text_bytes(pc.binary_join_element_wise(*pieces, _EMPTY))


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


def shard_memory(shard: ShardInput, trace: pa.Table) -> dict[str, Any]:
    """What a shard was given against what it used, for merge_report.json (None where unknown)."""
    status = shard.status
    xmx = _xmx(status.get("jvm") or shard.identity.get("jvm"))
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
        "peak_rss_bytes": _largest(_count(status.get("peak_rss_bytes")), pc.max(trace.column("peak_rss_bytes"))),
        "peak_heap_used_bytes": _largest(_count(status.get("peak_heap_used_bytes")),
                                         pc.max(trace.column("heap_used_bytes"))),
        "processes": processes.num_rows,
    }


def _xmx(jvm_args: Any) -> str | None:
    """The heap size of the last -Xmx among the JVM's arguments (the one the JVM takes)."""
    if not isinstance(jvm_args, list):
        return None
    sizes = [arg[4:] for arg in jvm_args if isinstance(arg, str) and arg.startswith("-Xmx")]
    return sizes[-1] if sizes else None


def _count(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def _largest(recorded: int | None, seen: pa.Scalar) -> int | None:
    values = [value for value in (recorded, seen.as_py()) if value is not None]
    return max(values) if values else None
