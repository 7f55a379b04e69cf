"""Where a shard writes: the run dir and shard dir, checked before any write and a new run dir made only once
every check passed; run.json; --shard (auto: K from the run); ShardOptions, what a shard is asked."""

from __future__ import annotations

import importlib.metadata
import logging
import os
import platform
import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any

from shardrun.config import RunConfig
from shardrun.errors import ResumeMismatch, UsageError
from shardrun.partition import ShardSpec, resolve_auto_shard
from shardrun.storage.atomic import create_json_once, utc_now
from shardrun.storage.durability import durable_write
from shardrun.storage.paths import (
    RunPaths,
    ShardPaths,
    not_a_dir,
    read_run_document,
    read_shard_identity,
    recorded_shard_count,
    refuse_a_file_for_a_dir,
    run_difference,
)
from shardrun.task import Task, UserIndex, task_origin

log = logging.getLogger(__name__)

DEFAULT_FAIL_FAST = 5  # users: enough that chance rarely stops a shard, few enough to stop a doomed one in minutes


@dataclass(frozen=True)
class ShardOptions:
    shard: ShardSpec | None  # None: taken from the shard dir given to --resume
    pilot: int | None  # None means --full
    out: Path | None = None
    resume: Path | None = None
    dry_run: bool = False
    heartbeat_seconds: float = 10.0
    cooldown_seconds: float = 0.0  # pause between users, to share the machine
    commit_interval_seconds: float = 1.0  # group commit: at most one batch file per interval (commits.GroupCommitter)
    retry_failed: bool = False
    fail_fast: int = DEFAULT_FAIL_FAST  # stop when the first N users all fail with one error class (0: never)


@dataclass
class ResolvedDirs:
    run: RunPaths
    shard: ShardPaths
    spec: ShardSpec
    resuming: bool  # the shard dir already has an identity that must match
    # Named here, created later by create_run_dir, so a refused start leaves no empty run dir behind.
    new_run: tuple[Path, str, datetime] | None = None


def create_run_dir(dirs: ResolvedDirs) -> ResolvedDirs:
    """Create the new run dir that resolve_dirs only named (a no-op for --out and --resume)."""
    if dirs.new_run is None:
        return dirs
    root, label, now = dirs.new_run
    run = durable_write("a new run dir", root, lambda: RunPaths.create(root, label, now))
    return replace(dirs, run=run, shard=run.shard(dirs.spec), new_run=None)


def check_shard_count(run: RunPaths, spec: ShardSpec, flag: str) -> None:
    """A run dir holds one K: a shard of another K than run.json's is refused before anything is written."""
    if not run.run_json.is_file():
        return
    existing = read_run_document(run.run_json)
    difference = run_difference(existing, spec.count)
    if difference:
        shards = existing.get("shards")
        raise ResumeMismatch(f"{flag} {run.dir}: {difference[1]}. Pass --shard i/{shards} to add to that run, or a"
                             f" new --out for K={spec.count}.")


def resolve_dirs(config: RunConfig, task: Task, options: ShardOptions, now: datetime) -> ResolvedDirs:
    """Where this shard writes. Reads only; creates nothing (a brand-new run dir is only named)."""
    target, spec, new_run = options.resume, options.shard, None
    if target is not None and (target / "shard.json").is_file():
        spec = ShardSpec.parse(read_shard_identity(ShardPaths(target))["shard"])
        if options.shard is not None and options.shard != spec:
            raise ResumeMismatch(f"--resume {target} is shard {spec} but --shard says {options.shard}; drop --shard"
                                 " or pass the run dir instead.")
        return ResolvedDirs(RunPaths(target.parent), ShardPaths(target), spec, resuming=True)
    if target is not None:
        if not (target / "run.json").is_file():
            what = not_a_dir(target) or "is neither a shard dir (with shard.json) nor a run dir (with run.json)"
            raise ResumeMismatch(f"--resume {target} {what}; pass a dir made by run_production or launch_shards.")
        if spec is None:
            raise UsageError(f"--resume {target} is a run dir: say which shard with --shard i/K.")
        run = RunPaths(target)
        check_shard_count(run, spec, "--resume")
    elif spec is None:
        raise UsageError("--shard i/K is required (or --shard auto inside a scheduler job array).")
    elif options.out is not None:
        refuse_a_file_for_a_dir(options.out, "--out")
        run = RunPaths(options.out)
        check_shard_count(run, spec, "--out")
    else:
        run = RunPaths(config.output.root / "(new run dir)")
        if not options.dry_run:
            new_run = (config.output.root, run_label(task, config, options.pilot), now)
    shard = run.shard(spec)
    # --out starts or continues (a requeued element reruns it): the shard's identity decides, checked
    # under the lock, never the dir existing.
    resuming = shard.identity.is_file()
    if resuming:
        read_shard_identity(shard)  # a damaged one is refused here, before any write
    return ResolvedDirs(run, shard, spec, resuming, new_run)


def run_label(task: Task, config: RunConfig, pilot: int | None) -> str:
    """The name of a new run dir before its time: `<config stem>_<full|pilotN>[_<task's label>]`."""
    mode = "full" if pilot is None else f"pilot{pilot}"
    label = task.run_label(config.settings)
    label = f"{mode}_{label}" if label else mode
    stem = config_stem(config)
    return f"{stem}_{label}" if stem else label


def config_stem(config: RunConfig) -> str:
    """The config file's stem, as it may stand in a dir name ('' for a config not read from a file)."""
    if config.source is None:
        return ""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", Path(config.source).stem).strip("-.")


def run_document(config: RunConfig, task: Task, index: UserIndex, shard_count: int,
                 pilot: int | None = None) -> dict[str, Any]:
    """run.json: what a run is (config snapshot and hash, K, --pilot, versions), written once per run dir."""
    try:
        own = importlib.metadata.version("shardrun")
    except importlib.metadata.PackageNotFoundError:
        own = "unknown (not installed)"
    return {
        "config": dict(config.raw),
        "config_path": str(config.source) if config.source else None,
        "config_hash": config.hash,
        "task": config.task,
        "task_origin": task_origin(config.task),
        "shards": shard_count,
        "data_fingerprint": index.fingerprint,
        "users_total": len(index.user_ids),
        "partition": config.partition,
        "pilot": pilot,
        "versions": {"shardrun": own, "python": platform.python_version(),
                     **{k: str(v) for k, v in task.describe_versions().items()}},
        "created_at": utc_now(),
    }


def ensure_run_document(run: RunPaths, document: Mapping[str, Any]) -> None:
    """First process of a run writes run.json; every later one checks it describes the same run."""
    run.dir.mkdir(parents=True, exist_ok=True)
    if create_json_once(run.run_json, document):
        return
    existing = read_run_document(run.run_json)
    difference = run_difference(existing, document["shards"], document["config_hash"], document["data_fingerprint"])
    if difference:
        raise ResumeMismatch(f"run dir {run.dir} belongs to another run: {difference[1]}. Use the run's own config,"
                             f" data and K (--shard i/{existing.get('shards')}), or a new --out.")


def shard_of(given: str | None, target: Path | None) -> ShardSpec | None:
    """--shard as a ShardSpec; with auto, K comes from the run `target` names, so a resubmitted element
    joins its run."""
    if not given:
        return None
    if given.strip() != "auto":
        return ShardSpec.parse(given)
    recorded = recorded_shard_count(target) if target is not None else None
    run_dir, run_shards = recorded if recorded else (None, None)
    auto = resolve_auto_shard(os.environ, run_shards, None if run_dir is None else str(run_dir))
    log.info("--shard auto: %s", auto.explanation)
    return auto.spec
