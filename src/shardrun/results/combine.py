"""The merge's rules, pure: which row is kept for a key, what is a duplicate, what is a conflict,
which shards and users are missing.

This is where the merge decides a conflict: rows that share a key are identical duplicates when
every value agrees (bookkeeping columns aside, missing == missing), and conflicts otherwise.
"Agrees" is by JSON type and value (json_type): true is not 1 and "1" is not 1; a number is one
JSON type, so 1128 and 1128.0 are the same number (JSON does not tell them apart, and the merged
column types them alike: frame.column_types). Nothing here reads or writes a file; the inputs are
the ShardInputs that read.py built.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd
import pyarrow as pa

from shardrun.results.columnar import PLAIN_TYPES, SOURCE, USER, typed_frame_of_table
from shardrun.results.read import ShardInput
from shardrun.sharding import ShardSpec
from shardrun.task import BOOKKEEPING_COLUMNS

# --- consistency of the shards ---------------------------------------------------------------


def find_mismatch(shards: Sequence[ShardInput]) -> list[dict[str, Any]]:
    """Per dir, its config hash and data fingerprint, when the shards do not all agree; else []."""
    identities = {(s.config_hash, s.data_fingerprint) for s in shards}
    if len(identities) <= 1:
        return []
    return [
        {"dir": str(s.dir), "config_hash": s.config_hash, "data_fingerprint": s.data_fingerprint} for s in shards
    ]


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


def json_type(value: Any) -> str:
    """The JSON type of a value read from a result file: null (also NaN), boolean, number, string,
    array or object. int and float are both "number"; bool is not a number here (JSON's true is not 1)."""
    if is_missing(value):
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, (list, tuple)):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def values_equal(a: Any, b: Any) -> bool:
    """Same JSON type and equal value, with missing == missing (so NaN == NaN and null == NaN).

    true != 1, "1" != 1, 1128 == 1128.0 (one JSON number); arrays and objects element by element."""
    kind = json_type(a)
    if kind != json_type(b):
        return False
    if kind == "null":
        return True
    if kind == "array":
        return len(a) == len(b) and all(values_equal(x, y) for x, y in zip(a, b))
    if kind == "object":
        return a.keys() == b.keys() and all(values_equal(a[k], b[k]) for k in a)
    return a == b


def differing_columns(a: Mapping[str, Any], b: Mapping[str, Any]) -> list[str]:
    """Columns whose values differ, bookkeeping aside (shard, seconds and config hash differ by design)."""
    columns = sorted((set(a) | set(b)) - set(BOOKKEEPING_COLUMNS))
    return [c for c in columns if not values_equal(a.get(c), b.get(c))]


def row_key(row: Mapping[str, Any], key_columns: Sequence[str]) -> tuple:
    return tuple(row.get(c) for c in key_columns)


def typed_key(row: Mapping[str, Any], key_columns: Sequence[str]) -> tuple:
    """The key as the merge matches it: with each value's JSON type, so a key of true and one of 1
    (equal and of one hash in Python) are different keys. A key of strings only (the usual user id and
    mode) is its plain tuple: it cannot equal a typed one, whose members are tuples."""
    values = row_key(row, key_columns)
    if all(type(v) is str for v in values):
        return values
    return tuple((json_type(v), None if is_missing(v) else repr(v) if json_type(v) in ("array", "object") else v)
                 for v in values)


def conflict(key_columns: Sequence[str], key: Sequence[Any], dirs: tuple[Path, Path],
             rows: tuple[Mapping[str, Any], Mapping[str, Any]], differences: Sequence[str]) -> dict[str, Any]:
    """A conflict as merge_report.json lists it: the key, the two dirs, each differing column's two values."""
    return {
        "key": dict(zip(key_columns, key)),
        "dirs": [str(dirs[0]), str(dirs[1])],
        "differences": [{"column": c, "values": [rows[0].get(c), rows[1].get(c)]} for c in differences],
    }


def combine_rows(shards: Sequence[ShardInput], key_columns: Sequence[str]) -> Combined:
    """One row per key. The first row (shards in the given order) is kept; later ones with the same
    key are counted as identical duplicates, or listed as conflicts when any value differs."""
    kept: dict[tuple, KeptRow] = {}
    identical = 0
    conflicts: list[dict[str, Any]] = []
    for shard in shards:
        for user_id, rows in shard.committed.items():
            for row in rows:
                typed = typed_key(row, key_columns)
                first = kept.get(typed)
                if first is None:
                    kept[typed] = KeptRow(row=row, user_id=user_id, source=shard.dir)
                    continue
                differences = differing_columns(first.row, row)
                if not differences:
                    identical += 1
                    continue
                conflicts.append(conflict(key_columns, row_key(row, key_columns), (first.source, shard.dir),
                                          (first.row, row), differences))
    return Combined(rows=list(kept.values()), identical_duplicates=identical, conflicts=conflicts)


# --- combining whole columns (the columnar merge) -----------------------------------------------


