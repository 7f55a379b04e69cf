"""A shard's committed rows as one Arrow table, and an Arrow table as the merge's typed frame.

Reading every value into a Python object costs time and memory in proportion to the values (100,000
users: seconds and a gigabyte); here a shard's verified batch bodies are parsed at once by Arrow's JSON
reader into typed columns (combine.combine_tables then finds duplicates, conflicts and the order over
whole columns). Where Arrow cannot hold a shard as typed columns (a column of more than one JSON type,
a key that is not text), or a batch or a per-user file of an older run needs its own verdict,
`read_columnar` answers None and the merge reads row by row (read.read_shard), which gives the same
result set slowly.
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pa_json

from shardrun.storage.attempts import ATTEMPT
from shardrun.storage.batches import BadBatch, verified_body
from shardrun.storage.commits import stands
from shardrun.storage.paths import ShardPaths

log = logging.getLogger(__name__)

USER = "__user"  # the committed user a row belongs to (its record's user id)
SOURCE = "__source"  # the index of the shard dir a row came from, in merge order
STANDING = "__standing"  # whether a record is its user's standing one (not replaced by --retry-failed)

# Arrow types a merged column may have; any other (lists, structs) is merged row by row
PLAIN_TYPES = (pa.types.is_integer, pa.types.is_floating, pa.types.is_boolean, pa.types.is_string,
               pa.types.is_large_string, pa.types.is_null)


def _text_dtype() -> Any:
    """The dtype of the merged frame's text columns (here and in frame.typed_frame): pandas' own text
    dtype where it has one (pandas 3: Arrow's strings, a missing text NaN; what read_csv and read_parquet
    give back for the written set), Python str objects (object) before it. Arrow's strings cost a
    fraction of the memory and time of a str object per value, in the frame and in writing results.csv
    and results.parquet from it."""
    inferred = pd.Series(["text"]).dtype
    return inferred if isinstance(inferred, pd.StringDtype) else object


TEXT_DTYPE = _text_dtype()


@dataclass(frozen=True)
class ColumnarShard:
    users: tuple[str, ...]  # committed users, in commit order
    ended_at: Mapping[str, Any]
    table: pa.Table | None  # the rows of the users' standing records, with USER; None when there are none
    # every record's user_id, ended_at, attempt (storage/attempts.py) and STANDING, replaced ones included
    attempts: pa.Table | None = None


def read_columnar(paths: ShardPaths, config_hash: str | None) -> ColumnarShard | None:
    """The shard's committed rows as one Arrow table, or None when it must be read row by row."""
    if any(paths.results.glob("u-*.json")):
        return None  # per-user files of an older run: each has its own verdict (read.read_shard)
    bodies = []
    for path in paths.batch_files():
        try:
            header, body = verified_body(path.read_bytes())
        except (OSError, BadBatch):
            return None  # reported by the row-by-row read, with the file and the reason
        if config_hash is not None and header.get("config_hash") not in (None, config_hash):
            return None
        bodies.append(body)
    if not bodies:
        return ColumnarShard((), {}, None, None)
    try:
        records = pa_json.read_json(io.BytesIO(b"".join(bodies)))
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        log.info("%s is merged row by row: %s", paths.dir, exc)
        return None
    user_ids = records.column("user_id").to_pylist()
    replaces = (records.column("replaces").to_pylist() if "replaces" in records.column_names
                else [None] * len(user_ids))
    standing: dict[str, int] = {}
    for index, (user_id, replacing) in enumerate(zip(user_ids, replaces)):
        if stands(user_id, bool(replacing), standing):
            standing[user_id] = index
    # usually every record stands (none was replaced): then the records are kept as they are, uncopied
    chosen = (records if len(standing) == records.num_rows
              else records.take(pa.array(sorted(standing.values()), type=pa.int64())))
    attempts = record_attempts(records, set(standing.values()))
    users = tuple(chosen.column("user_id").to_pylist())
    ended_at = dict(zip(users, chosen.column("ended_at").to_pylist())) if "ended_at" in chosen.column_names else {}
    rows_column = chosen.column("rows").combine_chunks()
    if not pa.types.is_struct(rows_column.type.value_type):
        return None if len(rows_column.flatten()) else ColumnarShard(users, ended_at, None, attempts)
    rows = pa.Table.from_struct_array(pc.list_flatten(rows_column))
    rows = rows.append_column(USER, pc.take(chosen.column("user_id"), pc.list_parent_indices(rows_column)))
    if "config_hash" in rows.column_names and config_hash is not None:
        hashes = set(pc.unique(rows.column("config_hash")).to_pylist()) - {None, config_hash}
        if hashes:
            return None  # rows of another config's run: reported by the row-by-row read
    return ColumnarShard(users, ended_at, rows, attempts)


def record_attempts(records: pa.Table, standing: set[int]) -> pa.Table:
    """Every record's user_id, ended_at and attempt (null in records written before attempts were
    recorded), and STANDING: whether it is the user's standing record (else a later one replaced it)."""
    columns = {name: records.column(name) if name in records.column_names else pa.nulls(records.num_rows)
               for name in ("user_id", "ended_at", ATTEMPT)}
    flags = np.zeros(records.num_rows, dtype=bool)
    flags[list(standing)] = True
    columns[STANDING] = pa.array(flags)
    return pa.table(columns)


def typed_frame_of_table(table: pa.Table, columns: Sequence[str]) -> pd.DataFrame:
    """The typed frame (frame.typed_frame's column types) of an Arrow table: int64 (Int64 with nulls),
    float64, bool (boolean with nulls), text as Python str objects; a column no row has is all null."""
    typed: dict[str, pd.Series] = {}
    for column in columns:
        if column not in table.column_names:
            typed[column] = pd.Series(np.full(table.num_rows, np.nan), dtype="float64")
            continue
        values = table.column(column)
        kind = values.type
        has_nulls = values.null_count > 0
        if pa.types.is_integer(kind):
            typed[column] = pd.Series(values.to_pandas(types_mapper={kind: pd.Int64Dtype()}.get)
                                      if has_nulls else values.to_numpy(), dtype="Int64" if has_nulls else "int64")
        elif pa.types.is_boolean(kind):
            typed[column] = pd.Series(values.to_pylist() if has_nulls else values.to_numpy(),
                                      dtype="boolean" if has_nulls else bool)
        elif pa.types.is_string(kind) or pa.types.is_large_string(kind):
            # TEXT_DTYPE: Arrow's own strings kept as they are, or else an object array of str made by Arrow
            typed[column] = (pd.Series(values.to_pandas(), dtype=TEXT_DTYPE) if TEXT_DTYPE is not object
                             else pd.Series(values.to_numpy(zero_copy_only=False), dtype=object))
        elif pa.types.is_null(kind):
            typed[column] = pd.Series(np.full(table.num_rows, np.nan), dtype="float64")
        else:
            typed[column] = pd.Series(values.to_numpy(zero_copy_only=False), dtype="float64")
    return pd.DataFrame(typed, columns=list(columns))
