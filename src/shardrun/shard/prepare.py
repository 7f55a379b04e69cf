"""Everything a shard decides before its first write: task, data, heap, dirs and plan (what --dry-run prints).

Order matters for the guarantees: everything that can reject the input (config, preflight of the
analysis, data, the resume identity) happens here, before any directory is created or the JVM is
started.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Mapping, Sequence

from shardrun.config import RunConfig
from shardrun.errors import ConfigError, ResumeMismatch, UsageError
from shardrun.heap_plan import HeapPlan, plan_heap, run_heap_needs, task_heap_needs
from shardrun.shard.fail_fast import DEFAULT_FAIL_FAST
from shardrun.shard.jvm import find_java, task_classpath, task_jvm_options
from shardrun.shard.plan import ShardPlan, assign_index, plan_shard
from shardrun.sharding import ShardSpec
from shardrun.storage import commits
from shardrun.storage.commits import CommittedUser
from shardrun.storage.durability import SHARD, durable_write
from shardrun.storage.identity import read_run_document, read_shard_identity, run_difference
from shardrun.storage.paths import RunPaths, ShardPaths, not_a_dir, refuse_a_file_for_a_dir
from shardrun.task import Dataset, Task, UserIndex, heap_advice, load_task, load_users, read_user_index


@dataclass(frozen=True)
class WorkerOptions:
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
    # A brand-new run dir under output.root: named (root, label, time) here, created by create_run_dir
    # only once every check has passed, so a refused start leaves no empty run dir behind.
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


def resolve_dirs(config: RunConfig, task: Task, options: WorkerOptions, now: datetime) -> ResolvedDirs:
    """Where this shard writes. Reads only; creates nothing (a brand-new run dir is only named)."""
    if options.resume is not None:
        target = options.resume
        if (target / "shard.json").is_file():
            identity = read_shard_identity(ShardPaths(target))
            spec = ShardSpec.parse(identity["shard"])
            if options.shard is not None and options.shard != spec:
                raise ResumeMismatch(
                    f"--resume {target} is shard {spec} but --shard says {options.shard}; drop --shard or"
                    " pass the run dir instead."
                )
            return ResolvedDirs(RunPaths(target.parent), ShardPaths(target), spec, resuming=True)
        if (target / "run.json").is_file():
            if options.shard is None:
                raise UsageError(f"--resume {target} is a run dir: say which shard with --shard i/K.")
            run = RunPaths(target)
            check_shard_count(run, options.shard, "--resume")
            shard_paths = run.shard(options.shard)
            if shard_paths.identity.is_file():
                read_shard_identity(shard_paths)  # a damaged one is refused here, before any write
            return ResolvedDirs(run, shard_paths, options.shard, resuming=shard_paths.identity.is_file())
        raise ResumeMismatch(
            f"--resume {target} {not_a_dir(target) or 'is neither a shard dir (with shard.json) nor a run dir (with run.json)'};"
            " pass a dir made by run_production or launch_shards."
        )
    if options.shard is None:
        raise UsageError("--shard i/K is required (or --shard auto inside a scheduler job array).")
    new_run = None
    if options.out is not None:
        refuse_a_file_for_a_dir(options.out, "--out")
        run = RunPaths(options.out)
        check_shard_count(run, options.shard, "--out")
    else:
        run = RunPaths(config.output.root / "(new run dir)")
        if not options.dry_run:
            new_run = (config.output.root, run_label(task, config, options.pilot), now)
    shard_paths = run.shard(options.shard)
    # --out starts the shard or continues it, like launch_shards --out: a job array element that is
    # requeued, preempted or resubmitted runs this same command again. Whether it continues is decided
    # by the shard's identity (same config, data and --pilot, checked under the lock), never by the
    # dir existing; committed users are skipped as with --resume.
    continuing = shard_paths.identity.is_file()
    if continuing:
        read_shard_identity(shard_paths)  # a damaged one is refused here, before any write
    return ResolvedDirs(run, shard_paths, options.shard, resuming=continuing, new_run=new_run)


def run_label(task: Task, config: RunConfig, pilot: int | None) -> str:
    """The name of a new run dir before its time: `<config stem>_<full|pilotN>[_<task's label>]`."""
    mode = "full" if pilot is None else f"pilot{pilot}"
    label_of = getattr(task, "run_label", None)
    label = f"{mode}_{label_of(config.settings)}" if label_of else mode
    stem = config_stem(config)
    return f"{stem}_{label}" if stem else label


def config_stem(config: RunConfig) -> str:
    """The config file's stem, as it may stand in a dir name ('' for a config not read from a file)."""
    if config.source is None:
        return ""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", Path(config.source).stem).strip("-.")


