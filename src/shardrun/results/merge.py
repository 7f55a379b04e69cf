"""merge_shard_results: shard dirs -> one result set, in the order read -> combine -> frame -> write (the
picture drawn meanwhile by its own process, picture_process.py).

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
(the optional hooks Task.set_columns and set_report), before the picture is started and the tables written.

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
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import pandas as pd
import psutil

from shardrun.errors import MergeError, StorageError
from shardrun.results.combine import (
    CombinedFrame,
    combine_rows,
    combine_tables,
    find_mismatch,
    find_missing_shards,
    find_missing_users,
    find_unplanned_users,
    find_users_short_of_rows,
    sorted_rows,
)
from shardrun.results.frame import output_columns, typed_frame, with_set_columns, write_csv, write_parquet
from shardrun.results.read import (
    ShardInput,
    read_provenance,
    read_shard,
    resolve_task,
)
from shardrun.results.report import MergeReport, mismatch_message
from shardrun.results.picture_process import PictureFailed, PictureProcess
from shardrun.results.run_picture import RunPicture
from shardrun.results.summary import ResultCounts, SummaryPicture, run_title, task_panels
from shardrun.results.timeline import PREDICTED, span_table, start_table
from shardrun.results.trace import trace_and_memory, write_trace
from shardrun.storage.exclusive import ExclusiveFile
from shardrun.storage.paths import MergedPaths
from shardrun.storage.atomic import fsync_tree, replace_dir, write_json_atomic
from shardrun.storage.durability import Remedy, storage_error
from shardrun.task import Task

log = logging.getLogger(__name__)

# What to run once the output's storage is fixed (storage/durability.py says what the errno means).
MERGE_AGAIN = Remedy("run the same merge_shard_results command again (an earlier result set there is untouched)",
                     "--output dir")

# The command line names the run's shard dirs with shard_dirs_of_run and older callers read result
# files with read_result_file through this module; both live in read.py.


# --- the command ----------------------------------------------------------------------------


def _distinct_dirs(shard_dirs: Sequence[Path]) -> list[Path]:
    """Sorted, each dir once: the same dir named twice is one source, not a duplicate of itself."""
    unique = sorted({Path(d).resolve() for d in shard_dirs})
    if len(unique) < len(shard_dirs):
        log.info("a shard dir was given more than once; it is read once")
    return unique


def merge_shards(shard_dirs: Sequence[Path], output_dir: Path, force: bool = False,
                 overwrite: bool = False, columnar: bool = True,
                 pictures: PictureProcess | None = None) -> MergeReport:
    """merge_result_set's report (the command's answer)."""
    return merge_result_set(shard_dirs, output_dir, force, overwrite, columnar, pictures).report


@dataclass(frozen=True)
class MergedSet:
    report: MergeReport
    frame: pd.DataFrame  # the result set as written, for a validation in the same process


def merge_result_set(shard_dirs: Sequence[Path], output_dir: Path, force: bool = False,
                     overwrite: bool = False, columnar: bool = True,
                     pictures: PictureProcess | None = None, remedy: Remedy = MERGE_AGAIN) -> MergedSet:
    """Merge shard dirs (of one run or of several) into results.csv, results.parquet, summary.png, run.png
    and merge_report.json in `output_dir`, all at once.

    `force` merges shards of different configs or data anyway (recorded, the set is incomplete);
    `overwrite` replaces an existing output dir. They are separate permissions: force does not imply
    overwrite. `columnar` False reads and combines row by row even where columns would do (the same
    result set, slowly; the tests compare the two). `pictures`: the process that draws the pictures, if
    the caller started it already (the command does, before its imports); else the merge starts one.
    `remedy`: what a storage failure's error tells to run afterwards (the caller's command).
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
        # a process of its own unless the caller started it: it imports matplotlib meanwhile
        with PictureProcess() if pictures is None else nullcontext(pictures) as drawing:
            merged = _merge(dirs, output_dir, force, columnar, drawing, remedy)
    log.log(logging.INFO if merged.report.complete else logging.WARNING, "%s (in %.1f s)", merged.report.summary(),
            time.monotonic() - started)
    return merged


def _merge(dirs: list[Path], output_dir: Path, force: bool, columnar: bool, pictures: PictureProcess,
           remedy: Remedy) -> MergedSet:
    shards = [read_shard(d, columnar=columnar) for d in dirs]

    mismatch = find_mismatch(shards)
    if mismatch and not force:
        raise MergeError(mismatch_message(mismatch))
    if mismatch:
        log.warning("%s (merging anyway: --force)", mismatch_message(mismatch))

    provenance = read_provenance(dirs)
    task, settings = resolve_task(provenance, shards)
    combined = combine_columnar(shards, task, settings)
    if combined is None:
        shards = [shard if not shard.columnar else read_shard(shard.dir, columnar=False) for shard in shards]
        combined = combine_row_by_row(shards, task, settings)
    frame, row_users, mixed, dropped = combined.frame, combined.users, combined.mixed, combined.dropped
    # the task's columns of the whole set, before anything is drawn or written: both see them
    frame, outside = with_set_columns(frame, {} if settings is None else dict(task.set_columns(frame, settings)))
    if outside:
        log.warning("the task's set columns %s are not among its result columns and are left out", outside)
        dropped = sorted({*dropped, *outside})
    if dropped:
        log.warning("columns %s are not in the task's schema and are left out of the merged results", dropped)
    for m in mixed:
        log.warning("column %r mixes JSON types %s; it is written as text", m["column"], m["types"])
    # drawn by its process from here on, while the checks below run and the tables are written
    drawing = start_pictures(pictures, frame, shards, run_title(dirs), task, settings)
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
        unverified_files=[{"dir": str(s.dir), "files": list(s.unverified)} for s in shards if s.unverified],
        mixed_columns=mixed,
        task={} if settings is None else dict(task.set_report(frame, settings)),
    )
    write_result_set(output_dir, frame, report, pictures=lambda: drawn_pictures(pictures, drawing), trace=trace,
                     remedy=remedy)
    return MergedSet(report, frame)


