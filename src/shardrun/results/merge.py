"""merge_shard_results: shard dirs -> one result set, in the order read -> combine -> frame -> write (the
pictures drawn last, in this process: docs/dev/MERGE.md has the measurements).

Merging is the last step before anyone reads the numbers, so it never guesses silently: rows
that share a key but differ are conflicts (listed, and the set is marked incomplete), users a
shard planned but never committed are listed, and shards of a K-way split that were not given
are listed. The shards may come from one run or from several separately started runs (for
example four runs of one shard each, or a run copied from another machine); rows are combined
from all of them.

Each step lives in its own module: read.py (shard dirs, run.json, the task), combine.py (the pure
rules: duplicates, conflicts, coverage), frame.py (the table and its bytes), report.py
(merge_report.json). This module only runs them in order, with reading and writing at the two ends.
Once combined, the task may fill in columns that depend on the whole set and add facts to the report
(the optional hooks of task.AddsSetColumns), before the tables are written and the pictures drawn.

Writing is atomic for the whole set: results.csv, results.parquet, summary.png, run.png and
merge_report.json are built in a sibling dir `.<name>.merging-<pid>-<random>` of the output dir,
fsynced, and swapped into place (storage.atomic.replace_dir), so the output path holds the previous
complete set or the new one, never a part. An existing, non-empty output dir is refused unless `overwrite` (the
command's --overwrite; the launcher owns RUN/merged and always replaces it).
"""

from __future__ import annotations

import logging
import os
import secrets
import shutil
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import pandas as pd
import psutil

from shardrun.errors import MergeError, StorageError
from shardrun.results.columnar import USER
from shardrun.results.combine import (
    combine_tables,
    find_mismatch,
    find_missing_shards,
    find_missing_users,
    find_unplanned_users,
    find_users_short_of_rows,
)
from shardrun.results.frame import output_columns, typed_json_columns, with_set_columns, write_csv, write_parquet
from shardrun.results.read import ShardInput, read_provenance, read_shard, resolve_task
from shardrun.results.report import MergeReport, mismatch_message
from shardrun.results.run_picture import RunPicture
from shardrun.results.summary import ResultCounts, SummaryPicture, run_title, task_panels
from shardrun.results.timeline import PREDICTED, span_table, start_table
from shardrun.results.trace import trace_and_memory, write_trace
from shardrun.storage.exclusive import ExclusiveFile
from shardrun.storage.paths import MergedPaths
from shardrun.storage.atomic import fsync_tree, replace_dir, write_json_atomic
from shardrun.storage.durability import Remedy, storage_error
from shardrun.task import Task, task_result_seconds, task_set_columns, task_set_report

log = logging.getLogger(__name__)

# What to run once the output's storage is fixed (storage/durability.py says what the errno means).
MERGE_AGAIN = Remedy("run the same merge_shard_results command again (an earlier result set there is untouched)",
                     "--output dir")

# --- the command ----------------------------------------------------------------------------


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
    present = {c for shard in shards if shard.table is not None for c in shard.table.column_names} - {USER}
    combined = combine_tables([shard.table for shard in shards], [shard.dir for shard in shards], task.key_columns,
                              output_columns(task, settings, present))
    frame, mixed = typed_json_columns(combined.frame, combined.json_columns)
    row_users, dropped = combined.users, combined.dropped
    # the task's columns of the whole set, before anything is drawn or written: both see them
    frame, outside = with_set_columns(frame, task_set_columns(task, frame, settings))
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
        untrusted_files=[u for s in shards for u in s.untrusted],
        mixed_columns=mixed,
        task=task_set_report(task, frame, settings),
    )
    write_result_set(output_dir, frame, report, trace=trace, remedy=remedy,
                     pictures=lambda: draw_pictures(frame, shards, run_title(dirs), task, settings))
    return MergedSet(report, frame)


# --- the output dir ---------------------------------------------------------------------------

def cannot_write(output_dir: Path, exc: OSError, remedy: Remedy = MERGE_AGAIN) -> StorageError:
    return storage_error(f"the result set {output_dir}", output_dir.parent, exc, remedy)


@contextmanager
def one_merge_into(output_dir: Path, remedy: Remedy = MERGE_AGAIN) -> Iterator[None]:
    """Held for the whole merge: a second merge into the same output is refused at once (exit 4), so two
    merges never both succeed with one set silently replacing the other."""
    guard = ExclusiveFile(MergedPaths(output_dir).merge_lock, f"a merge into {output_dir}",
                          "wait for it to end (or stop it), then merge again if its set is not the one you want.")
    try:
        output_dir.parent.mkdir(parents=True, exist_ok=True)
        guard.acquire()
    except OSError as exc:
        raise cannot_write(output_dir, exc, remedy) from None
    try:
        yield
    finally:
        guard.release()