@dataclass(frozen=True)
class PreparedShard:
    """Everything decided before any side effect: what `--dry-run` prints and `run_shard` acts on."""

    task: Task
    index: UserIndex  # every user of the input: the assignment, run.json's fingerprint and user count
    dataset: Dataset | None  # the rows of the users to do (all rows for a task without ReadsByUser); None: none to do
    dirs: ResolvedDirs
    assignment: list[list[str]]  # every shard's users (config.partition), shard i's at index i
    plan: ShardPlan
    heap: HeapPlan  # the resolved JVM flags (jvm.xmx auto) and the users over the heap
    problems: list[str]  # the task's preflight: work that cannot run with that heap
    committed: dict[str, CommittedUser]  # the resume scan the plan was made from
    committed_listing: frozenset  # the result files that scan saw (commits.results_listing)


def prepare(config: RunConfig, options: WorkerOptions) -> PreparedShard:
    """Read the config's consequences, the user index, the shard dir and this shard's rows; write nothing.

    The order keeps a shard's memory to its own share: the user index (ids and rows per user, a cheap
    pass) -> the assignment and the plan (the resume scan) -> the rows of the users to do only
    (Task.load with users, for a task that reads by user). A heap given as a size is preflighted before
    the data is read. jvm.xmx: auto is chosen from every user's predicted need (so all shards of a run
    choose the same heap): the task's bound from the index where it has one, else a full load.
    """
    task = load_task(config.task)
    problems = preflight(task, config)
    task_jvm_options(task, config.settings)
    find_java()
    index, whole = read_user_index(task, config.settings)
    needs, whole = run_heap_needs(task, config.settings, index, whole, config.jvm)
    dirs = resolve_dirs(config, task, options, datetime.now())
    committed = scan_committed_durably(dirs.shard) if dirs.resuming else {}
    listing = commits.results_listing(dirs.shard) if dirs.resuming else frozenset()
    assignment = assign_index(index, dirs.spec.count, config.partition)
    plan = plan_shard(assignment, dirs.spec, options.pilot, committed, options.retry_failed)
    dataset = whole if whole is not None else shard_rows(task, config, plan.todo, index)
    checked = task_heap_needs(task, config.settings, dataset, config.jvm) if dataset is not None else {}
    heap, problems = task_heap(task, config, needs if needs is not None else checked, plan.todo, checked, problems)
    return PreparedShard(task, index, dataset, dirs, assignment, plan, heap, problems, committed, listing)


def preflight(task: Task, config: RunConfig) -> list[str]:
    """Before the data are read: the task's classpath (a missing jar refuses at once, before any write) and
    its problems with a heap given as a size ([] for jvm.xmx auto: checked once resolved, task_heap)."""
    task_classpath(task, config.settings, config.jvm)
    return [] if config.jvm.xmx_is_auto else task.preflight(config.settings, config.jvm.xmx_bytes)


def task_heap(task: Task, config: RunConfig, needs: Mapping[str, int] | None, users: Sequence[str],
                 checked: Mapping[str, int] | None, problems: list[str]) -> tuple[HeapPlan, list[str]]:
    """The heap for `users` and the task's problems with it: preflight's for a size, else the auto heap's."""
    heap = plan_heap(config.jvm, needs, users, advice=heap_advice(task, config.settings), checked=checked)
    return heap, task.preflight(config.settings, heap.heap) if config.jvm.xmx_is_auto else problems


def refuse_if(problems: list[str], fix: str = "") -> None:
    """The task's preflight problems as the refusal of the run (exit 2), with `fix` on a line of its own."""
    if problems:
        raise ConfigError("the configured analysis cannot run as it stands:\n  - " + "\n  - ".join(problems)
                          + (f"\n{fix}" if fix else ""))


def shard_rows(task: Task, config: RunConfig, users: tuple[str, ...], index: UserIndex) -> Dataset | None:
    """The rows of `users` (a plan's users to do), or None when there are none: nothing to read."""
    return load_users(task, config.settings, users, index) if users else None


def scan_committed_durably(paths: ShardPaths) -> dict[str, CommittedUser]:
    """commits.scan_committed, whose quarantine of an unreadable result file moves it (a write)."""
    return durable_write("results/quarantine", paths.results, lambda: commits.scan_committed(paths), remedy=SHARD)
