"""A shard's committed rows as one Arrow table (the merge's only reader of batch files), and an Arrow
table as the merge's typed frame. Python objects per value cost seconds and a gigabyte at 100,000 users;
values Arrow cannot type faithfully travel as JSON text. Batch trust follows storage/commits.py.
"""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pa_json

from shardrun.storage.commits import (
    ATTEMPT,
    BadBatch,
    config_problem,
    decode_batch,
    readable_user_ids,
    stands,
    verified_body,
)
from shardrun.storage.paths import ShardPaths

log = logging.getLogger(__name__)

USER = "__user"  # the committed user a row belongs to (its record's user id)
SOURCE = "__source"  # the index of the shard dir a row came from, in merge order
RECORD = "__record"  # the index of a row's record among the shard's records (while it is read)
STANDING = "__standing"  # whether a record is its user's standing one (not replaced by --retry-failed)
JSON_TEXT = pa.large_string()  # the type of a column of JSON texts, and only of one (Arrow's own text is string)

# Arrow types a column keeps as they are; any other (lists, structs) is parsed again by Python's json
PLAIN_TYPES = (pa.types.is_integer, pa.types.is_floating, pa.types.is_boolean, pa.types.is_string,
               pa.types.is_null)


def _text_dtype() -> Any:
    """The merged frame's text dtype: pandas' own (Arrow strings, pandas 3) where it has one, else object;
    Arrow's strings cost a fraction of the memory and time of a str object per value."""
    inferred = pd.Series(["text"]).dtype
    return inferred if isinstance(inferred, pd.StringDtype) else object


TEXT_DTYPE = _text_dtype()


@dataclass(frozen=True)
class ColumnarShard:
    users: tuple[str, ...]  # committed users, in commit order
    ended_at: Mapping[str, Any]
    table: pa.Table | None  # the rows of the users' standing records, with USER; None when there are none
    # every trusted record's user_id, ended_at, attempt (storage/commits.py) and STANDING, replaced ones included
    attempts: pa.Table | None = None
    untrusted: Sequence[Mapping[str, Any]] = ()  # the batch files left out: {"file", "user_id", "problem"}


@dataclass(frozen=True)
class _Batch:
    path: Path
    payload: bytes
    body: memoryview
    users: int


def read_columnar(paths: ShardPaths, config_hash: str | None) -> ColumnarShard:
    """The shard's trusted committed rows as one Arrow table, and the batch files left out."""
    untrusted: list[dict[str, Any]] = []
    batches: list[_Batch | None] = [b for path in paths.batch_files() if (b := _verified(path, config_hash, untrusted))]
    records, rows, batch_of = _parsed(batches, config_hash, untrusted)
    order = sorted(_standing(records, batch_of, batches, untrusted))
    trusted = np.flatnonzero(np.isin(batch_of, [n for n, b in enumerate(batches) if b is not None]))
    attempts = _record_attempts(records, order).take(pa.array(trusted, pa.int64())) if len(trusted) else None
    chosen = records.take(pa.array(order, pa.int64()))
    users = tuple(chosen.column("user_id").to_pylist())
    ended = chosen.column("ended_at").to_pylist() if "ended_at" in chosen.column_names else [None] * len(users)
    table = None
    if rows is not None:
        table = rows.filter(pa.array(np.isin(rows.column(RECORD).to_numpy(), order)))
        owners = records.column("user_id").take(table.column(RECORD))
        table = table.drop_columns([RECORD]).append_column(USER, owners) if table.num_rows else None
    return ColumnarShard(users, dict(zip(users, ended)), table, attempts, untrusted)


def _left_out(untrusted: list[dict[str, Any]], path: Path, user_ids: Sequence[str | None], problem: str) -> None:
    untrusted += [{"file": path.name, "user_id": user_id, "problem": problem} for user_id in user_ids or [None]]
    log.warning("result file %s is left out of the merge: %s", path, problem)


def _verified(path: Path, config_hash: str | None, untrusted: list[dict[str, Any]]) -> _Batch | None:
    """The batch file checked whole (its checksum, its config, its count of records), or None, listed."""
    try:
        payload = path.read_bytes()
    except OSError as exc:
        _left_out(untrusted, path, [], f"it is unreadable ({exc})")
        return None
    try:
        header, body = verified_body(payload)
        users = header.get("users")
        lines = payload.count(b"\n", len(payload) - len(body))
        whole = lines == users and (users == 0 or payload.endswith(b"\n"))
        problem = (config_problem(header.get("config_hash"), {}, config_hash)
                   or (None if whole else f"it holds {lines} records but its header says {users}"))
    except BadBatch as exc:
        problem = str(exc)
    if problem is not None:
        _left_out(untrusted, path, readable_user_ids(payload), problem)
        return None
    return _Batch(path, payload, body, lines)  # == users: the header's count, checked above


