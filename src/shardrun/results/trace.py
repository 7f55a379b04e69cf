"""merged/trace.tsv and the merge report's memory section, built from what read_shard returns (pure).

The trace has one row per attempt at a user that reached a commit or an error record (Nextflow's
trace, GNU parallel's joblog): every committed record of every shard dir, the ones --retry-failed
replaced included, and every errors.jsonl line whose commit never landed. A failed attempt leaves both
an error line and a committed record; they carry the same attempt record (storage/attempts.py) and
are one row. Records written before attempts were recorded give what they can: status, seconds and
end from the rows and the commit, host, pid and memory empty, attempts numbered by time.

trace.tsv is tab-separated, quoted like CSV: a field holding a tab, a newline, a carriage return or a
double quote is put in double quotes, its quotes doubled (user ids are untrusted text), so
`pandas.read_csv(path, sep="\\t", dtype={"user_id": str}, keep_default_na=False)` and R's
`read.delim(path, colClasses=c(user_id="character"), na.strings="")` give every id back exactly.
"""

from __future__ import annotations

import csv
from collections import defaultdict
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
import pyarrow as pa

from shardrun.results.columnar import STANDING, USER
from shardrun.results.read import ShardInput
from shardrun.states import UserStatus, user_outcome
from shardrun.storage.attempts import ATTEMPT, FIELDS, attempt_of
from shardrun.units import heap_bytes

TRACE_COLUMNS = ("user_id", "shard", "host", "pid", "attempt", "start", "end", "seconds", "status", "error_class",
                 "heap_used_bytes", "peak_rss_bytes", "cpu_seconds", "committed")
_WHOLE_NUMBERS = ("pid", "attempt", "heap_used_bytes", "peak_rss_bytes")
_DECIMALS = ("seconds", "cpu_seconds")

# `committed`: whether the attempt's rows are the shard's result for the user
COMMITTED = "yes"
REPLACED = "replaced"  # committed, then replaced by a later attempt (--retry-failed)
NOT_COMMITTED = "no"  # only its errors.jsonl line: the shard stopped before its commit landed


def trace_and_memory(shards: Sequence[ShardInput]) -> tuple[pd.DataFrame, list[dict[str, Any]]]:
    """The trace (trace_frame) and each shard's memory section (shard_memory), in the order of `shards`."""
    parts = [shard_trace(shard) for shard in shards]
    return trace_frame(parts), [shard_memory(shard, part) for shard, part in zip(shards, parts)]


def trace_frame(parts: Sequence[pd.DataFrame]) -> pd.DataFrame:
    """The shards' traces (shard_trace) as one table (TRACE_COLUMNS), by shard, then start (else end)."""
    parts = [part for part in parts if len(part)]
    if not parts:
        return _typed(pd.DataFrame(columns=list(TRACE_COLUMNS)))
    frame = pd.concat(parts, ignore_index=True)
    frame["_when"] = frame["start"].where(frame["start"].notna(), frame["end"])  # an older record may lack its start
    order = frame.sort_values(["_shard_order", "_when", "user_id", "attempt"], kind="stable", na_position="last")
    return _typed(order[list(TRACE_COLUMNS)].reset_index(drop=True))


def shard_trace(shard: ShardInput) -> pd.DataFrame:
    committed = _committed_attempts(shard)
    failed_before = _uncommitted_errors(shard.errors, committed)
    frame = pd.concat([part for part in (committed, failed_before) if len(part)] or [committed], ignore_index=True)
    frame = _numbered(frame)
    frame["shard"] = str(shard.spec)
    frame["_shard_order"] = shard.spec.count * 1_000_000 + shard.spec.index
    return frame


def _committed_attempts(shard: ShardInput) -> pd.DataFrame:
    table = shard.attempts
    if table is None or not table.num_rows:
        return pd.DataFrame(columns=[*TRACE_COLUMNS, "_legacy"])
    frame = pd.DataFrame({"user_id": table.column("user_id").to_pylist(),
                          "ended_at": table.column("ended_at").to_pylist()})
    frame["committed"] = np.where(table.column(STANDING).to_numpy(zero_copy_only=False), COMMITTED, REPLACED)
    attempts = table.column(ATTEMPT)
    fields = _struct_fields(attempts)
    for name in FIELDS:
        frame["attempt" if name == "number" else name] = fields.get(name, [None] * table.num_rows)
    frame["_legacy"] = attempts.is_null().to_numpy(zero_copy_only=False)
    if frame["_legacy"].any():
        _fill_legacy(frame, shard)
    return frame.drop(columns=["ended_at"])


