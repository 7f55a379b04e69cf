"""What merge and validate read from disk: shard dirs, their committed rows, run.json provenance, the task,
result files. An unreadable shard dir raises MergeError with the fix; an unreadable status.json is only reported.

A shard's committed rows are read as one Arrow table (the merge's only reader of batch files): Python
objects per value cost seconds and a gigabyte at 100,000 users; values Arrow cannot type faithfully
travel as JSON text. Batch trust follows storage/commits.py.
"""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, TypedDict

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pa_json

from shardrun.config import RunConfig, parse_config
from shardrun.errors import MergeError, ShardrunError, TaskNotImportable
from shardrun.partition import ShardSpec
from shardrun.storage.atomic import read_json
from shardrun.storage.commits import (
    ATTEMPT,
    BadBatch,
    config_problem,
    decode_batch,
    read_errors,
    readable_user_ids,
    refuse_older_results,
    stands,
    verified_body,
)
from shardrun.storage.paths import RunPaths, ShardPaths
from shardrun.task import Task, load_task

log = logging.getLogger(__name__)

# Columns the core itself reads (besides the task's key columns); kept as text when a CSV is read
# back, so that an id such as "007" or "NA" is not turned into a number or a missing value.
STATUS_COLUMNS = ("status", "reason")
# what a merge keeps of an errors.jsonl line (the trace's; its traceback and stacks stay in the file)
ERROR_FIELDS = ("user_id", "time", "error_type", "java_class", ATTEMPT)
USER = "__user"  # the committed user a row belongs to (its record's user id)
SOURCE = "__source"  # the index of the shard dir a row came from, in merge order
RECORD = "__record"  # the index of a row's record among the shard's records (while it is read)
STANDING = "__standing"  # whether a record is its user's standing one (not replaced by --retry-failed)
JSON_TEXT = pa.large_string()  # the type of a column of JSON texts, and only of one (Arrow's own text is string)

# Arrow types a column keeps as they are; any other (lists, structs) is parsed again by Python's json
PLAIN_TYPES = (pa.types.is_integer, pa.types.is_floating, pa.types.is_boolean, pa.types.is_string,
               pa.types.is_null)


class MergedShard(TypedDict):
    """A shard dir's entry in merge_report.json's `shards`."""

    dir: Annotated[str, "the shard dir"]
    shard: Annotated[str, "`\"i/K\"`"]
    config_hash: Annotated[str | None, "as in its shard.json"]
    data_fingerprint: Annotated[str | None, "as in its shard.json"]
    pilot: Annotated[int | None, "as in its shard.json"]
    users_planned: Annotated[int, "its users"]
    users_committed: Annotated[int, "its users committed"]
    untrusted_files: Annotated[int, "its batch files left out"]
    state: Annotated[str | None, "its status.json's `state`"]
    memory: Annotated[Mapping[str, Any], "what it was given against what it used (below)"]


@dataclass(frozen=True)
class ShardInput:
    """One shard dir as merge sees it: its identity, its state and its committed rows as one Arrow table."""

    dir: Path
    identity: Mapping[str, Any]
    spec: ShardSpec
    state: str | None
    users: tuple[str, ...]  # the committed users, in commit order
    table: pa.Table | None = None  # the standing records' rows, with USER; None when there are none
    ended_at: Mapping[str, Any] = field(default_factory=dict)  # user id -> when its analysis ended (the timeline)
    # batch files that fail their check (edited, cut short, another config's, a copy): left out, a problem
    untrusted: Sequence[Mapping[str, Any]] = ()
    # every trusted record's user_id, ended_at, attempt and STANDING, replaced ones included
    attempts: pa.Table | None = None
    errors: Sequence[Mapping[str, Any]] = ()  # errors.jsonl's lines, what the trace needs of them (ERROR_FIELDS)
    status: Mapping[str, Any] = field(default_factory=dict)  # status.json (_read_status)
    launcher_slot: Mapping[str, Any] = field(default_factory=dict)  # its entry in the run's launcher.json, if any
    # when each of its processes started (POSIX seconds): the timeline's waiting and start-up
    process_starts: Sequence[float] = ()

    @property
    def columns(self) -> list[str]:
        """The columns its rows carry."""
        return [] if self.table is None else [c for c in self.table.column_names if c != USER]

    @property
    def config_hash(self) -> str | None:
        return self.identity.get("config_hash")

    @property
    def data_fingerprint(self) -> str | None:
        return self.identity.get("data_fingerprint")

    @property
    def users_planned(self) -> list[str]:
        return list(self.identity.get("users_planned") or [])

    def describe(self, memory: Mapping[str, Any]) -> MergedShard:
        """Its entry in merge_report.json's shards."""
        return {"dir": str(self.dir), "shard": str(self.spec), "config_hash": self.config_hash,
                "data_fingerprint": self.data_fingerprint, "pilot": self.identity.get("pilot"),
                "users_planned": len(self.users_planned), "users_committed": len(self.users),
                "untrusted_files": len(self.untrusted), "state": self.state, "memory": memory}


