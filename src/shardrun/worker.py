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
import socket
import sys
import time
import traceback
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from shardrun import store
from shardrun.config import RunConfig
from shardrun.errors import (
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_USERS_FAILED,
    ConfigError,
    HeapTooSmall,
    ResumeMismatch,
    UsageError,
)
from shardrun.jvm import find_java, find_jidt_jar, is_heap_exhaustion, java_class_name, java_stack, start_jvm
from shardrun.paths import RunPaths, ShardPaths
from shardrun.shards import ShardSpec, users_of_shard
from shardrun.status import ShardStatus
from shardrun.task import Dataset, Task, load_task

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WorkerOptions:
    shard: ShardSpec | None  # None: taken from the shard dir given to --resume
    pilot: int | None  # None means --full
    out: Path | None = None
    resume: Path | None = None
    dry_run: bool = False
    heartbeat_seconds: float = 10.0


@dataclass(frozen=True)
class ShardPlan:
    """Pure: which users this shard owns, which are already committed, which remain."""

    shard: ShardSpec
    assigned: tuple[str, ...]
    done: tuple[str, ...]
    todo: tuple[str, ...]


def plan_shard(
    sorted_user_ids: Sequence[str], shard: ShardSpec, pilot: int | None, committed: Mapping[str, Any]
) -> ShardPlan:
    assigned = users_of_shard(sorted_user_ids, shard)
    if pilot is not None:
        assigned = assigned[:pilot]
    done = tuple(u for u in assigned if u in committed)
    todo = tuple(u for u in assigned if u not in committed)
    return ShardPlan(shard=shard, assigned=tuple(assigned), done=done, todo=todo)


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
        run = RunPaths.create(config.output.root, run_label(task, config, options.pilot), now)
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


def user_outcome(rows: Sequence[Mapping[str, Any]]) -> str:
    statuses = {row.get("status") for row in rows}
    if "failed" in statuses:
        return "failed"
    if statuses == {"skipped"}:
        return "skipped"
    return "ok"


class StopFlag:
    """Set by SIGTERM/SIGINT: finish the user in flight, commit it, then stop taking users.

    Installed first thing in the worker, before the data is read or the JVM starts, so that a
    signal at any moment leads to a drain, never to the default action half-way through start-up.
    A second signal calls `on_second` (by default: leave at once).
    """

    def __init__(self) -> None:
        self.requested_by: str | None = None
        self.on_second: Callable[[str], None] = lambda _name: os._exit(EXIT_INTERRUPTED)

    def install(self) -> None:
        def handler(signum: int, _frame: Any) -> None:
            name = signal.Signals(signum).name
            if self.requested_by is not None:
                self.on_second(name)
                return
            self.requested_by = name
            log.warning("%s received: finishing the user in flight, then stopping", name)

        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, handler)


@dataclass
class ShardOutcome:
    exit_code: int
    plan: ShardPlan
    dirs: ResolvedDirs
    problems: list[str] = field(default_factory=list)


def prepare(config: RunConfig, options: WorkerOptions) -> tuple[Task, Dataset, ResolvedDirs, ShardPlan, list[str]]:
    """Everything before side effects: preflight problems, the data, the dirs and the plan."""
    task = load_task(config.task)
    problems = task.preflight(config.settings, config.jvm.xmx_bytes)
    find_jidt_jar(config.jvm.classpath)
    find_java()
    dataset = task.load(config.settings)
    dirs = resolve_dirs(config, task, options, datetime.now())
    committed = store.scan_committed(dirs.shard) if dirs.resuming else {}
    plan = plan_shard(dataset.user_ids, dirs.spec, options.pilot, committed)
    return task, dataset, dirs, plan, problems


def run_shard(config: RunConfig, options: WorkerOptions, stop: StopFlag | None = None) -> ShardOutcome:
    stop = stop or StopFlag()
    task, dataset, dirs, plan, problems = prepare(config, options)
    if options.dry_run:
        return ShardOutcome(exit_code=2 if problems else EXIT_OK, plan=plan, dirs=dirs, problems=problems)
    if problems:
        raise ConfigError(
            "the configured analysis cannot run as it stands:\n  - " + "\n  - ".join(problems)
            + "\nLower k_selection.k_max or the k grid, or raise jvm.xmx; `run_production --dry-run` lists this"
            " before any user starts."
        )
    identity = {
        "shard": str(dirs.spec),
        "config_hash": config.hash,
        "data_fingerprint": dataset.fingerprint,
        "pilot": options.pilot,
        "task": config.task,
        "users_planned": list(plan.assigned),
    }
    if stop.requested_by:
        log.warning("%s received before the shard started: nothing was written", stop.requested_by)
        return ShardOutcome(exit_code=EXIT_INTERRUPTED, plan=plan, dirs=dirs)
    ensure_run_document(dirs.run, run_document(config, task, dataset, dirs.spec.count))
    dirs.shard.make()
    attach_shard_log(dirs.shard.log)
    with store.ShardLock(dirs.shard):
        store.ensure_identity(dirs.shard, identity, resuming=dirs.resuming)
        store.clean_tmp(dirs.shard)
        # Re-scan under the lock: the plan made before it may predate another process's last commit.
        committed = store.scan_committed(dirs.shard)
        plan = plan_shard(dataset.user_ids, dirs.spec, options.pilot, committed)
        previous = [user_outcome(committed[u].rows) for u in plan.done]
        exit_code = ShardLoop(config, task, dataset, dirs, plan, options, previous, stop).run()
    return ShardOutcome(exit_code=exit_code, plan=plan, dirs=dirs)


