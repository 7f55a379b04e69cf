"""merge_shard_results: read -> combine -> the task's whole-set columns -> write -> pictures, in order.

It never guesses: conflicting rows, users planned but never committed and missing shards of a K-way
split are listed, and the set is marked incomplete. Shards may come from several runs. Rows sharing a
key are duplicates when every value agrees by JSON type and value (true is not 1, 1128 is 1128.0),
conflicts otherwise."""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from shardrun.errors import MergeError
from shardrun.partition import ShardSpec
from shardrun.results.frame import (
    output_columns,
    typed_frame_of_table,
    typed_json_columns,
    values_equal,
    with_set_columns,
)
from shardrun.results.output import MERGE_AGAIN, one_merge_into, prepare_output_dir, write_result_set
from shardrun.results.pictures import draw_pictures
from shardrun.results.read import (
    JSON_TEXT,
    SOURCE,
    USER,
    ShardInput,
    json_texts,
    read_provenance,
    read_shard,
    resolve_task,
)
from shardrun.results.timeline import trace_and_memory
from shardrun.results.validate import MergeReport
from shardrun.storage.durability import Remedy
from shardrun.task import BOOKKEEPING_COLUMNS

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class MergedSet:
    report: MergeReport
    frame: pd.DataFrame  # the result set as written, for a validation in the same process


def merge_shards(shard_dirs: Sequence[Path], output_dir: Path, force: bool = False,
                 overwrite: bool = False) -> MergeReport:
    """merge_result_set's report (the command's answer)."""
    return merge_result_set(shard_dirs, output_dir, force, overwrite).report


def merge_result_set(shard_dirs: Sequence[Path], output_dir: Path, force: bool = False,
                     overwrite: bool = False, remedy: Remedy = MERGE_AGAIN) -> MergedSet:
    """Merge shard dirs (of one run or of several) into results.csv, results.parquet, summary.png, run.png
    and merge_report.json in `output_dir`, all at once.

    `force` merges shards of different configs or data anyway (recorded, the set is incomplete);
    `overwrite` replaces an existing output dir. They are separate permissions: force does not imply
    overwrite. `remedy`: what a storage failure's error tells to run afterwards (the caller's command).
    """
    started = time.monotonic()
    output_dir = Path(output_dir)
    if output_dir.is_symlink():
        output_dir = output_dir.resolve()  # the set is swapped in where the link points; the link stays
    # the same dir named twice is one source, not a duplicate of itself
    dirs = sorted({Path(d).resolve() for d in shard_dirs})
    if len(dirs) < len(shard_dirs):
        log.info("a shard dir was given more than once; it is read once")
    if not dirs:
        raise MergeError("no shard dirs given; pass shard dirs with --shards or a run dir with --run.")
    with one_merge_into(output_dir, remedy):
        prepare_output_dir(output_dir, overwrite, remedy)
        merged = _merge(dirs, output_dir, force, remedy)
    log.log(logging.INFO if merged.report.complete else logging.WARNING, "%s (in %.1f s)", merged.report.summary(),
            time.monotonic() - started)
    return merged


def _merge(dirs: list[Path], output_dir: Path, force: bool, remedy: Remedy) -> MergedSet:
    shards = [read_shard(d) for d in dirs]
    mismatch = find_mismatch(shards)
    if mismatch and not force:
        raise MergeError(mismatch_message(mismatch))
    if mismatch:
        log.warning("%s (merging anyway: --force)", mismatch_message(mismatch))
    provenance = read_provenance(dirs)
    task, settings = resolve_task(provenance, shards)
    present = {column for shard in shards for column in shard.columns}
    combined = combine_tables([shard.table for shard in shards], [shard.dir for shard in shards], task.key_columns,
                              output_columns(task, settings, present))
    frame, dropped = combined.frame, combined.dropped
    # the task's columns of the whole set, before anything is drawn or written: both see them
    frame, outside = with_set_columns(frame, {} if settings is None else dict(task.set_columns(frame, settings)))
    if outside:
        log.warning("the task's set columns %s are not among its result columns and are left out", outside)
        dropped = sorted({*dropped, *outside})
    if dropped:
        log.warning("columns %s are not in the task's schema and are left out of the merged results", dropped)
    for m in combined.mixed:
        log.warning("column %r mixes JSON types %s; it is written as text", m["column"], m["types"])
    trace, memory = trace_and_memory(shards)
    report = MergeReport(
        output_dir=str(output_dir),
        shards=[s.describe(m) for s, m in zip(shards, memory)],
        config_hash=None if mismatch else shards[0].config_hash,
        data_fingerprint=None if mismatch else shards[0].data_fingerprint,
        rows=len(frame),
        users=len(set(combined.users)),
        identical_duplicates=combined.identical_duplicates,
        conflicts=combined.conflicts,
        **_coverage(shards, combined.users),
        dropped_columns=dropped,
        forced_mismatch=mismatch,
        provenance=provenance,
        untrusted_files=[dict(u) for s in shards for u in s.untrusted],
        mixed_columns=combined.mixed,
        task={} if settings is None else dict(task.set_report(frame, settings)),
    )
    write_result_set(output_dir, frame, report, trace=trace, remedy=remedy,
                     pictures=lambda: draw_pictures(frame, shards, task, settings))
    return MergedSet(report, frame)


def find_mismatch(shards: Sequence[ShardInput]) -> list[dict[str, Any]]:
    """Per dir, its config hash and data fingerprint, when the shards do not all agree; else []."""
    if len({(s.config_hash, s.data_fingerprint) for s in shards}) <= 1:
        return []
    return [{"dir": str(s.dir), "config_hash": s.config_hash, "data_fingerprint": s.data_fingerprint} for s in shards]