# --- combining: in columns where the shards allow it, else row by row --------------------------


def combine_columnar(shards: Sequence[ShardInput], task: Task, settings: Any | None) -> CombinedFrame | None:
    """The merge over whole columns (combine.combine_tables), or None when some shard must be read row by row."""
    if settings is None or not all(shard.columnar for shard in shards):
        return None
    tables = [shard.table for shard in shards]
    combined = combine_tables(tables, [shard.dir for shard in shards], task.key_columns,
                              output_columns(task, settings, []))
    if combined is None and any(table is not None for table in tables):
        log.info("the shards' columns cannot be typed as one table; merging row by row")
    return combined


def combine_row_by_row(shards: Sequence[ShardInput], task: Task, settings: Any | None) -> CombinedFrame:
    combined = combine_rows(shards, task.key_columns)
    ordered = sorted_rows(combined.rows, task.key_columns)
    rows = [kept.row for kept in ordered]
    columns = output_columns(task, settings, rows)
    frame, mixed = typed_frame(rows, columns)
    return CombinedFrame(frame, [kept.user_id for kept in ordered], combined.identical_duplicates,
                         combined.conflicts, mixed, sorted({c for row in rows for c in row} - set(columns)))


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
# failure (a matplotlib bug, an odd value, a missing font, a task's panel that raises, the pictures'
# process killed) is logged as an error with its traceback and the merge goes on, its set without that
# picture: a picture of an earlier merge is never shown next to results it does not describe. Each
# picture fails alone: summary.png (the science) and run.png (the run) are drawn apart.


def start_pictures(pictures: PictureProcess, frame: pd.DataFrame, shards: Sequence[ShardInput], title: str,
                   task: Task, settings: Any | None) -> list[str]:
    """Hand summary.png (the task's panels) and run.png (the shards' timeline) to the pictures'
    process; the names of those handed over (one whose inputs failed is logged and left out)."""
    handed = {}
    try:
        handed[MergedPaths.SUMMARY_PNG] = SummaryPicture(ResultCounts.of(frame), title,
                                                         tuple(task_panels(task, frame, settings)))
    except Exception as exc:  # noqa: BLE001 - documented guard: the picture must not cost the results
        _picture_failed(MergedPaths.SUMMARY_PNG, exc)
    try:
        # the user ids stay here: the picture needs only each user's estimate (a tenth of its bytes at 10^6)
        spans = predicted_spans(span_table(shards), task, frame, settings).drop(columns="user_id")
        handed[MergedPaths.RUN_PNG] = RunPicture(spans, start_table(shards), title)
    except Exception as exc:  # noqa: BLE001 - documented guard
        _picture_failed(MergedPaths.RUN_PNG, exc)
    if handed:
        try:
            pictures.draw(handed)
        except Exception as exc:  # noqa: BLE001 - documented guard
            for name in handed:
                _picture_failed(name, exc)
            return []
    return list(handed)


def predicted_spans(spans: pd.DataFrame, task: Task, frame: pd.DataFrame, settings: Any | None) -> pd.DataFrame:
    """The span table with the task's estimate of each user's seconds (Task.result_seconds),
    NaN where it makes none."""
    estimates = None if settings is None else task.result_seconds(frame, settings)
    predicted = (pd.Series(estimates, dtype="float64") if estimates is not None and len(estimates)
                 else pd.Series(dtype="float64"))
    ids = spans["user_id"].astype(object) if "user_id" in spans.columns else pd.Series(index=spans.index, dtype=object)
    return spans.assign(**{PREDICTED: ids.map(predicted).astype("float64").to_numpy()})


def drawn_pictures(pictures: PictureProcess, names: Sequence[str]) -> dict[str, bytes]:
    """The bytes of each picture drawn, by file name; a picture that failed is logged and left out."""
    drawn = {}
    for name in names:
        try:
            drawn[name] = pictures.png(name)
        except Exception as exc:  # noqa: BLE001 - documented guard: the picture must not cost the results
            _picture_failed(name, exc)
            continue
        log.info("drew %s", name)
    return drawn


def _picture_failed(name: str, exc: Exception) -> None:
    # The pictures' process's report says all there is (its death, or its own traceback of a failed panel):
    # this process's stack under it would only be a traceback to alarm the user.
    log.error("could not draw %s (%s: %s); the merged results are complete without it",
              name, type(exc).__name__, exc, exc_info=not isinstance(exc, PictureFailed))