def shard_dirs_of_run(run_dir: Path) -> list[Path]:
    """The shard dirs of a run dir (`shard-<i>-of-<K>/` holding a shard.json), sorted."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise MergeError(f"run dir {run_dir} does not exist; pass the run dir that holds the shard-<i>-of-<K>/ dirs.")
    dirs = RunPaths(run_dir).shard_dirs()
    if not dirs:
        raise MergeError(f"{run_dir} holds no shard dirs (shard-<i>-of-<K>/ with a shard.json); pass a run dir made by"
                         " run_production or launch_shards with --run, or list shard dirs with --shards.")
    return dirs


def read_shard(shard_dir: Path) -> ShardInput:
    """A shard dir as merge reads it: its identity, status, errors and committed rows."""
    paths = ShardPaths(Path(shard_dir))
    if not paths.dir.is_dir():
        raise MergeError(f"{paths.dir} does not exist; pass existing shard dirs (shard-<i>-of-<K>/) to --shards.")
    if not paths.identity.is_file():
        hint = (" It looks like a run dir: pass it with --run instead." if RunPaths(paths.dir).shard_dirs()
                else " Pass dirs named shard-<i>-of-<K>/ written by run_production.")
        raise MergeError(f"{paths.dir} is not a shard dir (it has no shard.json).{hint}")
    try:
        identity = read_json(paths.identity)
        spec = ShardSpec.parse(identity["shard"])
    except (OSError, ValueError, KeyError, TypeError, ShardrunError) as exc:
        raise MergeError(f"{paths.identity} is not a valid shard identity ({exc!r}); it must be the shard.json"
                         " written by run_production. Leave that dir out of the merge or restore the file.") from None
    refuse_older_results(paths, MergeError)
    status = _read_status(paths)
    committed = _committed_rows(paths, identity.get("config_hash"))
    return ShardInput(
        dir=paths.dir, identity=identity, spec=spec, state=status.get("state"), status=status, **committed,
        errors=[{key: line.get(key) for key in ERROR_FIELDS} for line in read_errors(paths)],
        launcher_slot=_launcher_slot(RunPaths(paths.dir.parent), spec),
        process_starts=_process_starts(paths, status),
    )


def _launcher_slot(run: RunPaths, spec: ShardSpec) -> Mapping[str, Any]:
    """The shard's entry in its run's launcher.json ({} without one: a run not started by launch_shards);
    only reported, so an unreadable file is no entry."""
    try:
        doc = read_json(run.launcher_json)
    except (OSError, ValueError):
        return {}
    slots = doc.get("shards") if isinstance(doc, dict) else None
    if not isinstance(slots, list):
        return {}
    return next((slot for slot in slots if isinstance(slot, dict) and slot.get("shard") == str(spec)), {})


def _read_status(paths: ShardPaths) -> dict[str, Any]:
    """The shard's status.json ({} when there is none); only reported, so an unreadable one must not
    stop a merge: its state is then 'unreadable'."""
    if not paths.status.is_file():
        return {}
    try:
        doc = read_json(paths.status)
        problem = None if isinstance(doc, dict) else "not a JSON object"
    except (OSError, ValueError) as exc:
        problem = str(exc)
    if problem is None:
        return doc
    log.warning("status file %s cannot be read (%s); its state is reported as 'unreadable'", paths.status, problem)
    return {"state": "unreadable"}


def _process_starts(paths: ShardPaths, status: Mapping[str, Any]) -> tuple[float, ...]:
    """When each of the shard's processes started (POSIX seconds, status.json's process_starts); only
    drawn, so starts that are not ISO 8601 text are left out (logged), never an error of the merge."""
    starts = status.get("process_starts")
    texts = [start for start in starts if isinstance(start, str)] if isinstance(starts, list) else []
    moments = pd.to_datetime(pd.Series(texts, dtype=object), errors="coerce", utc=True, format="ISO8601").dropna()
    if len(moments) < (len(starts) if isinstance(starts, list) else 0):
        log.warning("%s: some process starts are not times and are left out of run.png", paths.status)
    return tuple(((moments - pd.Timestamp(0, tz="UTC")).dt.total_seconds()).tolist())


def read_provenance(shard_dirs: Iterable[Path]) -> list[dict[str, Any]]:
    """run.json of every distinct parent run dir of the shard dirs (in the order first seen)."""
    provenance = []
    seen: set[Path] = set()
    for shard_dir in shard_dirs:
        run = RunPaths(shard_dir.parent)
        if run.dir in seen or not run.run_json.is_file():
            continue
        seen.add(run.dir)
        try:
            provenance.append({"run_dir": str(run.dir), **read_json(run.run_json)})
        except (OSError, ValueError, TypeError) as exc:
            raise MergeError(f"{run.run_json} cannot be read ({exc}); restore it or merge without its shards."
                             ) from None
    return provenance


def resolve_task(provenance: Sequence[Mapping[str, Any]], shards: Sequence[ShardInput]) -> tuple[Task, Any | None]:
    """The task and its settings, from the first run.json's config snapshot. Without any run.json
    only the task is known (from shard.json), and the columns come from the rows."""
    if provenance:
        config, why = _snapshot(provenance[0])
        if config is None:
            raise MergeError(f"{why}; the code may have changed since the run. Merge with the shardrun version that"
                             " made the run.")
        return load_task(config.task), config.settings
    task_path = shards[0].identity.get("task")
    if not isinstance(task_path, str):
        raise MergeError(f"{shards[0].dir}/shard.json names no task and there is no run.json; cannot merge it.")
    return load_task(task_path, shards[0].identity.get("task_origin")), None


def recorded_config(report: Mapping[str, Any]) -> tuple[RunConfig | None, list[str]]:
    """For validate, the config a merge recorded: the provenance entry with the report's config hash, else the first."""
    provenance = report.get("provenance") or []
    if not provenance:
        return None, ["merge_report.json records no run.json (no config snapshot); pass --config to validate"]
    config, why = _snapshot(next((p for p in provenance if p.get("config_hash") == report.get("config_hash")),
                                 provenance[0]))
    return config, [] if config is not None else [f"{why}; pass --config"]