def mismatch_message(mismatch: Sequence[Mapping[str, Any]]) -> str:
    """Why shards of different configs or data are refused (find_mismatch's list)."""
    lines = "; ".join(f"{m['dir']}: config hash {m['config_hash']}, data fingerprint {m['data_fingerprint']}"
                      for m in mismatch)
    return (f"refusing to merge shards of different configs or input data ({lines}). Merge only shards of one"
            " config and one input; --force merges anyway and records the mismatch in merge_report.json.")


# --- combining rows ---------------------------------------------------------------------------


@dataclass(frozen=True)
class CombinedFrame:
    """The merge's result set: one row per key, the first row of each key (shards in merge order) kept."""

    frame: pd.DataFrame  # one row per key, sorted by key, in the output columns, typed
    users: list[str]  # the committed user of each row of `frame`
    identical_duplicates: int
    conflicts: list[dict[str, Any]]
    mixed: list[dict[str, Any]] = field(default_factory=list)  # columns of several JSON types (typed_json_columns)
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
        identical, conflicts = _compare_duplicates(frame, key_columns, columns, dirs, json_columns)
    kept = (frame[~later] if later.any() else frame).sort_values(list(key_columns), kind="stable")
    typed, mixed = typed_json_columns(kept[list(columns)].reset_index(drop=True), json_columns)
    return CombinedFrame(frame=typed, users=kept[USER].tolist(), identical_duplicates=identical, conflicts=conflicts,
                         mixed=mixed, dropped=sorted(set(table.column_names) - set(columns) - {USER, SOURCE}))


def _one_table(tables: Sequence[pa.Table]) -> pa.Table:
    """The shards' tables as one; a column of one JSON type in one shard and another in the next is
    JSON text (JSON_TEXT) in all of them."""
    if not tables:
        return pa.table({USER: pa.array([], pa.string()), SOURCE: pa.array([], pa.int32())})
    kinds: dict[str, set[str]] = {}
    for table in tables:
        for column in table.schema:
            if not pa.types.is_null(column.type):
                number = pa.types.is_integer(column.type) or pa.types.is_floating(column.type)
                kind = "number" if number else "json" if column.type == JSON_TEXT else str(column.type)
                kinds.setdefault(column.name, set()).add(kind)
    for name in [name for name, found in kinds.items() if len(found) > 1]:
        tables = [t.set_column(t.schema.get_field_index(name), name, json_texts(t.column(name).to_pylist()))
                  if name in t.column_names and t.schema.field(name).type != JSON_TEXT else t for t in tables]
    return pa.concat_tables(tables, promote_options="permissive")


def _compare_duplicates(frame: pd.DataFrame, key_columns: Sequence[str], columns: Sequence[str],
                        dirs: Sequence[Path], json_columns: Sequence[str]) -> tuple[int, list[dict[str, Any]]]:
    """Each later row of a key against the first, in merge order, value by value (values_equal); the
    bookkeeping columns (shard, seconds, config hash) differ by design."""
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
        differences = [c for c in sorted((set(first) | set(row)) - {*BOOKKEEPING_COLUMNS, SOURCE})
                       if not values_equal(first.get(c), row.get(c))]
        if not differences:
            identical += 1
            continue
        # as merge_report.json lists it: the key, the two dirs, each differing column's two values
        conflicts.append({"key": dict(zip(keys, (row[c] for c in keys))),
                          "dirs": [str(dirs[first[SOURCE]]), str(dirs[row[SOURCE]])],
                          "differences": [{"column": c, "values": [first.get(c), row.get(c)]} for c in differences]})
    return identical, conflicts


# --- coverage ---------------------------------------------------------------------------------


def _coverage(shards: Sequence[ShardInput], row_users: Sequence[str]) -> dict[str, Any]:
    """merge_report.json's coverage lists: the users some shard planned that no given dir committed (with the
    shards that should have them), the shards of each K seen that no dir covers, the users with fewer rows
    than the user with the most (a feature mode missing), and the users with rows that no shard planned."""
    committed = {u for s in shards for u in s.users}
    planned = {u for s in shards for u in s.users_planned}
    planned_in: dict[str, list[ShardInput]] = {}
    covered: dict[int, set[int]] = {}
    for shard in shards:
        covered.setdefault(shard.spec.count, set()).add(shard.spec.index)
        # only the uncommitted users are collected and sorted: the committed are most users of a big run
        for user_id in [u for u in shard.users_planned if u not in committed]:
            planned_in.setdefault(user_id, []).append(shard)
    counts = Counter(row_users)
    most = max(counts.values(), default=0)
    return {
        "missing_users": [{"user_id": user_id, "shards": sorted({str(s.spec) for s in planned_in[user_id]}),
                           "dirs": [str(s.dir) for s in planned_in[user_id]]} for user_id in sorted(planned_in)],
        "missing_shards": [{"shard": str(ShardSpec(index, count)),
                            "note": "no dir of this shard was given; which users it holds is unknown to merge"}
                           for count, indices in sorted(covered.items()) for index in range(count)
                           if index not in indices],
        "users_short_of_rows": [{"user_id": user_id, "rows": counts[user_id], "expected_rows": most}
                                for user_id in sorted(user_id for user_id, n in counts.items() if n < most)],
        "unplanned_users": [{"user_id": user_id, "dir": str(s.dir)}
                            for s in shards for user_id in sorted(set(s.users) - planned)],
    }