def _struct_fields(column: pa.ChunkedArray) -> dict[str, list[Any]]:
    """The fields of the attempt records as Python lists (none when no record has one)."""
    if not pa.types.is_struct(column.type):
        return {}
    values = column.combine_chunks()
    return {values.type.field(i).name: values.field(i).to_pylist() for i in range(values.type.num_fields)}


def _fill_legacy(frame: pd.DataFrame, shard: ShardInput) -> None:
    """Records without an attempt record (written before attempts were recorded): status and seconds
    from the standing record's rows, end at its commit, start that many seconds before; a replaced one
    failed (only failed users are run again), its duration unknown."""
    legacy = frame["_legacy"].to_numpy()
    outcomes = _row_outcomes(shard, set(frame.loc[legacy, "user_id"]))
    standing = frame["committed"].to_numpy() == COMMITTED
    for index in np.flatnonzero(legacy):
        user_id = frame.at[index, "user_id"]
        status, seconds = outcomes.get(user_id, (UserStatus.FAILED.value, None)) if standing[index] \
            else (UserStatus.FAILED.value, None)
        end = pd.to_datetime(frame.at[index, "ended_at"], utc=True, errors="coerce", format="ISO8601")
        frame.at[index, "status"] = status
        frame.at[index, "seconds"] = seconds
        frame.at[index, "end"] = _iso(end)
        frame.at[index, "start"] = _iso(end - pd.Timedelta(seconds=seconds)) if seconds is not None else None


def _row_outcomes(shard: ShardInput, users: set[str]) -> dict[str, tuple[str, float | None]]:
    """Each user's outcome (states.user_outcome) and seconds (its rows' largest) from its standing rows."""
    if shard.columnar:
        if shard.table is None:
            return {}
        columns = [c for c in (USER, "status", "seconds") if c in shard.table.column_names]
        rows_by_user: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for row in shard.table.select(columns).to_pylist():
            if row[USER] in users:
                rows_by_user[row[USER]].append(row)
    else:
        rows_by_user = {user: list(shard.committed.get(user, [])) for user in users}
    outcomes = {}
    for user, rows in rows_by_user.items():
        seconds = [r.get("seconds") for r in rows if isinstance(r.get("seconds"), (int, float))]
        outcomes[user] = (user_outcome(rows).value, max(seconds) if seconds else None)
    return outcomes


def _uncommitted_errors(errors: Sequence[Mapping[str, Any]], committed: pd.DataFrame) -> pd.DataFrame:
    """The errors.jsonl lines that are attempts of their own: those whose attempt record no committed
    record carries. A line written before attempts were recorded is paired with the user's committed
    failed records of that age instead, the latest lines first; the lines left over are attempts."""
    if not errors:
        return pd.DataFrame(columns=list(TRACE_COLUMNS))
    seen = set(zip(committed["user_id"], committed["pid"], committed["start"])) if len(committed) else set()
    legacy_failed: dict[str, int] = defaultdict(int)
    if len(committed):
        for user_id in committed.loc[committed["_legacy"] & (committed["status"] == UserStatus.FAILED.value),
                                     "user_id"]:
            legacy_failed[user_id] += 1
    legacy_lines: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
    rows = []
    for line in errors:
        attempt = attempt_of(line)
        if attempt is None:
            legacy_lines[line.get("user_id")].append(line)
            continue
        if (line.get("user_id"), attempt.get("pid"), attempt.get("start")) in seen:
            continue
        rows.append({"user_id": line.get("user_id"), **{("attempt" if k == "number" else k): attempt.get(k)
                                                        for k in FIELDS}, "committed": NOT_COMMITTED})
    for user_id, lines in legacy_lines.items():
        for line in lines[:max(len(lines) - legacy_failed[user_id], 0)]:
            rows.append({"user_id": user_id, "end": _iso(pd.to_datetime(line.get("time"), utc=True, errors="coerce")),
                         "status": UserStatus.FAILED.value,
                         "error_class": line.get("java_class") or line.get("error_type"), "committed": NOT_COMMITTED})
    return pd.DataFrame(rows, columns=list(TRACE_COLUMNS))


