"""merge_shard_results: read -> combine -> the task's whole-set columns -> write -> pictures, in order.

It never guesses: conflicting rows, users planned but never committed and missing shards of a K-way
split are listed, and the set is marked incomplete. Shards may come from several runs."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from shardrun.errors import MergeError
from shardrun.results.combine import (
    combine_tables,
    find_mismatch,
    find_missing_shards,
    find_missing_users,
    find_unplanned_users,
    find_users_short_of_rows,
)
from shardrun.results.frame import output_columns, typed_json_columns, with_set_columns
from shardrun.results.output import MERGE_AGAIN, one_merge_into, prepare_output_dir, write_result_set
from shardrun.results.pictures import draw_pictures
from shardrun.results.read import read_provenance, read_shard, resolve_task
from shardrun.results.trace import trace_and_memory
from shardrun.results.validate import MergeReport
from shardrun.storage.durability import Remedy

log = logging.getLogger(__name__)


def mismatch_message(mismatch: Sequence[Mapping[str, Any]]) -> str:
    """Why shards of different configs or data are refused (the list from combine.find_mismatch)."""
    lines = "; ".join(f"{m['dir']}: config hash {m['config_hash']}, data fingerprint {m['data_fingerprint']}"
                      for m in mismatch)
    return (f"refusing to merge shards of different configs or input data ({lines}). Merge only shards of one"
            " config and one input; --force merges anyway and records the mismatch in merge_report.json.")


def _distinct_dirs(shard_dirs: Sequence[Path]) -> list[Path]:
    """Sorted, each dir once: the same dir named twice is one source, not a duplicate of itself."""
    unique = sorted({Path(d).resolve() for d in shard_dirs})
    if len(unique) < len(shard_dirs):
        log.info("a shard dir was given more than once; it is read once")
    return unique


def merge_shards(shard_dirs: Sequence[Path], output_dir: Path, force: bool = False,
                 overwrite: bool = False) -> MergeReport:
    """merge_result_set's report (the command's answer)."""
    return merge_result_set(shard_dirs, output_dir, force, overwrite).report


@dataclass(frozen=True)
class MergedSet:
    report: MergeReport
    frame: pd.DataFrame  # the result set as written, for a validation in the same process


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
    dirs = _distinct_dirs(list(shard_dirs))
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
    frame, mixed = typed_json_columns(combined.frame, combined.json_columns)
    row_users, dropped = combined.users, combined.dropped
    # the task's columns of the whole set, before anything is drawn or written: both see them
    frame, outside = with_set_columns(frame, {} if settings is None else dict(task.set_columns(frame, settings)))
    if outside:
        log.warning("the task's set columns %s are not among its result columns and are left out", outside)
        dropped = sorted({*dropped, *outside})
    if dropped:
        log.warning("columns %s are not in the task's schema and are left out of the merged results", dropped)
    for m in mixed:
        log.warning("column %r mixes JSON types %s; it is written as text", m["column"], m["types"])
    trace, memory = trace_and_memory(shards)
    report = MergeReport(
        output_dir=str(output_dir),
        shards=[{**s.describe(), "memory": m} for s, m in zip(shards, memory)],
        config_hash=None if mismatch else shards[0].config_hash,
        data_fingerprint=None if mismatch else shards[0].data_fingerprint,
        rows=len(frame),
        users=len(set(row_users)),
        identical_duplicates=combined.identical_duplicates,
        conflicts=combined.conflicts,
        missing_users=find_missing_users(shards),
        missing_shards=find_missing_shards(shards),
        users_short_of_rows=find_users_short_of_rows(row_users),
        unplanned_users=find_unplanned_users(shards),
        dropped_columns=dropped,
        forced_mismatch=mismatch,
        provenance=provenance,
        untrusted_files=[dict(u) for s in shards for u in s.untrusted],
        mixed_columns=mixed,
        task={} if settings is None else dict(task.set_report(frame, settings)),
    )
    write_result_set(output_dir, frame, report, trace=trace, remedy=remedy,
                     pictures=lambda: draw_pictures(frame, shards, task, settings))
    return MergedSet(report, frame)
