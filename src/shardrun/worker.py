"""The shard loop behind `run_production`: plan -> skip done -> analyse -> commit -> heartbeat.

Order matters for the guarantees: everything that can reject the input (config, preflight of
the (mode, k) grid, data, the resume identity) happens before any directory is created or the
JVM is started, and a user becomes done only by its atomic commit.
"""

from __future__ import annotations

import importlib.metadata
import logging
import os
import platform
import signal
import sys
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any, Mapping, Sequence

from shardrun import store
from shardrun.admission import HeapPlan, plan_heap, task_heap_needs
from shardrun.config import RunConfig, resolve_threads
from shardrun.durability import durable_write
from shardrun.errors import EXIT_INTERRUPTED, ConfigError, ResumeMismatch, UsageError
from shardrun.jvm import find_java, find_jidt_jar
from shardrun.paths import RunPaths, ShardPaths
from shardrun.shards import ShardSpec, users_of_shard
from shardrun.shard_loop import ShardLoop, StopFlag, user_outcome
from shardrun.task import Dataset, Task, load_task

log = logging.getLogger(__name__)

# Set by launch_shards in each shard's environment: the pid the shard must not outlive.
LAUNCHER_PID_ENV = "SHARDRUN_LAUNCHER_PID"


@dataclass(frozen=True)
class WorkerOptions:
    shard: ShardSpec | None  # None: taken from the shard dir given to --resume
    pilot: int | None  # None means --full
    out: Path | None = None
    resume: Path | None = None
    dry_run: bool = False
    heartbeat_seconds: float = 10.0
    cooldown_seconds: float = 0.0  # pause between users, to share the machine
    retry_failed: bool = False


@dataclass(frozen=True)
class ShardPlan:
    """Pure: which users this shard owns, which are already committed, which remain."""

    shard: ShardSpec
    assigned: tuple[str, ...]
    done: tuple[str, ...]
    todo: tuple[str, ...]
    retry: tuple[str, ...] = ()  # in todo although committed: failed users run again (--retry-failed)


def plan_shard(
    sorted_user_ids: Sequence[str],
    shard: ShardSpec,
    pilot: int | None,
    committed: Mapping[str, Any],
    retry_failed: bool = False,
) -> ShardPlan:
    assigned = users_of_shard(sorted_user_ids, shard)
    if pilot is not None:
        assigned = assigned[:pilot]
    retry = tuple(
        u for u in assigned if retry_failed and u in committed and user_outcome(committed[u].rows) == "failed"
    )
    done = tuple(u for u in assigned if u in committed and u not in retry)
    todo = tuple(u for u in assigned if u not in done)
    return ShardPlan(shard=shard, assigned=tuple(assigned), done=done, todo=todo, retry=retry)


@dataclass
class ResolvedDirs:
    run: RunPaths
    shard: ShardPaths
    spec: ShardSpec
    resuming: bool  # the shard dir already has an identity that must match


def resolve_dirs(config: RunConfig, task: Task, options: WorkerOptions, now: datetime) -> ResolvedDirs:
    """Where this shard writes. Reads only; creates nothing except a brand-new run dir name."""
    if options.resume is not None:
        target = options.resume
        if (target / "shard.json").is_file():
            identity = store.read_json(target / "shard.json")
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
            shard_paths = run.shard(options.shard)
            return ResolvedDirs(run, shard_paths, options.shard, resuming=shard_paths.identity.is_file())
        raise ResumeMismatch(
            f"--resume {target} is neither a shard dir (with shard.json) nor a run dir (with run.json);"
            " pass a dir made by run_production or launch_shards."
        )
    if options.shard is None:
        raise UsageError("--shard i/K is required (or --shard auto inside a scheduler job array).")
    if options.out is not None:
        run = RunPaths(options.out)
    elif options.dry_run:
        run = RunPaths(config.output.root / "(new run dir)")
    else:
        run = durable_write("a new run dir", config.output.root,
                            lambda: RunPaths.create(config.output.root, run_label(task, config, options.pilot), now))
    shard_paths = run.shard(options.shard)
    if shard_paths.identity.is_file():
        raise ResumeMismatch(
            f"{shard_paths.dir} already holds shard {options.shard} of an earlier start; continue it with"
            f" --resume {run.dir} (or pick a new --out)."
        )
    return ResolvedDirs(run, shard_paths, options.shard, resuming=False)