def attach_shard_log(path: Path) -> None:
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.getLogger().addHandler(handler)


class ShardLoop:
    def __init__(
        self,
        config: RunConfig,
        task: Task,
        dataset: Dataset,
        dirs: ResolvedDirs,
        plan: ShardPlan,
        options: WorkerOptions,
        previous_outcomes: Sequence[str],
        stop: StopFlag,
    ):
        self.config = config
        self.task = task
        self.dataset = dataset
        self.dirs = dirs
        self.plan = plan
        self.options = options
        self.stop = stop
        previous = list(previous_outcomes)
        self.status = ShardStatus(
            dirs.shard,
            {
                "shard": str(dirs.spec),
                "shard_index": dirs.spec.index,
                "shard_count": dirs.spec.count,
                "run_dir": str(dirs.run.dir),
                "config_hash": config.hash,
                "jvm": config.jvm.jvm_args(),
                "users_total": len(plan.assigned),
                "users_done": len(plan.done),
                "users_ok": previous.count("ok"),
                "users_failed": previous.count("failed"),
                "users_skipped": previous.count("skipped"),
                "users_todo": len(plan.todo),
                "resumed_with_done": len(plan.done),
            },
        )

    def run(self) -> int:
        self.status.update(state="starting")
        log.info(
            "shard %s: %d users assigned, %d already committed, %d to do",
            self.dirs.spec, len(self.plan.assigned), len(self.plan.done), len(self.plan.todo),
        )
        try:
            jvm_info = start_jvm(self.config.jvm)
        except Exception as exc:
            self.status.update(state="failed", last_error=str(exc))
            raise
        self.status.update(state="running", java_version=jvm_info.java_version, jidt_jar_sha256=jvm_info.jar_sha256)
        self.stop.on_second = self._stop_now
        self.status.start_heartbeat(self.options.heartbeat_seconds)
        try:
            for user_id in self.plan.todo:
                if self.stop.requested_by:
                    break
                self._run_user(user_id)
        except BaseException as exc:
            self.status.update(state="failed", last_error=f"{type(exc).__name__}: {exc}")
            raise
        finally:
            self.status.stop_heartbeat()
        return self._finish()

    def _stop_now(self, signal_name: str) -> None:
        log.warning("second %s: stopping now; the user in flight is abandoned uncommitted", signal_name)
        self.status.update(state="interrupted", last_error=f"stopped by a second {signal_name}")
        logging.shutdown()
        os._exit(EXIT_INTERRUPTED)

    def _run_user(self, user_id: str) -> None:
        self.status.begin_user(user_id)
        started = time.monotonic()
        try:
            rows = list(self.task.analyse(self.dataset, user_id, self.config.settings))
        except Exception as exc:  # one user's failure must not end the shard: record it and go on
            rows = list(self.task.failed_rows(self.config.settings, user_id, failure_reason(exc)))
            self._record_error(user_id, exc)
        seconds = round(time.monotonic() - started, 3)
        bookkeeping = {"shard": str(self.dirs.spec), "seconds": seconds, "config_hash": self.config.hash}
        rows = [{**row, **bookkeeping} for row in rows]
        try:
            store.commit_user(self.dirs.shard, user_id, rows, {"shard": str(self.dirs.spec), "host": socket.gethostname()})
        except store.AlreadyCommitted:
            log.error("user %r was already committed in %s; keeping the first commit", user_id, self.dirs.shard.dir)
        outcome = user_outcome(rows)
        self.status.end_user(outcome)
        log.info("user %r %s in %.2f s", user_id, outcome, seconds)

    def _record_error(self, user_id: str, exc: BaseException) -> None:
        record: dict[str, Any] = {
            "user_id": user_id,
            "shard": str(self.dirs.spec),
            "error_type": type(exc).__name__,
            "message": str(exc),
            "java_class": java_class_name(exc) or java_class_name(exc.__cause__ or exc),
            "java_stack": java_stack(exc) or (java_stack(exc.__cause__) if exc.__cause__ else None),
            "traceback": "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)),
            "xmx": self.config.jvm.xmx,
        }
        if isinstance(exc, HeapTooSmall):
            record["heap_needed_bytes"] = exc.needed_bytes
        elif is_heap_exhaustion(exc):
            record["heap_needed_bytes"] = None
        store.append_error(self.dirs.shard, record)
        self.status.update(last_error=f"{user_id}: {failure_reason(exc)}")
        log.error("user %r failed: %s", user_id, failure_reason(exc))

    def _finish(self) -> int:
        doc = self.status.snapshot()
        if self.stop.requested_by and doc["users_todo"] > 0:
            self.status.update(state="interrupted", last_error=f"stopped by {self.stop.requested_by}")
            log.warning("shard %s interrupted with %d users to do; resume with --resume %s",
                        self.dirs.spec, doc["users_todo"], self.dirs.shard.dir)
            return EXIT_INTERRUPTED
        failed = doc["users_failed"] > 0
        self.status.update(state="completed_with_failures" if failed else "completed", eta_seconds=0)
        log.info("shard %s finished: %d ok, %d skipped, %d failed", self.dirs.spec,
                 doc["users_ok"], doc["users_skipped"], doc["users_failed"])
        return EXIT_USERS_FAILED if failed else EXIT_OK


def failure_reason(exc: BaseException) -> str:
    if is_heap_exhaustion(exc) and not isinstance(exc, HeapTooSmall):
        return f"Java heap exhausted ({exc}); raise jvm.xmx and resume"
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:500]


def configure_logging(verbose: bool = False) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


if __name__ == "__main__":
    from shardrun.cli import run_production_main

    sys.exit(run_production_main())