@dataclass(frozen=True)
class CombinedFrame:
    """The merge's result set, however it was combined (combine_tables, or combine_rows and frame.typed_frame)."""

    frame: pd.DataFrame  # one row per key, sorted by key, typed, in the output columns
    users: list[str]  # the committed user of each row of `frame`
    identical_duplicates: int
    conflicts: list[dict[str, Any]]
    mixed: list[dict[str, Any]] = field(default_factory=list)  # columns of more than one JSON type (as text)
    dropped: list[str] = field(default_factory=list)  # columns the rows carry that the schema does not have


def combine_tables(tables: Sequence[pa.Table | None], dirs: Sequence[Path], key_columns: Sequence[str],
                   columns: Sequence[str]) -> CombinedFrame | None:
    """combine.combine_rows, sorted_rows and frame.typed_frame over whole columns; None when the shards'
    columns cannot be one typed table (then the merge goes row by row)."""
    present = [t.append_column(SOURCE, pa.array(np.full(t.num_rows, n, dtype=np.int32)))
               for n, t in enumerate(tables) if t is not None]
    if not present:
        return None
    try:
        table = pa.concat_tables(present, promote_options="permissive")
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
        return None  # a column of one JSON type in one shard and another in the next
    for column in key_columns:
        if column not in table.column_names or not (pa.types.is_string(table.schema.field(column).type)
                                                    or pa.types.is_large_string(table.schema.field(column).type)):
            return None
        if table.column(column).null_count:
            return None
    if not all(any(test(field.type) for test in PLAIN_TYPES) for field in table.schema):
        return None
    frame = typed_frame_of_table(table, [*dict.fromkeys([*columns, USER, SOURCE])])
    later = frame.duplicated(list(key_columns), keep="first").to_numpy()
    identical, conflicts = 0, []
    if later.any():
        identical, conflicts = _compare_duplicates(frame, later, key_columns, columns, dirs)
    kept = (frame[~later] if later.any() else frame).sort_values(list(key_columns), kind="stable")
    dropped = sorted(set(table.column_names) - set(columns) - {USER, SOURCE})
    return CombinedFrame(frame=kept[list(columns)].reset_index(drop=True), users=kept[USER].tolist(),
                         identical_duplicates=identical, conflicts=conflicts, dropped=dropped)


def _compare_duplicates(frame: pd.DataFrame, later: np.ndarray, key_columns: Sequence[str], columns: Sequence[str],
                        dirs: Sequence[Path]) -> tuple[int, list[dict[str, Any]]]:
    """Each later row of a key against the first (combine.combine_rows' rule), in merge order."""
    keys = list(key_columns)
    involved = frame[frame.duplicated(keys, keep=False).to_numpy()]
    first_of: dict[tuple, dict[str, Any]] = {}
    identical, conflicts = 0, []
    for row in involved[[*columns, SOURCE]].to_dict("records"):
        row = {column: (None if value is pd.NA else value) for column, value in row.items()}
        key = tuple(row[c] for c in keys)
        first = first_of.setdefault(key, row)
        if first is row:
            continue
        differences = [c for c in differing_columns(first, row) if c != SOURCE]
        if not differences:
            identical += 1
            continue
        conflicts.append(conflict(keys, key, (dirs[first[SOURCE]], dirs[row[SOURCE]]), (first, row), differences))
    return identical, conflicts


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
    """The kept rows in key order (the order of the result set). Keys of strings only sort as plain
    tuples: the same order as _sortable gives them, without a tuple per value."""
    rows = list(rows)
    keys = [row_key(kept.row, key_columns) for kept in rows]
    if all(type(v) is str for key in keys for v in key):
        order = sorted(range(len(rows)), key=keys.__getitem__)
    else:
        order = sorted(range(len(rows)), key=lambda n: tuple(_sortable(v) for v in keys[n]))
    return [rows[n] for n in order]


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
    committed = {u for s in shards for u in s.users}
    planned_in: dict[str, list[ShardInput]] = {}
    for shard in shards:
        # only the uncommitted users are collected and sorted: the committed are most users of a big run
        for user_id in [u for u in shard.users_planned if u not in committed]:
            planned_in.setdefault(user_id, []).append(shard)
    return [
        {
            "user_id": user_id,
            "shards": sorted({str(s.spec) for s in planned_in[user_id]}),
            "dirs": [str(s.dir) for s in planned_in[user_id]],
        }
        for user_id in sorted(planned_in)
    ]


def find_unplanned_users(shards: Sequence[ShardInput]) -> list[dict[str, Any]]:
    """Users with committed rows that no shard planned: the shard dirs disagree about the user list."""
    planned = {u for s in shards for u in s.users_planned}
    return [
        {"user_id": user_id, "dir": str(s.dir)}
        for s in shards
        for user_id in sorted(set(s.users) - planned)
    ]


def find_users_short_of_rows(row_users: Sequence[str]) -> list[dict[str, Any]]:
    """Users with fewer rows than the user with the most (for example a feature mode missing), from the
    committed user of each row of the result set."""
    counts = Counter(row_users)
    expected = max(counts.values(), default=0)
    return [
        {"user_id": user_id, "rows": counts[user_id], "expected_rows": expected}
        for user_id in sorted(user_id for user_id, n in counts.items() if n < expected)
    ]
