"""The result set as a table: its columns (the task's schema), values typed by their JSON types, CSV and
Parquet bytes, and two sets compared value for value.

A column is typed by its values' JSON types, the rule the merge uses for conflicts; a mixed-type
column, arrays and objects are written as JSON text (docs/FORMATS.md).
"""

from __future__ import annotations

import csv
import json
import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from shardrun.results.read import JSON_TEXT
from shardrun.storage.paths import MergedPaths
from shardrun.task import BOOKKEEPING_COLUMNS, Task


def schema_columns(task: Task, settings: Any) -> list[str]:
    """The columns of a result set, in order: the task's, then the bookkeeping ones."""
    task_columns = list(task.result_columns(settings))
    return task_columns + [c for c in BOOKKEEPING_COLUMNS if c not in task_columns]


def output_columns(task: Task, settings: Any | None, seen: Iterable[str]) -> list[str]:
    """The schema; without settings (no run.json), the key columns then the other columns the rows carry."""
    if settings is not None:
        return schema_columns(task, settings)
    rest = sorted(set(seen) - set(task.key_columns) - set(BOOKKEEPING_COLUMNS))
    return list(task.key_columns) + rest + list(BOOKKEEPING_COLUMNS)


def with_set_columns(frame: pd.DataFrame, columns: Mapping[str, pd.Series]) -> tuple[pd.DataFrame, list[str]]:
    """The frame with a task's columns of the whole set (Task.set_columns, aligned by the index), and the names
    its schema has no place for (left out; the bookkeeping columns are never the task's to fill)."""
    kept = {name: series for name, series in columns.items()
            if name in frame.columns and name not in BOOKKEEPING_COLUMNS}
    outside = sorted(name for name in columns if name not in kept)
    return (frame.assign(**kept) if kept else frame), outside


# --- JSON types ------------------------------------------------------------------------------


def is_missing(value: Any) -> bool:
    """JSON null and NaN both mean 'no number' (NaN is stored as null)."""
    return value is None or (isinstance(value, float) and math.isnan(value))


# bool before number: JSON's true is not 1
_JSON_TYPES = ((bool, "boolean"), ((int, float), "number"), (str, "string"), ((list, tuple), "array"), (dict, "object"))


def json_type(value: Any) -> str:
    """The JSON type of a value read from a result file: null (also NaN), boolean, number, string, array or object."""
    if is_missing(value):
        return "null"
    return next((name for kinds, name in _JSON_TYPES if isinstance(value, kinds)), type(value).__name__)


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


def value_types(values: Iterable[Any]) -> dict[str, int]:
    """How many values of each JSON type (null aside), in the order first seen."""
    return dict(Counter(kind for kind in map(json_type, values) if kind != "null"))


INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1  # an integer beyond these is typed as a float, like 1128.5


def typed_column(values: list[Any]) -> pd.Series:
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
        return pd.Series([None if is_missing(v) else v for v in values], dtype=TEXT_DTYPE)
    return pd.Series([None if is_missing(v) else v if isinstance(v, str)
                      else json.dumps(v, sort_keys=True, allow_nan=False) for v in values], dtype=TEXT_DTYPE)


def typed_json_columns(frame: pd.DataFrame, names: Sequence[str]) -> tuple[pd.DataFrame, list[dict[str, Any]]]:
    """The frame with its columns of JSON texts (JSON_TEXT) decoded and typed (typed_column), and those whose
    values are of more than one JSON type, with the count of each type."""
    typed: dict[str, pd.Series] = {}
    mixed: list[dict[str, Any]] = []
    for name in names:
        values = [None if text is None or text is pd.NA else json.loads(text) for text in frame[name]]
        types = value_types(values)
        if len(types) > 1:
            mixed.append({"column": name, "types": types})
        typed[name] = typed_column(values)
    return (frame.assign(**typed) if typed else frame), mixed


# The merged frame's text dtype: pandas' own (Arrow strings, pandas 3) where it has one, else object;
# Arrow's strings cost a fraction of the memory and time of a str object per value.
TEXT_DTYPE: Any = pd.Series(["text"]).dtype
if not isinstance(TEXT_DTYPE, pd.StringDtype):
    TEXT_DTYPE = object


