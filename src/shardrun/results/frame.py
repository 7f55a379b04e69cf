"""The result set as a table: its columns (the task's schema), typed columns, CSV and Parquet bytes.

A column's type comes from the JSON types of its values (combine.json_type), the same rule the merge
uses to tell identical duplicates from conflicts: all boolean -> bool, all number -> int64 when every
value is written as an integer, else float64 (1128 and 1128.0 are then both 1128.0: one JSON number,
one column type), all string -> text; null is
missing in any of them. A column whose values are of more than one JSON type (true in one row, 1 in
another; "n/a" next to numbers) is a problem the merge reports (typed_frame); it is written as text
(JSON text for what is not a string), so the Parquet writer never meets a mixed-type column. Arrays and
objects are written as JSON text too.

Rows in, a pandas frame out; and the frame into a file (merge.py says where: its staging dir).
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from shardrun.results.combine import is_missing, json_type
from shardrun.task import BOOKKEEPING_COLUMNS, Task


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


def value_types(values: Iterable[Any]) -> dict[str, int]:
    """How many values of each JSON type (null aside), in the order first seen."""
    counts: dict[str, int] = {}
    for value in values:
        kind = json_type(value)
        if kind != "null":
            counts[kind] = counts.get(kind, 0) + 1
    return counts


def _as_text(value: Any) -> str | None:
    if is_missing(value):
        return None
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True, allow_nan=False)


INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1  # an integer beyond these is typed as a float, like 1128.5


def _typed_column(values: list[Any]) -> pd.Series:
    """A column with a stable type from its values' JSON types (see the module doc). Rows are JSON,
    where a missing number is null; pandas alone would make an int column with one null into floats."""
    types = value_types(values)
    has_missing = sum(types.values()) < len(values)
    kind = next(iter(types)) if len(types) == 1 else ("number" if not types else "mixed")
    # an all-null column is a float column: a missing number is the only thing null stands for in a row
    if kind == "boolean":
        return pd.Series(values, dtype="boolean" if has_missing else bool)
    if kind == "number" and types and all(isinstance(v, int) and INT64_MIN <= v <= INT64_MAX
                                          for v in values if not is_missing(v)):
        return pd.Series([None if is_missing(v) else int(v) for v in values], dtype="Int64" if has_missing else "int64")
    if kind == "number":
        return pd.Series([math.nan if is_missing(v) else float(v) for v in values], dtype="float64")
    if kind == "string":
        return pd.Series([None if is_missing(v) else v for v in values], dtype=object)
    return pd.Series([_as_text(v) for v in values], dtype=object)


# pandas' inference of an object column (nulls skipped) -> the one JSON type all its values share
_SINGLE_JSON_TYPE = {"integer": "number", "floating": "number", "mixed-integer-float": "number",
                     "boolean": "boolean", "string": "string", "empty": "null"}


def typed_frame(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> tuple[pd.DataFrame, list[dict[str, Any]]]:
    """The frame of the rows in the given columns, every column of one type (mixed ones as text), and the
    columns whose values are of more than one JSON type, with the count of each type.

    A column's JSON type is found by pandas' inference over the column at C speed; only a column it does
    not place in one JSON type (mixed values, arrays, objects) is typed value by value (_typed_column),
    so a merge of 10^6 rows costs seconds, not minutes. The result is the same as typing every column
    value by value (tests/test_merge.py checks both ways agree)."""
    typed: dict[str, pd.Series] = {}
    mixed: list[dict[str, Any]] = []
    for column in columns:
        values = np.array([row.get(column) for row in rows], dtype=object)
        kind = _SINGLE_JSON_TYPE.get(pd.api.types.infer_dtype(values, skipna=True))
        series = _typed_column_by_kind(values, kind) if kind is not None else None
        if series is None:
            types = value_types(values)
            if len(types) > 1:
                mixed.append({"column": column, "types": types})
            series = _typed_column(list(values))
        typed[column] = series
    return pd.DataFrame(typed, columns=list(columns)), mixed


def _typed_column_by_kind(values: np.ndarray, kind: str) -> pd.Series | None:
    """_typed_column for a column whose values pandas placed in one JSON type; None to type it value by value."""
    missing = pd.isna(values)
    has_missing = bool(missing.any())
    if kind == "null":
        return pd.Series(np.full(len(values), math.nan), dtype="float64")
    if kind == "boolean":
        return pd.Series(values, dtype="boolean" if has_missing else bool)
    if kind == "string":
        return pd.Series(np.where(missing, None, values), dtype=object)
    if pd.api.types.infer_dtype(values, skipna=True) == "integer":
        try:
            return pd.Series(pd.array(np.where(missing, None, values), dtype="Int64" if has_missing else "int64"))
        except (OverflowError, TypeError, ValueError):
            return None  # beyond int64: value by value, as before
    return pd.Series(np.where(missing, math.nan, values).astype("float64"))


def write_csv(frame: pd.DataFrame, path: Path) -> None:
    # Every text field quoted: an id with a bare carriage return, a comma or a NUL then reads back as
    # itself; missing values are empty fields. Written to the file in chunks: the text of a result set
    # of millions of rows is never one string in memory.
    frame.to_csv(path, index=False, quoting=csv.QUOTE_NONNUMERIC, lineterminator="\n", encoding="utf-8")


def write_parquet(frame: pd.DataFrame, path: Path) -> None:
    frame.to_parquet(path, index=False, engine="pyarrow")
