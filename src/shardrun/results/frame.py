"""The result set as a table: its columns (the task's schema), typed columns, CSV and Parquet bytes.

Pure: rows in, a pandas frame or bytes out; writing the bytes is merge.py's job.
"""

from __future__ import annotations

import csv
import io
import math
from typing import Any, Iterable, Mapping, Sequence

import pandas as pd

from shardrun.results.combine import is_missing
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