def _parsed(batches: list[_Batch | None], config_hash: str | None, untrusted: list[dict[str, Any]]
            ) -> tuple[pa.Table, pa.Table | None, np.ndarray]:
    """The records (without their rows), the rows with the index of their record (`__record`), and each
    record's batch; batches whose rows carry another config's hash are left out (None in `batches`)."""
    present = [b for b in batches if b is not None]
    parsed = _parsed_by_arrow(present) if present else None
    if parsed is None and present:
        parsed = _parsed_by_python(batches, untrusted)
        present = [b for b in batches if b is not None]
    records, rows = parsed if parsed is not None else (pa.table({"user_id": pa.array([], pa.string())}), None)
    batch_index = [n for n, b in enumerate(batches) if b is not None]
    batch_of = np.repeat(np.array(batch_index, dtype=np.int64), [b.users for b in present])
    foreign = _foreign_rows(rows, config_hash)
    if foreign is not None:
        user_ids = records.column("user_id")
        for record, found in foreign:
            n = int(batch_of[record])
            if (batch := batches[n]) is not None:
                problem = config_problem(None, {f"the rows of user {user_ids[record].as_py()!r}": [{"config_hash": found}]},
                                         config_hash)
                _left_out(untrusted, batch.path, readable_user_ids(batch.payload), problem or "")
                batches[n] = None
    return records, rows, batch_of


def _parsed_by_arrow(batches: Sequence[_Batch]) -> tuple[pa.Table, pa.Table | None] | None:
    """All the bodies parsed at once by Arrow, or None where its types would not be the values' own."""
    try:
        records = pa_json.read_json(io.BytesIO(b"".join(b.body for b in batches)))
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        log.info("the batches of %s are read by Python's json: %s", batches[0].path.parent.parent, exc)
        return None
    names = records.column_names
    if ("user_id" not in names or "rows" not in names or records.num_rows != sum(b.users for b in batches)
            or not pa.types.is_string(records.schema.field("user_id").type) or records.column("user_id").null_count
            or not pa.types.is_list(records.schema.field("rows").type)):
        return None  # not records as commits write them: each batch is judged by Python's json
    rows_column = records.column("rows").combine_chunks()
    rows = None
    if pa.types.is_struct(rows_column.type.value_type):
        rows = pa.Table.from_struct_array(pc.list_flatten(rows_column))
        if not all(any(test(f.type) for test in PLAIN_TYPES) for f in rows.schema):
            return None  # arrays or objects in the rows: Arrow's structs would add keys, its lists retype
        rows = rows.append_column(RECORD, pc.list_parent_indices(rows_column))
    elif len(rows_column.flatten()):
        return None
    return records.drop_columns(["rows"]), rows


def _parsed_by_python(batches: list[_Batch | None], untrusted: list[dict[str, Any]]) -> tuple[pa.Table, pa.Table]:
    """The bodies parsed record by record (a batch that is not one of records is left out: None in
    `batches`); each row column typed by Arrow where its values share one JSON type, else JSON_TEXT."""
    records: list[Mapping[str, Any]] = []
    for n, batch in enumerate(batches):
        if batch is None:
            continue
        try:
            decoded = decode_batch(batch.payload).records
            if not all(isinstance(row, dict) for record in decoded for row in record["rows"]):
                raise BadBatch("its rows are not all JSON objects")
        except BadBatch as exc:
            _left_out(untrusted, batch.path, readable_user_ids(batch.payload), str(exc))
            batches[n] = None
            continue
        records += decoded
    rows = [(n, row) for n, record in enumerate(records) for row in record["rows"]]
    names = list(dict.fromkeys(name for _, row in rows for name in row))
    columns = {name: _column([row.get(name) for _, row in rows]) for name in names}
    columns[RECORD] = pa.array([n for n, _ in rows], pa.int64())
    fields = dict.fromkeys(key for record in records for key in record if key != "rows")
    meta = {key: pa.array([record.get(key) for record in records], pa.string() if key == "user_id" else None)
            for key in {"user_id": None, **fields}}
    return pa.table(meta), pa.table(columns)