def _snapshot(entry: Mapping[str, Any]) -> tuple[RunConfig | None, str]:
    """The config snapshot of a provenance entry (its run.json), or None and why it cannot be parsed. A task
    that cannot be imported here raises: that is no verdict on the results (exit 2, validation.json untouched)."""
    try:
        return parse_config(entry["config"], task_origin=entry.get("task_origin")), ""
    except TaskNotImportable:
        raise
    except (KeyError, ShardrunError) as exc:
        return None, f"the config snapshot in {entry.get('run_dir')}/run.json cannot be parsed ({exc})"


def read_result_file(path: Path, text_columns: Iterable[str]) -> pd.DataFrame:
    """Read results.parquet or results.csv as merge wrote it."""
    if path.suffix == ".parquet":
        return pd.read_parquet(path, engine="pyarrow")
    # Only empty fields are missing: default NA strings such as "NA" or "None" may be real user ids.
    return pd.read_csv(path, dtype={c: str for c in text_columns}, keep_default_na=False, na_values=[""],
                       encoding="utf-8")


# --- batch files -----------------------------------------------------------------------------


@dataclass(frozen=True)
class _Batch:
    path: Path
    payload: bytes
    body: memoryview
    users: int


def _committed_rows(paths: ShardPaths, config_hash: str | None) -> dict[str, Any]:
    """ShardInput's users, ended_at, table and attempts of the trusted batch files, and those left out."""
    untrusted: list[dict[str, Any]] = []
    batches: list[_Batch | None] = [b for path in paths.batch_files() if (b := _verified(path, config_hash, untrusted))]
    records, rows, batch_of = _parsed(batches, config_hash, untrusted)
    order = sorted(_standing(records, batch_of, batches, untrusted))
    # every trusted record's user_id, ended_at, attempt (null before attempts were recorded) and STANDING
    columns = {name: records.column(name) if name in records.column_names else pa.nulls(records.num_rows)
               for name in ("user_id", "ended_at", ATTEMPT)}
    columns[STANDING] = pa.array(np.isin(np.arange(records.num_rows), order))
    trusted = np.flatnonzero(np.isin(batch_of, [n for n, b in enumerate(batches) if b is not None]))
    attempts = pa.table(columns).take(pa.array(trusted, pa.int64())) if len(trusted) else None
    chosen = records.take(pa.array(order, pa.int64()))
    users = tuple(chosen.column("user_id").to_pylist())
    ended = chosen.column("ended_at").to_pylist() if "ended_at" in chosen.column_names else [None] * len(users)
    table = None
    if rows is not None:
        table = rows.filter(pa.array(np.isin(rows.column(RECORD).to_numpy(), order)))
        owners = records.column("user_id").take(table.column(RECORD))
        table = table.drop_columns([RECORD]).append_column(USER, owners) if table.num_rows else None
    return {"users": users, "ended_at": dict(zip(users, ended)), "table": table, "attempts": attempts,
            "untrusted": [{"dir": str(paths.dir), **entry} for entry in untrusted]}


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
                whose = f"the rows of user {user_ids[record].as_py()!r}"
                problem = config_problem(None, {whose: [{"config_hash": found}]}, config_hash)
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
