"""The merge's output dir: one merge at a time, a crashed merge's leftovers tidied, the whole set
written in a sibling staging dir and swapped into place, so the path never holds a partial set.
"""

from __future__ import annotations

import logging
import os
import secrets
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pandas as pd
import psutil
import pyarrow as pa

from shardrun.errors import MergeError
from shardrun.results.frame import write_csv, write_parquet
from shardrun.results.timeline import write_trace
from shardrun.results.validate import MergeReport
from shardrun.storage.atomic import fsync_tree, replace_dir, write_json_atomic
from shardrun.storage.durability import Remedy, storage_error
from shardrun.storage.lock import ExclusiveFile
from shardrun.storage.paths import MergedPaths

log = logging.getLogger(__name__)

# What to run once the output's storage is fixed (storage/durability.py says what the errno means).
MERGE_AGAIN = Remedy("run the same merge_shard_results command again (an earlier result set there is untouched)",
                     "--output dir")


@contextmanager
def _storage_errors(output_dir: Path, remedy: Remedy) -> Iterator[None]:
    """An OSError of the output's storage becomes a StorageError that says what it means and what to run."""
    try:
        yield
    except OSError as exc:
        raise storage_error(f"the result set {output_dir}", output_dir.parent, exc, remedy) from None


@contextmanager
def one_merge_into(output_dir: Path, remedy: Remedy = MERGE_AGAIN) -> Iterator[None]:
    """Held for the whole merge: a second merge into the same output is refused at once (exit 4), so two
    merges never both succeed with one set silently replacing the other."""
    guard = ExclusiveFile(MergedPaths(output_dir).merge_lock, f"a merge into {output_dir}",
                          "wait for it to end (or stop it), then merge again if its set is not the one you want.")
    with _storage_errors(output_dir, remedy):
        output_dir.parent.mkdir(parents=True, exist_ok=True)
        guard.acquire()
    try:
        yield
    finally:
        guard.release()


def prepare_output_dir(output_dir: Path, overwrite: bool, remedy: Remedy = MERGE_AGAIN) -> None:
    """Before anything is read: tidy what a crashed merge left beside the output dir (so a set it had
    moved aside is back in place and counts as existing), then refuse an output path that is a file,
    or an existing non-empty dir without `overwrite` (an empty dir holds no result set and is used)."""
    if output_dir.parent.is_dir():
        with _storage_errors(output_dir, remedy):
            _tidy_leftovers(MergedPaths(output_dir))
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


def write_result_set(output_dir: Path, frame: pd.DataFrame, report: MergeReport, trace: pa.Table,
                     pictures: Callable[[], dict[str, bytes]], remedy: Remedy = MERGE_AGAIN) -> None:
    """Build the whole set in a sibling staging dir (the report last), fsync it, then swap it into
    place: a merge that dies at any point leaves the previous complete set (or nothing) at the path."""
    paths = MergedPaths(output_dir)
    with _storage_errors(output_dir, remedy):
        output_dir.parent.mkdir(parents=True, exist_ok=True)
        staging = _staging_dir(paths, "merging")
        staging.mkdir()
        try:
            new = MergedPaths(staging)
            # straight into the staging dir, which nobody reads before fsync_tree and the swap below
            write_csv(frame, new.csv)
            write_parquet(frame, new.parquet)
            write_trace(trace, new.trace)
            for name, png in pictures().items():
                (new.dir / name).write_bytes(png)
            write_json_atomic(new.report, report.to_json())
            fsync_tree(staging)
            replace_dir(staging, output_dir, aside=_staging_dir(paths, "old"))
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
