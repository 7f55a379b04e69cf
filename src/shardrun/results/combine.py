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
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

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
                key = row_key(row, key_columns)
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