def run_label(task: Task, config: RunConfig, pilot: int | None) -> str:
    mode = "full" if pilot is None else f"pilot{pilot}"
    label_of = getattr(task, "run_label", None)
    return f"{mode}_{label_of(config.settings)}" if label_of else mode


def versions(task: Task) -> dict[str, str]:
    try:
        own = importlib.metadata.version("shardrun")
    except importlib.metadata.PackageNotFoundError:
        own = "unknown (not installed)"
    return {
        "shardrun": own,
        "python": platform.python_version(),
        **{k: str(v) for k, v in task.describe_versions().items()},
    }


def run_document(config: RunConfig, task: Task, dataset: Dataset, shard_count: int) -> dict[str, Any]:
    """run.json: what a run is (config snapshot and hash, K, versions), written once per run dir."""
    return {
        "config": dict(config.raw),
        "config_path": str(config.source) if config.source else None,
        "config_hash": config.hash,
        "task": config.task,
        "shards": shard_count,
        "data_fingerprint": dataset.fingerprint,
        "users_total": len(dataset.user_ids),
        "versions": versions(task),
        "created_at": store.utc_now(),
    }


def ensure_run_document(run: RunPaths, document: Mapping[str, Any]) -> None:
    """First process of a run writes run.json; every later one checks it describes the same run."""
    run.dir.mkdir(parents=True, exist_ok=True)
    if store.create_json_once(run.run_json, document):
        return
    existing = store.read_json(run.run_json)
    for key in ("config_hash", "data_fingerprint"):
        if existing.get(key) != document.get(key):
            raise ResumeMismatch(
                f"run dir {run.dir} belongs to another run: its {key} is {existing.get(key)!r}, this one has"
                f" {document.get(key)!r}. Use the run's own config and data, or a new --out."
            )


@dataclass
class ShardOutcome:
    exit_code: int
    plan: ShardPlan
    dirs: ResolvedDirs


@dataclass(frozen=True)
class PreparedShard:
    """Everything decided before any side effect: what `--dry-run` prints and `run_shard` acts on."""

    task: Task
    dataset: Dataset
    dirs: ResolvedDirs
    plan: ShardPlan
    heap: HeapPlan  # the resolved JVM flags (jvm.xmx auto) and the users over the heap
    problems: list[str]  # (mode, k) that cannot run with that heap


def prepare(config: RunConfig, options: WorkerOptions) -> PreparedShard:
    """Read the config's consequences, the data and the shard dir; write nothing.

    A heap given as a size is preflighted before the data is read. jvm.xmx: auto is chosen from every
    user's predicted need (so all shards of a run choose the same heap), then preflighted the same way.
    """
    task = load_task(config.task)
    problems = [] if config.jvm.xmx_is_auto else task.preflight(config.settings, config.jvm.xmx_bytes)
    find_jidt_jar(config.jvm.classpath)
    find_java()
    dataset = task.load(config.settings)
    needs = task_heap_needs(task, config.settings, dataset, config.jvm)
    dirs = resolve_dirs(config, task, options, datetime.now())
    committed = scan_committed(dirs.shard) if dirs.resuming else {}
    plan = plan_shard(dataset.user_ids, dirs.spec, options.pilot, committed, options.retry_failed)
    heap = plan_heap(config.jvm, needs, plan.todo)
    if config.jvm.xmx_is_auto:
        problems = task.preflight(config.settings, heap.heap)
    return PreparedShard(task, dataset, dirs, plan, heap, problems)