def typed_frame_of_table(table: pa.Table, columns: Sequence[str]) -> pd.DataFrame:
    """The typed frame of an Arrow table (typed_column's types): int64 (Int64 with nulls), float64, bool
    (boolean with nulls), text; a column no row has is all null (float)."""
    typed: dict[str, pd.Series] = {}
    for column in columns:
        values = table.column(column) if column in table.column_names else pa.nulls(table.num_rows)
        kind = values.type
        has_nulls = values.null_count > 0
        if pa.types.is_null(kind):
            typed[column] = pd.Series(np.full(table.num_rows, np.nan), dtype="float64")
        elif pa.types.is_integer(kind):
            typed[column] = pd.Series(values.to_pandas(types_mapper={kind: pd.Int64Dtype()}.get)
                                      if has_nulls else values.to_numpy(), dtype="Int64" if has_nulls else "int64")
        elif pa.types.is_boolean(kind):
            typed[column] = pd.Series(values.to_pylist() if has_nulls else values.to_numpy(),
                                      dtype="boolean" if has_nulls else bool)
        elif kind == JSON_TEXT:  # decoded and typed once the rows are combined (typed_json_columns)
            typed[column] = pd.Series(values.to_numpy(zero_copy_only=False), dtype=object)
        elif pa.types.is_string(kind):
            # TEXT_DTYPE: Arrow's own strings kept as they are, or else an object array of str made by Arrow
            typed[column] = (pd.Series(values.to_pandas(), dtype=TEXT_DTYPE) if TEXT_DTYPE is not object
                             else pd.Series(values.to_numpy(zero_copy_only=False), dtype=object))
        else:
            typed[column] = pd.Series(values.to_numpy(zero_copy_only=False), dtype="float64")
    return pd.DataFrame(typed, columns=list(columns))


# --- CSV and Parquet -------------------------------------------------------------------------


_TEXT = pa.large_string()  # 64-bit offsets: a chunk of long texts cannot overflow them
_MISSING_FIELD = pa.scalar('""', _TEXT)  # as pandas wrote a missing value with QUOTE_NONNUMERIC
_NOTHING = pa.scalar("", _TEXT)
# 2**20 cells a chunk (32,768 rows of 32 columns): some 12 MB of text and a few times that in Arrow
# arrays at once, whatever the frame's size; larger chunks were no faster
CSV_CHUNK_CELLS = 2**20


