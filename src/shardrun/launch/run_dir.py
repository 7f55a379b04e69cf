"""The run dir a launch names (--run-dir, --out, or a new one) and its one launcher at a time."""

from __future__ import annotations

import errno
import logging
import os
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from shardrun.config import RunConfig
from shardrun.errors import AlreadyRunning, ConfigError, ResumeMismatch, UsageError
from shardrun.shard.dirs import config_stem
from shardrun.storage.durability import durable_write, storage_error
from shardrun.storage.lock import ExclusiveFile
from shardrun.storage.paths import (
    RunPaths,
    ShardPaths,
    read_run_document,
    read_shard_identity,
    refuse_a_file_for_a_dir,
    run_difference,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunDir:
    """Where a launch runs: `run` None for a new dir (named later); `existing`: this run, to continue."""

    run: RunPaths | None
    existing: bool
    flag: str = "--out"


def given_run_dir(config: RunConfig, shards: int, pilot: int | None, out: Path | None, run_dir: Path | None = None,
                  retry_failed: bool = False) -> RunDir:
    """The run dir --run-dir or --out names, or a refusal; writes nothing, so it refuses before the data are read."""
    given, flag = (run_dir, "--run-dir") if run_dir is not None else (out, "--out")
    if given is None:
        refuse_an_unwritable_place(config.output.root)  # where a new run dir is made
        return RunDir(None, False)
    refuse_a_file_for_a_dir(given, flag)
    run = RunPaths(given)
    if run.run_json.is_file():
        check_same_run(run, flag, shards, config.hash, pilot, None)
        return RunDir(run, True, flag)
    if retry_failed:
        raise UsageError(f"--retry-failed: {flag} {run.dir} holds no run (no run.json), so it has no failed"
                         " users to run again; pass the dir of the run whose failed users to retry.")
    if run_dir is not None:
        raise ConfigError(f"--run-dir {run.dir} has no run.json; it is not a run made by launch_shards."
                          f" To start a run there, pass --out {run.dir}.")
    others = run.foreign_entries()  # a dir of other files is no run to continue
    if others:
        raise ConfigError(f"--out {run.dir} is not empty ({', '.join(others[:3])}{', ...' if len(others) > 3 else ''})"
                          " and holds no run.json, so it is no run to continue; pass an empty or new dir to --out.")
    refuse_an_unwritable_place(run.dir)
    return RunDir(run, False, flag)


def check_same_run(run: RunPaths, flag: str, shards: int, config_hash: str, pilot: int | None,
                   data_fingerprint: str | None) -> None:
    """The run in `run` is this one (same K, config, data and --pilot), or a refusal naming the difference."""
    existing = read_run_document(run.run_json)
    other = f"or pass another dir to {flag} for a new run"
    difference = run_difference(existing, shards, config_hash, data_fingerprint)
    if difference:
        fix = {"shards": f"pass --shards {existing.get('shards')} to continue it",
               "config_hash": "continue it with its own config",
               "data_fingerprint": "restore the input file"}[difference[0]]
        raise ResumeMismatch(f"{flag} {run.dir}: {difference[1]}. To fix: {fix}, {other}.")
    for shard_dir in run.shard_dirs():
        started_with = read_shard_identity(ShardPaths(shard_dir)).get("pilot")
        if started_with != pilot:
            # launch_shards has no --full (a run without --pilot is a full run): the fix is a flag it takes
            started = "--full" if started_with is None else f"--pilot {started_with}"
            fix = "drop --pilot" if started_with is None else f"pass --pilot {started_with}"
            raise ResumeMismatch(f"{flag} {run.dir} was started with {started} ({shard_dir.name}/shard.json); {fix}"
                                 f" to continue it ({other}).")


def refuse_an_unwritable_place(run_dir: Path) -> None:
    """Refuse (exit 6) a new run dir this user cannot write; access(2) answers for root too on EROFS."""
    place = run_dir
    while not place.exists() and place != place.parent:
        place = place.parent
    if place.is_dir() and not os.access(place, os.W_OK | os.X_OK):
        read_only = hasattr(os, "statvfs") and bool(os.statvfs(place).f_flag & os.ST_RDONLY)
        code = errno.EROFS if read_only else errno.EACCES
        raise storage_error("the run dir", run_dir, OSError(code, os.strerror(code), str(place)))


def follow_the_launcher(run: RunPaths) -> str:
    """What to do about the live launcher of `run` instead of starting a second one."""
    return (f"follow it with: monitor_progress {run.dir} --watch, or stop it with: stop_shards {run.dir}; run this"
            " command again once it has ended to continue the run.")


def hold_run(run: RunPaths, new_run: bool, fix: str) -> ExclusiveFile:
    """Be the one launch_shards of `run` until released; a second one (even on a new dir) is refused with `fix`."""
    guard = ExclusiveFile(run.launcher_lock, f"launch_shards of the run {run.dir}", fix)
    durable_write("the run dir", run.dir, lambda: run.dir.mkdir(parents=True, exist_ok=True))
    durable_write("the launcher's lock", run.dir, guard.acquire)
    if new_run and run.run_json.is_file():
        guard.release()
        raise AlreadyRunning(f"another launch_shards started the run {run.dir} a moment ago;"
                             f" {follow_the_launcher(run)}")
    return guard


@dataclass
class HeldRun:
    """A local launch's run dir, held by its one launcher; left traceless if no shard wrote run.json."""

    run: RunPaths
    existing: bool
    created: bool  # this launch made the dir
    guard: ExclusiveFile | None = None

    def hold(self) -> None:
        """Be the one launcher of this run until release (held already when the launch took it early)."""
        if self.guard is None:
            self.guard = hold_run(self.run, new_run=not self.existing, fix=follow_the_launcher(self.run))

    def release(self) -> None:
        if self.guard is not None:
            self.guard.release()
            self.guard = None

    def forget_if_empty(self) -> None:
        if self.run.run_json.is_file():
            return
        self.release()
        try:
            self.run.launcher_json.unlink(missing_ok=True)
            if self.created:
                self.run.dir.rmdir()  # only if empty
        except OSError as exc:  # a tidy-up only: what is left is launcher.json, or an empty dir
            log.info("left %s as it is: %s", self.run.dir, exc.strerror or exc)


def open_run_dir(where: RunDir, root: Path, label: str, guard: ExclusiveFile | None = None) -> HeldRun:
    """The dir `where` names (made if new), or a new one under `root` named by `label` and the time."""
    if where.run is None:
        run = durable_write("a new run dir", root, lambda: RunPaths.create(root, label, datetime.now()))
        return HeldRun(run, False, True, guard)
    given = where.run
    created = not where.existing and not given.dir.exists()
    if not where.existing:
        durable_write("the run dir", given.dir, lambda: given.dir.mkdir(parents=True, exist_ok=True))
    return HeldRun(given, where.existing, created, guard)


def benchmark_dir(config: RunConfig, out: Path | None, shards: int, users: int) -> Path:
    """--benchmark's dir: --out DIR (new or empty), else a new `<config stem>_benchmark<n>_<time>`."""
    if out is not None:
        if out.exists() and (not out.is_dir() or any(out.iterdir())):
            raise UsageError(f"--out {out} is not a new or empty dir; --benchmark puts its two runs (k1/ and"
                             f" k{shards}/) there. Pass a new dir to --out, or leave --out out for a new dir"
                             f" under output.root.")
        durable_write("the benchmark dir", out, lambda: out.mkdir(parents=True, exist_ok=True))
        return out
    stem = config_stem(config)
    label = f"{stem}_benchmark{users}" if stem else f"benchmark{users}"
    root = config.output.root
    return durable_write("a new benchmark dir", root, lambda: RunPaths.create(root, label, datetime.now())).dir