def prepare_output_dir(output_dir: Path, overwrite: bool, remedy: Remedy = MERGE_AGAIN) -> None:
    """Before anything is read: tidy what a crashed merge left beside the output dir (so a set it had
    moved aside is back in place and counts as existing), then refuse an output path that is a file,
    or an existing non-empty dir without `overwrite` (an empty dir holds no result set and is used)."""
    if output_dir.parent.is_dir():
        try:
            _tidy_leftovers(MergedPaths(output_dir))
        except OSError as exc:
            raise cannot_write(output_dir, exc, remedy) from None
    if output_dir.exists() and not output_dir.is_dir():
        raise MergeError(
            f"--output {output_dir} is a file, not a dir; merge writes a result set dir (results.csv,"
            " results.parquet, merge_report.json, summary.png, run.png) there. Pass the path of a new dir, or"
            " of an earlier result set with --overwrite."
        )
    if output_dir.is_dir() and not overwrite and any(output_dir.iterdir()):
        raise MergeError(
            f"--output {output_dir} exists and is not empty; merge never replaces a result set silently."
            " Pass --overwrite to replace it (the old set stays in place until the new one is complete),"
            " or pass a new --output dir."
        )


def _staging_dir(paths: MergedPaths, kind: str) -> Path:
    return paths.dir.parent / f"{paths.staging_prefix(kind)}{os.getpid()}-{secrets.token_hex(4)}"


def _tidy_leftovers(paths: MergedPaths) -> None:
    """Staging dirs of merges that died: a set moved aside with nothing put in its place is put
    back; the rest are removed. A staging dir of a merge still running (its pid alive) is left alone."""
    for kind in ("old", "merging"):
        for leftover in paths.leftovers(kind):
            pid = MergedPaths.staging_pid(leftover)
            if pid is not None and pid != os.getpid() and psutil.pid_exists(pid):
                continue
            if kind == "old" and not paths.dir.exists():
                os.rename(leftover, paths.dir)
                log.warning("put back the result set %s that a crashed merge had moved aside", paths.dir)
                continue
            shutil.rmtree(leftover, ignore_errors=True)
            log.info("removed %s, left by a merge that did not finish", leftover)


def write_result_set(output_dir: Path, frame: pd.DataFrame, report: MergeReport,
                     pictures: Callable[[], dict[str, bytes]] | None = None,
                     trace: pd.DataFrame | None = None, remedy: Remedy = MERGE_AGAIN) -> None:
    """Build the whole set in a sibling staging dir (the report last), fsync it, then swap it into
    place: a merge that dies at any point leaves the previous complete set (or nothing) at the path,
    never new results next to an old report or validation. `pictures` gives the pictures' bytes by
    file name once the tables are written (a picture not given is not in the set); `trace` is
    trace.tsv's table (None: none)."""
    paths = MergedPaths(output_dir)
    try:
        output_dir.parent.mkdir(parents=True, exist_ok=True)
        staging = _staging_dir(paths, "merging")
        staging.mkdir()
    except OSError as exc:
        raise cannot_write(output_dir, exc, remedy) from None
    try:
        new = MergedPaths(staging)
        # straight into the staging dir, which nobody reads before fsync_tree and the swap below
        write_csv(frame, new.csv)
        write_parquet(frame, new.parquet)
        if trace is not None:
            write_trace(trace, new.trace)
        for name, png in (pictures() if pictures is not None else {}).items():
            (new.dir / name).write_bytes(png)
        write_json_atomic(new.report, report.to_json())
        fsync_tree(staging)
        replace_dir(staging, output_dir, aside=_staging_dir(paths, "old"))
    except OSError as exc:
        shutil.rmtree(staging, ignore_errors=True)
        raise cannot_write(output_dir, exc, remedy) from None
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


# --- the pictures ------------------------------------------------------------------------------
# The one guarded step of a merge: the pictures only illustrate results already written, so a plotting
# failure (a matplotlib bug, an odd value, a missing font, a task's panel that raises) is logged as an
# error with its traceback and the merge goes on, its set without that picture: a picture of an earlier
# merge is never shown next to results it does not describe. Each picture fails alone: summary.png (the
# science) and run.png (the run) are drawn apart.


def draw_pictures(frame: pd.DataFrame, shards: Sequence[ShardInput], title: str, task: Task,
                  settings: Any | None) -> dict[str, bytes]:
    """summary.png (the task's panels) and run.png (the shards' timeline) by file name; one that fails is
    logged and left out."""
    pictures = {
        MergedPaths.SUMMARY_PNG: lambda: SummaryPicture(ResultCounts.of(frame), title,
                                                        tuple(task_panels(task, frame, settings))),
        MergedPaths.RUN_PNG: lambda: RunPicture(predicted_spans(span_table(shards), task, frame, settings),
                                                start_table(shards), title),
    }
    drawn = {}
    for name, picture in pictures.items():
        try:
            drawn[name] = picture().png()
        except Exception as exc:  # documented guard: the picture must not cost the results
            log.exception("could not draw %s (%s: %s); the merged results are complete without it",
                          name, type(exc).__name__, exc)
            continue
        log.info("drew %s", name)
    return drawn


def predicted_spans(spans: pd.DataFrame, task: Task, frame: pd.DataFrame, settings: Any | None) -> pd.DataFrame:
    """The span table with the task's estimate of each user's seconds (PredictsTime.result_seconds),
    NaN where it makes none."""
    estimates = task_result_seconds(task, frame, settings)
    predicted = (pd.Series(estimates, dtype="float64") if estimates is not None and len(estimates)
                 else pd.Series(dtype="float64"))
    ids = spans["user_id"].astype(object) if "user_id" in spans.columns else pd.Series(index=spans.index, dtype=object)
    return spans.assign(**{PREDICTED: ids.map(predicted).astype("float64").to_numpy()})