def write_csv(frame: pd.DataFrame, path: Path, chunk_rows: int | None = None) -> None:
    """The frame as CSV (UTF-8, lines ending in \\n), written in chunks of rows (`chunk_rows`, by
    default about CSV_CHUNK_CELLS cells): the text of millions of rows is never one string in memory.
    Every text field is quoted; floats are Arrow's shortest round-trip text (docs/FORMATS.md)."""
    kinds = [_field_kind(frame.iloc[:, n]) for n in range(len(frame.columns))]
    if not kinds or None in kinds or not all(isinstance(name, str) for name in frame.columns):
        # a column (or the header) of a kind only pandas writes as before; pandas writes in chunks of rows too
        frame.to_csv(path, index=False, quoting=csv.QUOTE_NONNUMERIC, lineterminator="\n", encoding="utf-8")
        return
    rows = chunk_rows or max(1, CSV_CHUNK_CELLS // len(kinds))
    with open(path, "wb") as out:
        out.write((",".join('"' + name.replace('"', '""') + '"' for name in frame.columns) + "\n").encode("utf-8"))
        for start in range(0, len(frame), rows):
            out.write(_lines(frame.iloc[start:start + rows], kinds))  # type: ignore[arg-type]


def _field_kind(column: pd.Series) -> str | None:
    """How the column's fields are written ("text", "float", "integer", "boolean"), or None: by pandas."""
    dtype = column.dtype
    if dtype == bool or isinstance(dtype, pd.BooleanDtype):  # noqa: E721 (a numpy dtype equals its type)
        return "boolean"  # bool, and nullable boolean with <NA>
    if pd.api.types.is_integer_dtype(dtype):
        return "integer"  # int64, and nullable Int64 with <NA>
    if dtype == np.float64:
        return "float"
    if isinstance(dtype, pd.StringDtype):
        return "text"
    if dtype == object and pd.api.types.infer_dtype(column, skipna=True) in ("string", "empty"):  # noqa: E721
        return "text"  # str values and missing ones (None, NaN, <NA>); "empty": all missing
    return None


def _lines(chunk: pd.DataFrame, kinds: Sequence[str]) -> pa.Buffer:
    """The chunk's rows as CSV lines, one buffer. Each line is the concatenation of its pieces: each
    field's pieces, then a comma, the last one a line feed; one Arrow call joins them all."""
    pieces: list[pa.Array | pa.Scalar] = []
    for n, kind in enumerate(kinds):
        pieces += _field_pieces(chunk.iloc[:, n], kind)
        pieces.append(pa.scalar(",", _TEXT))
    pieces[-1] = pa.scalar("\n", _TEXT)
    return text_bytes(pc.binary_join_element_wise(*pieces, _NOTHING))


def _field_pieces(column: pd.Series, kind: str) -> list[pa.Array | pa.Scalar]:
    """What one column's fields are made of, none of them null: a missing value is ""."""
    if kind == "text":  # a quote, the text with its quotes doubled, a quote: a missing text is "", as an empty one
        quote = pa.scalar('"', _TEXT)
        doubled = pc.replace_substring(_arrow(column, _TEXT), pattern='"', replacement='""')
        return [quote, pc.fill_null(doubled, _NOTHING), quote]
    values = _arrow(column)
    if kind == "boolean":
        words = pc.if_else(values, pa.scalar("True", _TEXT), pa.scalar("False", _TEXT))
        return [pc.fill_null(words, _MISSING_FIELD)]
    text = pc.cast(values, _TEXT)
    if kind == "integer":
        return [pc.fill_null(text, _MISSING_FIELD)]
    return [pc.fill_null(text, _MISSING_FIELD), _point_where_integral(text)]


def _arrow(column: pd.Series, type: pa.DataType | None = None) -> pa.Array:
    """The column as one Arrow array; NaN, None and <NA> are null (a missing number, as in the merge's frame)."""
    values = pa.array(column, type=type, from_pandas=True)
    # a column already held by Arrow (pandas' "str") comes as chunks; one array joins with the others
    return values.combine_chunks() if isinstance(values, pa.ChunkedArray) else values


def _point_where_integral(text: pa.Array) -> pa.Array:
    """".0" where Arrow's shortest text of a double has no point, exponent or "inf" (it wrote 2.0 as "2",
    -0.0 as "-0": a column of those would read back as integers), else ""."""
    integral = pc.ascii_is_decimal(pc.ascii_ltrim(text, characters="-"))
    return pc.if_else(pc.fill_null(integral, False), pa.scalar(".0", _TEXT), _NOTHING)


def text_bytes(text: pa.Array) -> pa.Buffer:
    """The bytes of a text array with no nulls, one value after the other: its data buffer, no copy."""
    offsets = np.frombuffer(text.buffers()[1], dtype=np.int64)[text.offset:text.offset + len(text) + 1]
    start, end = int(offsets[0]), int(offsets[-1])
    return text.buffers()[2].slice(start, end - start)


def write_parquet(frame: pd.DataFrame, path: Path) -> None:
    frame.to_parquet(path, index=False, engine="pyarrow")


# --- two result sets compared ----------------------------------------------------------------


def read_result_frame(merged_dir: Path) -> pd.DataFrame:
    """A merged result set's table, as the merge wrote it (results.parquet keeps the column types)."""
    return pd.read_parquet(MergedPaths(Path(merged_dir)).parquet)


def result_differences(reference: pd.DataFrame, other: pd.DataFrame, key_columns: Sequence[str],
                       names: tuple[str, str] = ("the reference", "the other"), limit: int = 10) -> list[str]:
    """Every way `other` differs from `reference`, one line each (the first `limit`, then a count); [] if none.
    Missing equals missing; else `==`, so 1 and 1.0 agree and "1" and 1 do not."""
    first, second = names
    keys = list(key_columns)
    problems: list[str] = []
    frames = []
    for name, frame in ((first, reference), (second, other)):
        absent = [k for k in keys if k not in frame.columns]
        if absent:
            return [f"{name} has no key column {', '.join(absent)}"]
        values = frame.drop(columns=[c for c in BOOKKEEPING_COLUMNS if c in frame.columns]).set_index(keys)
        duplicated = values.index[values.index.duplicated()].unique()
        if len(duplicated):
            problems.append(f"{name} has more than one row for {_key(duplicated[0])}"
                            + (f" and {len(duplicated) - 1} more keys" if len(duplicated) > 1 else ""))
            values = values[~values.index.duplicated()]
        frames.append(values)
    ours, theirs = frames
    sides = ((first, ours, theirs), (second, theirs, ours))
    problems += [f"column {column!r} is in {name} only"
                 for name, here, there in sides for column in here.columns.difference(there.columns, sort=False)]
    problems += [f"{_key(key)} is in {name} only"
                 for name, here, there in sides for key in here.index.difference(there.index, sort=False)]
    common_rows = ours.index.intersection(theirs.index, sort=False)
    ours, theirs = ours.loc[common_rows], theirs.loc[common_rows]
    for column in [c for c in ours.columns if c in theirs.columns]:
        mine, yours = ours[column], theirs[column]
        both_missing = mine.isna().to_numpy() & yours.isna().to_numpy()
        equal = (mine.astype(object).to_numpy() == yours.astype(object).to_numpy()) | both_missing
        for key, a, b in zip(common_rows[~equal], mine.to_numpy()[~equal], yours.to_numpy()[~equal]):
            problems.append(f"{_key(key)}: {column} is {_value(a)} in {first} but {_value(b)} in {second}")
    if len(problems) > limit:
        return problems[:limit] + [f"... and {len(problems) - limit} more differences"]
    return problems


def _value(value: object) -> str:
    """repr of the plain Python value (numpy's scalars print as np.float64(...) otherwise)."""
    return repr(value.item() if hasattr(value, "item") else value)


def _key(key: object) -> str:
    return "(" + ", ".join(map(str, key)) + ")" if isinstance(key, tuple) else str(key)
