"""The merge's rules, pure: which row is kept for a key, duplicates, conflicts, missing shards and users.

Rows sharing a key are duplicates when every value agrees by JSON type and value (true is not 1,
1128 is 1128.0), conflicts otherwise.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from shardrun.partition import ShardSpec
from shardrun.results.columnar import JSON_TEXT, SOURCE, USER, json_texts, typed_frame_of_table
from shardrun.results.read import ShardInput
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


# --- combining rows ---------------------------------------------------------------------------


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


def conflict(key_columns: Sequence[str], key: Sequence[Any], dirs: tuple[Path, Path],
             rows: tuple[Mapping[str, Any], Mapping[str, Any]], differences: Sequence[str]) -> dict[str, Any]:
    """A conflict as merge_report.json lists it: the key, the two dirs, each differing column's two values."""
    return {
        "key": dict(zip(key_columns, key)),
        "dirs": [str(dirs[0]), str(dirs[1])],
        "differences": [{"column": c, "values": [rows[0].get(c), rows[1].get(c)]} for c in differences],
    }


@dataclass(frozen=True)
class CombinedFrame:
    """The merge's result set: one row per key, the first row of each key (shards in merge order) kept."""

    frame: pd.DataFrame  # one row per key, sorted by key, in the output columns; JSON_TEXT ones still JSON text
    users: list[str]  # the committed user of each row of `frame`
    identical_duplicates: int
    conflicts: list[dict[str, Any]]
    json_columns: list[str] = field(default_factory=list)  # the columns of `frame` that hold JSON texts
    dropped: list[str] = field(default_factory=list)  # columns the rows carry that the schema does not have


def combine_tables(tables: Sequence[pa.Table | None], dirs: Sequence[Path], key_columns: Sequence[str],
                   columns: Sequence[str]) -> CombinedFrame:
    """One row per key over whole columns: later rows of a key are identical duplicates, or conflicts
    when any value differs (only the duplicated keys are compared one by one)."""
    table = _one_table([t.append_column(SOURCE, pa.array(np.full(t.num_rows, n, dtype=np.int32)))
                        for n, t in enumerate(tables) if t is not None])
    json_columns = [c for c in columns if c in table.column_names and table.schema.field(c).type == JSON_TEXT]
    frame = typed_frame_of_table(table, [*dict.fromkeys([*columns, USER, SOURCE])])
    later = frame.duplicated(list(key_columns), keep="first").to_numpy()
    identical, conflicts = 0, list[dict[str, Any]]()
    if later.any():
        identical, conflicts = _compare_duplicates(frame, later, key_columns, columns, dirs, json_columns)
    kept = (frame[~later] if later.any() else frame).sort_values(list(key_columns), kind="stable")
    dropped = sorted(set(table.column_names) - set(columns) - {USER, SOURCE})
    return CombinedFrame(frame=kept[list(columns)].reset_index(drop=True), users=kept[USER].tolist(),
                         identical_duplicates=identical, conflicts=conflicts, json_columns=json_columns,
                         dropped=dropped)


def _one_table(tables: Sequence[pa.Table]) -> pa.Table:
    """The shards' tables as one; a column of one JSON type in one shard and another in the next is
    JSON text (columnar.JSON_TEXT) in all of them."""
    if not tables:
        return pa.table({USER: pa.array([], pa.string()), SOURCE: pa.array([], pa.int32())})
    kinds: dict[str, set[str]] = {}
    for table in tables:
        for column in table.schema:
            if not pa.types.is_null(column.type):
                kinds.setdefault(column.name, set()).add(_kind(column.type))
    for name in [name for name, found in kinds.items() if len(found) > 1]:
        tables = [t.set_column(t.schema.get_field_index(name), name, json_texts(t.column(name).to_pylist()))
                  if name in t.column_names and t.schema.field(name).type != JSON_TEXT else t for t in tables]
    return pa.concat_tables(tables, promote_options="permissive")


def _kind(type: pa.DataType) -> str:
    if pa.types.is_integer(type) or pa.types.is_floating(type):
        return "number"
    return "json" if type == JSON_TEXT else str(type)


def _compare_duplicates(frame: pd.DataFrame, later: np.ndarray, key_columns: Sequence[str], columns: Sequence[str],
                        dirs: Sequence[Path], json_columns: Sequence[str]) -> tuple[int, list[dict[str, Any]]]:
    """Each later row of a key against the first, in merge order, value by value (values_equal)."""
    keys = list(key_columns)
    involved = frame[frame.duplicated(keys, keep=False).to_numpy()]
    first_of: dict[tuple, dict[str, Any]] = {}
    identical, conflicts = 0, []
    for record in involved[[*columns, SOURCE]].to_dict("records"):
        row: dict[str, Any] = {str(column): (None if value is pd.NA else value) for column, value in record.items()}
        key = tuple(row[c] for c in keys)
        row.update({c: None if row[c] is None else json.loads(row[c]) for c in json_columns})
        first = first_of.setdefault(key, row)
        if first is row:
            continue
        differences = [c for c in differing_columns(first, row) if c != SOURCE]
        if not differences:
            identical += 1
            continue
        conflicts.append(conflict(keys, tuple(row[c] for c in keys), (dirs[first[SOURCE]], dirs[row[SOURCE]]),
                                  (first, row), differences))
    return identical, conflicts


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
