"""merge_shard_results: shard dirs -> one result set, in the order read -> combine -> frame -> write -> picture.

Merging is the last step before anyone reads the numbers, so it never guesses silently: rows
that share a key but differ are conflicts (listed, and the set is marked incomplete), users a
shard planned but never committed are listed, and shards of a K-way split that were not given
are listed. The shards may come from one run or from several separately started runs (for
example four runs of one shard each, or a run copied from another machine); rows are combined
from all of them.

Each step lives in its own module: read.py (shard dirs, run.json, the task), combine.py (the pure
rules: duplicates, conflicts, coverage), frame.py (the table and its bytes), report.py
(merge_report.json). This module only runs them in order, with reading and writing at the two ends.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Sequence

import pandas as pd

from shardrun.errors import MergeError
from shardrun.results.combine import (
    combine_rows,
    find_mismatch,
    find_missing_shards,
    find_missing_users,
    find_unplanned_users,
    find_users_short_of_rows,
    sorted_rows,
)
from shardrun.results.frame import build_frame, frame_to_csv_bytes, frame_to_parquet_bytes, output_columns
from shardrun.results.read import (
    read_provenance,
    read_shard,
    resolve_task,
)
from shardrun.results.report import MergeReport, mismatch_message
from shardrun.results.summary import run_title, task_panels, write_summary_png
from shardrun.results.timeline import UserSpan, commit_spans
from shardrun.storage.paths import MergedPaths
from shardrun.storage.atomic import write_bytes_atomic, write_json_atomic
from shardrun.task import Task

log = logging.getLogger(__name__)

# The command line names the run's shard dirs with shard_dirs_of_run and older callers read result
# files with read_result_file through this module; both live in read.py.


# --- the command ----------------------------------------------------------------------------


def _distinct_dirs(shard_dirs: Sequence[Path]) -> list[Path]:
    """Sorted, each dir once: the same dir named twice is one source, not a duplicate of itself."""
    unique = sorted({Path(d).resolve() for d in shard_dirs})
    if len(unique) < len(shard_dirs):
        log.info("a shard dir was given more than once; it is read once")
    return unique


def merge_shards(shard_dirs: Sequence[Path], output_dir: Path, force: bool = False) -> MergeReport:
    """Merge shard dirs (of one run or of several) into results.csv, results.parquet and merge_report.json."""
    dirs = _distinct_dirs(list(shard_dirs))
    if not dirs:
        raise MergeError("no shard dirs given; pass shard dirs with --shards or a run dir with --run.")
    shards = [read_shard(d) for d in dirs]

    mismatch = find_mismatch(shards)
    if mismatch and not force:
        raise MergeError(mismatch_message(mismatch))
    if mismatch:
        log.warning("%s (merging anyway: --force)", mismatch_message(mismatch))

    provenance = read_provenance(dirs)
    task, settings = resolve_task(provenance, shards)
    combined = combine_rows(shards, task.key_columns)
    ordered = sorted_rows(combined.rows, task.key_columns)
    rows = [kept.row for kept in ordered]
    columns = output_columns(task, settings, rows)
    dropped = sorted({c for row in rows for c in row} - set(columns))
    if dropped:
        log.warning("columns %s are not in the task's schema and are left out of the merged results", dropped)

    report = MergeReport(
        output_dir=str(output_dir),
        shards=[s.describe() for s in shards],
        config_hash=None if mismatch else shards[0].config_hash,
        data_fingerprint=None if mismatch else shards[0].data_fingerprint,
        rows=len(rows),
        users=len({kept.user_id for kept in ordered}),
        identical_duplicates=combined.identical_duplicates,
        conflicts=combined.conflicts,
        missing_users=find_missing_users(shards),
        missing_shards=find_missing_shards(shards),
        users_short_of_rows=find_users_short_of_rows(ordered),
        unplanned_users=find_unplanned_users(shards),
        dropped_columns=dropped,
        forced_mismatch=mismatch,
        provenance=provenance,
    )
    frame = build_frame(rows, columns)
    write_result_set(Path(output_dir), frame, report)
    write_summary(MergedPaths(Path(output_dir)).summary_png, frame, commit_spans(shards), run_title(dirs), task,
                  settings)
    if report.complete:
        log.info("%s", report.summary())
    else:
        log.warning("%s", report.summary())
    return report


def write_result_set(output_dir: Path, frame: pd.DataFrame, report: MergeReport) -> None:
    """The report is written last and stale reports are removed first, so a merge that dies half-way
    never leaves new results next to an old report (or validation) that vouches for them."""
    paths = MergedPaths(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    paths.report.unlink(missing_ok=True)
    paths.validation.unlink(missing_ok=True)
    write_bytes_atomic(paths.csv, frame_to_csv_bytes(frame))
    write_bytes_atomic(paths.parquet, frame_to_parquet_bytes(frame))
    write_json_atomic(paths.report, report.to_json())


# --- the summary picture ---------------------------------------------------------------------


def write_summary(path: Path, frame: pd.DataFrame, spans: Sequence[UserSpan], title: str, task: Task,
                  settings: Any | None) -> bool:
    """Draw summary.png (the task's panels, if any, above the per-shard timeline); True if it was written.

    The one guarded step of a merge: the picture only illustrates results already written, so a
    plotting failure (a matplotlib bug, an odd value, a missing font, a task's panel that raises) is
    logged as an error with its traceback and the merge goes on. A picture of an earlier merge is
    removed first, so it is never shown next to results it does not describe.
    """
    path.unlink(missing_ok=True)
    try:
        write_summary_png(frame, spans, path, title=title, panels=task_panels(task, frame, settings))
    except Exception as exc:  # noqa: BLE001 - documented guard: the picture must not cost the results
        log.error("could not draw %s (%s: %s); the merged results are complete without it", path,
                  type(exc).__name__, exc, exc_info=True)
        return False
    log.info("summary picture: %s", path)
    return True