def _column(values: list[Any]) -> pa.Array | pa.ChunkedArray:
    """Values of one JSON type (or null) as Arrow types them; any others as JSON texts (JSON_TEXT)."""
    kinds = {type(v) for v in values} - {type(None)}
    if kinds and (kinds <= {bool} or kinds <= {int, float} or kinds <= {str}):
        try:
            return pa.array(values)
        except (pa.ArrowInvalid, OverflowError):  # an integer beyond int64
            pass
    elif not kinds:
        return pa.nulls(len(values))
    return json_texts(values)


def json_texts(values: Sequence[Any]) -> pa.ChunkedArray:
    """Python values as a JSON_TEXT column (null stays null)."""
    return pa.chunked_array([pa.array([None if v is None else json.dumps(v) for v in values], JSON_TEXT)], JSON_TEXT)


def _foreign_rows(rows: pa.Table | None, config_hash: str | None) -> list[tuple[int, Any]] | None:
    """(record, its rows' config hash) of the rows that carry another config's hash, one per record."""
    if rows is None or config_hash is None or "config_hash" not in rows.column_names:
        return None
    hashes = rows.column("config_hash")
    if pa.types.is_string(hashes.type) or hashes.type == JSON_TEXT:
        own = pa.scalar(json.dumps(config_hash) if hashes.type == JSON_TEXT else config_hash, hashes.type)
        foreign = pc.fill_null(pc.not_equal(hashes, own), False)
    else:  # all null (none is foreign), or numbers or booleans (all are)
        foreign = pc.is_valid(hashes)
    found = rows.filter(foreign)
    if not found.num_rows:
        return None
    return list(dict(zip(found.column(RECORD).to_pylist(), found.column("config_hash").to_pylist())).items())


def _standing(records: pa.Table, batch_of: np.ndarray, batches: Sequence[_Batch | None],
              untrusted: list[dict[str, Any]]) -> dict[int, str]:
    """The standing record of each user (record index -> user id), by commits.stands, over the trusted
    batches; a batch none of whose records stands (a copy of earlier ones) is left out as the resume
    scan sets it aside."""
    by_user: dict[str, int] = {}
    user_ids = records.column("user_id").to_pylist()
    replaces = records.column("replaces").to_pylist() if "replaces" in records.column_names else [None] * len(user_ids)
    starts: np.ndarray | list[int] = np.flatnonzero(np.diff(batch_of, prepend=-1)) if len(batch_of) else []
    for start, end in zip(starts, [*starts[1:], len(batch_of)]):
        n = int(batch_of[start])
        if batches[n] is None:
            continue
        standing = [i for i in range(start, end) if stands(user_ids[i], bool(replaces[i]), by_user)]
        if not standing:
            earlier = batches[int(batch_of[by_user[user_ids[start]]])].path.name  # type: ignore[union-attr]
            _left_out(untrusted, batches[n].path, [],  # type: ignore[union-attr]
                      f"every user in it is committed already (a copy of {earlier}?), and it replaces none")
            batches[n] = None  # type: ignore[index]
            continue
        by_user.update((user_ids[i], i) for i in standing)
    return {index: user_id for user_id, index in by_user.items()}


def _record_attempts(records: pa.Table, standing: Sequence[int]) -> pa.Table:
    """Every record's user_id, ended_at and attempt (null in records written before attempts were
    recorded), and STANDING: whether it is the user's standing record (else a later one replaced it)."""
    columns = {name: records.column(name) if name in records.column_names else pa.nulls(records.num_rows)
               for name in ("user_id", "ended_at", ATTEMPT)}
    flags = np.zeros(records.num_rows, dtype=bool)
    flags[standing] = True
    columns[STANDING] = pa.array(flags)
    return pa.table(columns)


def typed_frame_of_table(table: pa.Table, columns: Sequence[str]) -> pd.DataFrame:
    """The typed frame (frame.py's column types) of an Arrow table: int64 (Int64 with nulls),
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
        elif kind == JSON_TEXT:  # decoded and typed once the rows are combined (frame.typed_json_columns)
            typed[column] = pd.Series(values.to_numpy(zero_copy_only=False), dtype=object)
        elif pa.types.is_string(kind):
            # TEXT_DTYPE: Arrow's own strings kept as they are, or else an object array of str made by Arrow
            typed[column] = (pd.Series(values.to_pandas(), dtype=TEXT_DTYPE) if TEXT_DTYPE is not object
                             else pd.Series(values.to_numpy(zero_copy_only=False), dtype=object))
        elif pa.types.is_null(kind):
            typed[column] = pd.Series(np.full(table.num_rows, np.nan), dtype="float64")
        else:
            typed[column] = pd.Series(values.to_numpy(zero_copy_only=False), dtype="float64")
    return pd.DataFrame(typed, columns=list(columns))