def run_shard(config: RunConfig, options: WorkerOptions, stop: StopFlag | None = None) -> ShardOutcome:
    stop = stop or StopFlag()
    prepared = prepare(config, options)
    task, dataset, dirs, heap = prepared.task, prepared.dataset, prepared.dirs, prepared.heap
    if prepared.problems:
        raise ConfigError(
            "the configured analysis cannot run as it stands:\n  - " + "\n  - ".join(prepared.problems)
            + "\nLower k_selection.k_max or the k grid, or raise jvm.xmx; `run_production --dry-run` lists this"
            " before any user starts."
        )
    if stop.requested_by:
        log.warning("%s received before the shard started: nothing was written", stop.requested_by)
        return ShardOutcome(exit_code=EXIT_INTERRUPTED, plan=prepared.plan, dirs=dirs)
    # From here on the config carries the resolved heap and threads: the JVM, the task, status.json,
    # run.json, errors.jsonl.
    threads = resolve_threads(config.jvm.threads, dirs.spec.count)
    config = replace(config, jvm=replace(heap.jvm, threads=threads),
                     settings=with_threads(task, config.settings, threads))
    identity = {
        "shard": str(dirs.spec),
        "config_hash": config.hash,
        "data_fingerprint": dataset.fingerprint,
        "pilot": options.pilot,
        "task": config.task,
        "users_planned": list(prepared.plan.assigned),
    }
    # Every write of the set-up goes through durable_write like the loop's own: a read-only or full
    # output dir is a StorageError naming the dir and the fix (exit 6), not an unexpected crash.
    run_doc = {**run_document(config, task, dataset, dirs.spec.count), "jvm": config.jvm.jvm_args()}
    durable_write("run.json", dirs.run.dir, lambda: ensure_run_document(dirs.run, run_doc))
    durable_write("the shard dir", dirs.shard.dir, lambda: (dirs.shard.make(), attach_shard_log(dirs.shard.log)))
    log.info("JVM heap: %s", heap.jvm_line())
    if heap.over_budget_count:
        log.warning("%s", "\n".join(heap.report_lines()))
    lock = store.ShardLock(dirs.shard)
    durable_write("the shard lock", dirs.shard.dir, lock.acquire)
    try:
        durable_write("shard.json", dirs.shard.dir,
                      lambda: store.ensure_identity(dirs.shard, identity, resuming=dirs.resuming))
        durable_write("the scratch dir", dirs.shard.tmp, lambda: store.clean_tmp(dirs.shard))
        # Re-scan under the lock: the plan made before it may predate another process's last commit.
        committed = scan_committed(dirs.shard)
        plan = plan_shard(dataset.user_ids, dirs.spec, options.pilot, committed, options.retry_failed)
        previous = [user_outcome(committed[u].rows) for u in plan.done]
        exit_code = ShardLoop(config, task, dataset, dirs, plan, options, previous, stop).run()
    finally:
        lock.release()
    return ShardOutcome(exit_code=exit_code, plan=plan, dirs=dirs)


def with_threads(task: Task, settings: Any, threads: int) -> Any:
    """The task's settings for `threads` threads, if the task can use them (Task.with_threads)."""
    set_threads = getattr(task, "with_threads", None)
    return settings if set_threads is None else set_threads(settings, threads)


def scan_committed(paths: ShardPaths) -> dict[str, store.CommittedUser]:
    """store.scan_committed, whose quarantine of an unreadable result file moves it (a write)."""
    return durable_write("results/quarantine", paths.results, lambda: store.scan_committed(paths))


def attach_shard_log(path: Path) -> None:
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.getLogger().addHandler(handler)


def die_with_launcher() -> None:
    """A shard started by launch_shards ends when the launcher ends, however the launcher ends.

    Linux delivers SIGTERM to this process when its parent dies (prctl PR_SET_PDEATHSIG), which
    the stop flag turns into a drain. If the launcher died before this call, stop at once.
    Elsewhere (no prctl), the launcher's own signal forwarding is the only guard.
    """
    launcher_pid = os.environ.get(LAUNCHER_PID_ENV)
    if not launcher_pid or not sys.platform.startswith("linux"):
        return
    import ctypes

    pr_set_pdeathsig = 1
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(pr_set_pdeathsig, signal.SIGTERM, 0, 0, 0) != 0:
        log.warning("could not ask to die with the launcher (errno %d)", ctypes.get_errno())
    if os.getppid() != int(launcher_pid):
        os.kill(os.getpid(), signal.SIGTERM)


def configure_logging(verbose: bool = False) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


if __name__ == "__main__":
    from shardrun.cli import run_production_main

    sys.exit(run_production_main())