def _numbered(frame: pd.DataFrame) -> pd.DataFrame:
    """Attempt numbers as recorded; a user with an attempt recorded without one (an older run) has its
    attempts numbered 1, 2, ... in the order they ended."""
    if not len(frame):
        return frame
    unnumbered = set(frame.loc[pd.isna(frame["attempt"]), "user_id"])
    if unnumbered:
        mine = frame["user_id"].isin(unnumbered)
        ended = pd.to_datetime(frame["end"], utc=True, errors="coerce", format="ISO8601")
        order = frame.assign(_ended=ended)[mine].sort_values(["_ended", "attempt"], kind="stable", na_position="first")
        frame.loc[order.index, "attempt"] = order.groupby("user_id", sort=False).cumcount().to_numpy() + 1
    return frame


def _iso(moment: Any) -> str | None:
    return None if moment is None or pd.isna(moment) else moment.isoformat(timespec="milliseconds")


def _typed(frame: pd.DataFrame) -> pd.DataFrame:
    frame = frame.copy()
    for column in _WHOLE_NUMBERS:
        frame[column] = pd.to_numeric(frame[column], errors="coerce").astype("Int64")
    for column in _DECIMALS:
        frame[column] = pd.to_numeric(frame[column], errors="coerce").astype("float64")
    for column in set(TRACE_COLUMNS) - set(_WHOLE_NUMBERS) - set(_DECIMALS):
        frame[column] = frame[column].astype(object).where(pd.notna(frame[column]), None)
    return frame


def write_trace(frame: pd.DataFrame, path: Path) -> None:
    """trace.tsv: tab-separated, a header line, quoted like CSV where a field needs it (module docstring)."""
    frame.to_csv(path, sep="\t", index=False, lineterminator="\n", quoting=csv.QUOTE_MINIMAL, quotechar='"',
                 doublequote=True, na_rep="", encoding="utf-8")


def read_trace(path: Path) -> pd.DataFrame:
    """trace.tsv as written: ids and text as text, empty fields missing."""
    return pd.read_csv(path, sep="\t", dtype={c: str for c in ("user_id", "shard", "host", "start", "end", "status",
                                                                 "error_class", "committed")},
                       keep_default_na=False, na_values=[""], encoding="utf-8")


# --- the merge report's memory section ----------------------------------------------------------


def shard_memory(shard: ShardInput, trace: pd.DataFrame) -> dict[str, Any]:
    """What a shard was given against what it used, for merge_report.json (None where unknown).

    Requested: the JVM's -Xmx (its last process's, from status.json), and the memory budget: SLURM's
    allocation where the shard ran as an element (status.json's slurm_mem_bytes), else what the local
    launcher's admission counted for it (launcher.json). Used: the peak RSS of the shard's processes
    (the largest of them: each process carries its predecessors' peak in status.json) and the largest
    heap in use after any user. `trace` is this shard's rows of the trace."""
    status = shard.status
    xmx = _xmx(status.get("jvm") or shard.identity.get("jvm"))
    slurm = _count(status.get("slurm_mem_bytes"))
    launcher = _count(shard.launcher_slot.get("memory_budget_bytes"))
    budget, source = (slurm, "slurm --mem") if slurm is not None else (
        (launcher, "launcher admission") if launcher is not None else (None, None))
    return {
        "xmx": xmx,
        "xmx_bytes": heap_bytes(xmx) if xmx is not None else None,
        "budget_bytes": budget,
        "budget_source": source,
        "peak_rss_bytes": _largest(_count(status.get("peak_rss_bytes")), trace["peak_rss_bytes"]),
        "peak_heap_used_bytes": _largest(_count(status.get("peak_heap_used_bytes")), trace["heap_used_bytes"]),
        "processes": int(trace[["host", "pid"]].dropna().drop_duplicates().shape[0]),
    }


def _xmx(jvm_args: Any) -> str | None:
    """The heap size of the last -Xmx among the JVM's arguments (the one the JVM takes)."""
    if not isinstance(jvm_args, list):
        return None
    sizes = [arg[4:] for arg in jvm_args if isinstance(arg, str) and arg.startswith("-Xmx")]
    return sizes[-1] if sizes else None


def _count(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def _largest(recorded: int | None, column: pd.Series) -> int | None:
    seen = [int(v) for v in (recorded, column.max() if column.notna().any() else None) if v is not None]
    return max(seen) if seen else None
