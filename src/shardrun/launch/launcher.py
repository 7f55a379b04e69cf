"""Local K-process launcher behind `launch_shards` and the run_parallel_4shards scripts.

The launcher never starts a JVM: it starts shard processes through the process port
(processes.py: subprocess, a fresh interpreter each, so no JVM is ever forked) and does what the
supervisor (supervisor.py) decides: start (at most --max-parallel at once), restart by resuming
(--restarts), suspend and resume (--cpu-limit), drain on a signal, kill after --grace. This module
only admits the launch, prepares the run dir, runs the loop (observe -> events -> supervisor ->
actions), writes RUN/launcher.json for `monitor_progress`, shows progress, and merges at the end.
Each shard runs in its own process group so that a terminal's Ctrl-C reaches the launcher alone,
which then drains the shards once; each shard also dies with the launcher (parent-death signal,
set by the worker; for a suspended shard, the orphaned process group's SIGHUP + SIGCONT).
"""

from __future__ import annotations

import errno
import logging
import os
import signal
import socket
import sys
import time
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

from shardrun.observe import progress
from shardrun.observe.live import LiveTable
from shardrun.storage.atomic import utc_now, write_json_atomic
from shardrun.early_signals import STOP_SIGNALS
from shardrun.launch.admission import (
    available_cores, check_launch, measure_launch_data, refuse_shards_without_users, shard_memory_bytes,
)
from shardrun.launch.cpu import CpuMeter, affinity
from shardrun.config import RunConfig, resolve_threads
from shardrun.storage.durability import Remedy, durable_write, storage_error
from shardrun.errors import (
    EXIT_OK,
    EXIT_SHARD_LOCKED,
    EXIT_STORAGE,
    EXIT_USAGE,
    EXIT_USERS_FAILED,
    EXIT_VALIDATION_FAILED,
    AlreadyRunning,
    ConfigError,
    ResumeMismatch,
    StorageError,
    UsageError,
)
from shardrun.storage.identity import read_run_document, read_shard_identity, run_difference
from shardrun.storage.exclusive import ExclusiveFile
from shardrun.storage.paths import RunPaths, ShardPaths, refuse_a_file_for_a_dir, shard_log_path
from shardrun.launch.policies import (
    CpuThrottle,
    ParallelPlan,
    RestartPolicy,
    describe_exit,
    died_abnormally,
    log_excerpt,
    parallel_for_cores,
    shows_its_error,
)
from shardrun.launch.processes import LocalProcesses, ProcessPort
from shardrun.launch.supervisor import (
    Action,
    CpuReading,
    Event,
    Kill,
    RecordDeath,
    Resume,
    Say,
    ShardExited,
    Start,
    StopRequested,
    Supervisor,
    SupervisorPolicy,
    Suspend,
    Terminate,
    Tick,
    overall_exit,
)
from shardrun.shard.plan import assign_index
from shardrun.sharding import ShardSpec
from shardrun.storage.status import record_death, status_document
from shardrun.states import ShardPhase, ShardState
from shardrun.results.tolerance import NO_FAILED, FailedTolerance
from shardrun.task import load_task
from shardrun.units import heap_bytes
from shardrun.shard.prepare import run_label

__all__ = ["LaunchOptions", "LaunchResult", "Launcher", "admit_launch", "check_same_run", "launch", "overall_exit",
           "plan_launch", "plan_parallel", "shard_command"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LaunchOptions:
    config_path: Path
    shards: int
    run_dir: Path | None = None  # an existing run dir: continue it (every shard resumes)
    out: Path | None = None  # start the run here, or continue it if this dir holds the same run
    pilot: int | None = None
    merge: bool = True
    grace_seconds: float = 120.0
    progress_every: float = 30.0
    max_parallel: int | None = None
    cpu_limit: float | None = None
    cpu_check_every: float = 2.0
    nice: int = 0
    cooldown_seconds: float = 0.0
    commit_interval_seconds: float | None = None  # None: the shard's own default (run_production --commit-interval)
    restart: RestartPolicy = RestartPolicy()
    live: bool = False  # redraw a table on the terminal instead of plain lines
    retry_failed: bool = False  # every shard runs its failed users again (run_production --retry-failed)
    fail_fast: int | None = None  # None: the shard's own default (run_production --fail-fast)
    max_failed: FailedTolerance = NO_FAILED  # the failed users the merged set may have and still pass
    shard_data_bytes: int | None = None  # one shard's input in memory, as the admission measured it (plan_launch)
    invocation: str = "launch_shards"  # the command the user ran, which the hints repeat (or the wrapper script)


@dataclass
class LaunchResult:
    run_dir: Path
    shard_codes: dict[str, int] = field(default_factory=dict)
    exit_code: int = EXIT_OK
    merged_dir: Path | None = None
    shards_seconds: float | None = None  # wall time from the first shard's start to the last one's exit
    max_parallel: int | None = None  # the shards that ran at most at once (None: all)


def shard_command(config_path: Path, spec: ShardSpec, run_dir: Path, resume: bool, options: LaunchOptions,
                  xmx: str, threads: int, retry_failed: bool = False) -> list[str]:
    """The shard's command line; `retry_failed` (a shard dir to resume only) runs its failed users again."""
    mode = ["--full"] if options.pilot is None else ["--pilot", str(options.pilot)]
    where = ["--resume", str(run_dir)] if resume else ["--out", str(run_dir)]
    if resume and retry_failed:
        where.append("--retry-failed")
    command = [sys.executable, "-m", "shardrun", "run", "--config", str(config_path), *mode, "--shard", str(spec),
               *where, "--xmx", xmx, "--threads", str(threads)]
    if options.nice:
        command += ["--nice", str(options.nice)]
    if options.cooldown_seconds:
        command += ["--cooldown", str(options.cooldown_seconds)]
    if options.commit_interval_seconds is not None:
        command += ["--commit-interval", str(options.commit_interval_seconds)]
    if options.fail_fast is not None:
        command += ["--fail-fast", str(options.fail_fast)]
    return command


def supervisor_policy(config: RunConfig, options: LaunchOptions) -> SupervisorPolicy:
    return SupervisorPolicy(
        shards=options.shards, xmx=config.jvm.xmx, restart=options.restart, max_parallel=options.max_parallel,
        grace_seconds=options.grace_seconds, throttle=CpuThrottle(options.cpu_limit) if options.cpu_limit else None,
    )


def refuse_a_dir_of_something_else(run: RunPaths) -> None:
    """A new run's --out must be empty or new: a dir of other files is no run to continue."""
    others = run.foreign_entries()
    if others:
        raise ConfigError(
            f"--out {run.dir} is not empty ({', '.join(others[:3])}{', ...' if len(others) > 3 else ''}) and"
            " holds no run.json, so it is no run to continue; pass an empty or new dir to --out."
        )


def given_run_dir(config: RunConfig, options: LaunchOptions,
                  data_fingerprint: str | None = None) -> tuple[RunPaths, bool] | None:
    """The run dir --run-dir or --out names and whether it holds a run to continue (None: neither flag),
    or a refusal: a file, a dir of another run (K, config, --pilot; the data when `data_fingerprint` is
    given), a non-empty dir without run.json, --run-dir or --retry-failed without a run. Writes nothing,
    so the launcher asks it before it reads the data or prints its plan (a refusal then is the one thing
    the command says) and again, with the data's fingerprint, just before it uses the dir."""
    given, flag = options.run_dir, "--run-dir"
    if given is None:
        given, flag = options.out, "--out"
    if given is None:
        refuse_an_unwritable_place(config.output.root)  # where a new run dir is made
        return None
    refuse_a_file_for_a_dir(given, flag)
    run = RunPaths(given)
    if run.run_json.is_file():
        check_same_run(run, flag, options.shards, config.hash, options.pilot, data_fingerprint)
        return run, True
    if options.retry_failed:
        raise UsageError(f"--retry-failed: {flag} {run.dir} holds no run (no run.json), so it has no failed"
                         " users to run again; pass the dir of the run whose failed users to retry.")
    if options.run_dir is not None:
        raise ConfigError(f"--run-dir {run.dir} has no run.json; it is not a run made by launch_shards."
                          f" To start a run there, pass --out {run.dir}.")
    refuse_a_dir_of_something_else(run)
    refuse_an_unwritable_place(run.dir)
    return run, False


def refuse_an_unwritable_place(run_dir: Path) -> None:
    """A new run's dir (or the dir it would be made in) that this user cannot write (a read-only
    filesystem, no permission): the storage error (exit 6) before the data are read and the plan shown,
    not after. access(2) answers for root too on a read-only filesystem (EROFS)."""
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
    """Be the one launch_shards of `run`, running it here or submitting it to SLURM, until the guard is
    released: a second one is refused at once, naming this one and saying `fix`. A `new_run` that
    another launch_shards started between the caller's look at the dir and here is refused as well, so
    two commands on one new dir never both start it."""
    guard = ExclusiveFile(run.launcher_lock, f"launch_shards of the run {run.dir}", fix)
    durable_write("the run dir", run.dir, lambda: run.dir.mkdir(parents=True, exist_ok=True))
    durable_write("the launcher's lock", run.dir, guard.acquire)
    if new_run and run.run_json.is_file():
        guard.release()
        raise AlreadyRunning(f"another launch_shards started the run {run.dir} a moment ago; {follow_the_launcher(run)}")
    return guard


class Launcher:
    """Runs the supervisor's decisions through a process port until every shard is done."""

    def __init__(self, config: RunConfig, options: LaunchOptions, out: Callable[[str], None] = print,
                 cpu_reading: Callable[[], CpuReading] | None = None,
                 users_per_shard: list[int] | None = None, port: ProcessPort | None = None,
                 clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep):
        self.config = config
        self.options = options
        self._out = out
        self.cpu_reading = cpu_reading  # None: a CpuMeter of this launcher's shards, made when the loop starts
        self.port: ProcessPort = port if port is not None else LocalProcesses()
        self.clock = clock
        self.sleep = sleep
        self.users_total = list(users_per_shard or [None] * options.shards)
        self.supervisor = Supervisor(supervisor_policy(config, options))
        # The CPUs are shared by the shards that run at once (auto), not by all K.
        self.threads = resolve_threads(config.jvm.threads, min(options.shards, options.max_parallel or options.shards))
        self.run: RunPaths | None = None
        self.resume_all = False
        self.created_run_dir = False  # this launcher made the run dir (removed again if nothing was written)
        self.guard: ExclusiveFile | None = None  # held while this launcher runs the run (hold_run)
        self.live = LiveTable()
        self._signals: list[StopRequested] = []  # stop requests from the signal handler, for the loop
        self.storage_failure: StorageError | None = None  # the launcher's own first failed write (exit 6)

    def out(self, message: str) -> None:
        self._out(message)
        self.live.forget()  # the live table is redrawn below the message, not over it

    def spec(self, index: int) -> ShardSpec:
        return ShardSpec(index, self.options.shards)

    # --- set-up -------------------------------------------------------------------------------

    def prepare_run_dir(self, data_fingerprint: str | None = None) -> RunPaths:
        """The run dir: --run-dir (a run to continue), --out (this run, new or continued) or a new one.

        Every check of an existing run (K, config, data, --pilot) is made before anything is written.
        """
        given = given_run_dir(self.config, self.options, data_fingerprint)
        if given is not None:
            run, holds_run = given
            if holds_run:
                self.resume_all = True
                return run
            self.created_run_dir = not run.dir.exists()
            durable_write("the run dir", run.dir, lambda: run.dir.mkdir(parents=True, exist_ok=True))
            return run
        task = load_task(self.config.task)
        label = run_label(task, self.config, self.options.pilot)
        root = self.config.output.root
        self.created_run_dir = True
        return durable_write("a new run dir", root, lambda: RunPaths.create(root, label, datetime.now()))

    def hold_run(self) -> None:
        """Be the one launcher of this run until release_run (held already when launch took it early)."""
        if self.guard is None:
            self.guard = hold_run(self.run, new_run=not self.resume_all, fix=follow_the_launcher(self.run))

    def release_run(self) -> None:
        if self.guard is not None:
            self.guard.release()
            self.guard = None

    def forget_empty_run_dir(self) -> None:
        """No shard wrote run.json: nothing of the run exists, so leave no trace of it (launcher.json, the dir)."""
        if self.run is None or self.run.run_json.is_file() or self.storage_failure is not None:
            return  # after a storage failure the dir is left as it is: it may hold the run (renamed, read-only)
        self.release_run()
        try:
            self.run.launcher_json.unlink(missing_ok=True)
            if self.created_run_dir:
                self.run.dir.rmdir()  # only if empty
        except OSError as exc:  # a tidy-up only: what is left is launcher.json, or an empty dir
            log.info("left %s as it is: %s", self.run.dir, exc.strerror or exc)

    # --- events in, actions out ---------------------------------------------------------------

    def handle(self, event: Event) -> None:
        for action in self.supervisor.handle(event):
            self.perform(action)

    def perform(self, action: Action) -> None:
        if isinstance(action, Start):
            self.start(action)
        elif isinstance(action, Say):
            self.out(action.message)
        elif isinstance(action, RecordDeath):
            shard_paths = self.run.shard(self.spec(action.index))
            if shard_paths.status.is_file():
                self.guarded_write("the death of shard " + str(self.spec(action.index)), shard_paths.dir,
                                   lambda: record_death(shard_paths, action.code, action.description,
                                                        list(action.hs_err_files)))
        elif isinstance(action, Suspend):
            self.port.suspend(action.index)
            log.info("--cpu-limit %g%%: suspended shard %s (%s)", self.options.cpu_limit, self.spec(action.index),
                     self.supervisor.cpu)
        elif isinstance(action, Resume):
            self.port.resume(action.index)
            others = any(slot.phase is ShardPhase.RUNNING and slot.index != action.index
                         for slot in self.supervisor.slots)
            log.info("--cpu-limit %g%%: resumed shard %s (%s)", self.options.cpu_limit, self.spec(action.index),
                     f"one more fits: {self.supervisor.cpu}" if others else "no other shard was running")
        elif isinstance(action, Terminate):
            self.port.terminate(action.index)
            if action.wake:  # a stopped process cannot drain
                self.port.resume(action.index)
        elif isinstance(action, Kill):
            self.port.kill(action.index)
        else:
            raise TypeError(f"not a supervisor action: {action!r}")

    def start(self, action: Start) -> None:
        assert self.run is not None
        spec = self.spec(action.index)
        # Resume whenever the shard dir has an identity: after a restart, or when continuing a run.
        resume = self.run.shard(spec).identity.is_file()
        # Failed users are retried at a shard's first start only: a restart after a death resumes, and
        # does not run again the users that failed in this very launch.
        command = shard_command(self.options.config_path, spec, self.run.dir, resume, self.options, action.xmx,
                                self.threads, retry_failed=self.options.retry_failed and not action.restart)
        log_path = shard_log_path(self.config.output.log_dir, spec)
        pids: list[int] = []
        if not self.guarded_write(f"the log of shard {spec}", log_path.parent,
                                  lambda: pids.append(self.port.start(action.index, command, log_path))):
            self.handle(ShardExited(action.index, EXIT_STORAGE, ()))  # it never started: its slot is done
            return
        log.info("started shard %s as pid %d (%s), log %s", spec, pids[0], "resuming" if resume else "new", log_path)

    def exit_event(self, index: int, code: int, pid: int) -> ShardExited:
        """A process's exit as the supervisor's event, with the JVM crash reports that process left."""
        hs_err: tuple[str, ...] = ()
        if died_abnormally(code):
            hs_err = tuple(str(p) for p in self.run.shard(self.spec(index)).hs_err_files() if f"pid{pid}." in p.name)
        return ShardExited(index, code, hs_err)

    def request_stop(self, signum: int, _frame: object = None) -> None:
        """The signal handler: the loop hands the request to the supervisor within one turn (0.2 s)."""
        self._signals.append(StopRequested(signal.Signals(signum).name, self.clock()))

    # --- the loop -----------------------------------------------------------------------------

    def step(self) -> None:
        """One turn: stop requests, exits, then starts or the grace kill."""
        while self._signals:
            self.handle(self._signals.pop(0))
        for exited in self.port.poll():
            self.handle(self.exit_event(exited.index, exited.code, exited.pid))
        self.handle(Tick(self.clock()))

    def write_state(self) -> None:
        doc = {"pid": os.getpid(), "host": socket.gethostname(), "updated_at": utc_now(),
               "max_parallel": self.options.max_parallel, "cpu_limit": self.options.cpu_limit,
               "cpu": self.cpu_state(), "shards": [self.slot_json(slot.index) for slot in self.supervisor.slots]}
        self.guarded_write("launcher.json", self.run.dir, lambda: write_json_atomic(self.run.launcher_json, doc))

    def guarded_write(self, what: str, where: Path, write: Callable[[], object]) -> bool:
        """The launcher's own writes, through the storage guard. A storage failure (full disk, read-only
        or vanished run dir) stops the run as a stop signal would: every shard finishes its user in
        flight and exits (3, or 6 when it meets the same disk), and the launcher then exits 6 with this
        first error (launch). Nothing more is written after it. True if written."""
        if self.storage_failure is not None:
            return False
        try:
            durable_write(what, where, write, remedy=self.storage_remedy())
            return True
        except StorageError as exc:
            self.storage_failure = exc
            why = getattr(exc.__cause__, "strerror", None) or exc.__cause__
            # said in full once, as the command's error at the end; here only why the shards are stopped.
            # A drain under way goes on as it is (a second request would stop the shards at once).
            if not (self.supervisor.stopping or self.supervisor.finished):
                self.handle(StopRequested(f"cannot write {what} in {where} ({why})", self.clock()))
            return False

    def storage_remedy(self) -> Remedy:
        pilot = "" if self.options.pilot is None else f" --pilot {self.options.pilot}"
        command = (f"{self.options.invocation} --config {self.config.source} --shards {self.options.shards}"
                   f" --out {self.run.dir}{pilot}")
        return Remedy(f"continue the run (its committed users are kept): {command}", None)

    def cpu_state(self) -> dict | None:
        """--cpu-limit's limit and latest reading (launcher.json's `cpu`, for the progress line); None without it."""
        if self.options.cpu_limit is None:
            return None
        reading = self.supervisor.cpu
        return {"limit": self.options.cpu_limit, **(reading.document() if reading is not None else {})}

    def slot_json(self, index: int) -> dict:
        slot = self.supervisor.slots[index]
        return {
            "shard": str(self.spec(index)), "phase": slot.phase.value, "pid": self.port.pid(index),
            "users_total": self.users_total[index], "starts": slot.starts, "restarts": slot.restarts,
            "xmx": slot.xmx, "exits": list(slot.exits), "deaths": list(slot.deaths),
            # what the admission counted for this shard at its heap (merge_report.json's memory budget)
            "memory_budget_bytes": (None if self.options.shard_data_bytes is None
                                    else shard_memory_bytes(heap_bytes(slot.xmx), self.options.shard_data_bytes)),
        }

    def views(self) -> list[progress.ShardView]:
        now = datetime.now(timezone.utc)
        views = []
        for slot in self.supervisor.slots:
            spec = self.spec(slot.index)
            views.append(progress.read_view(str(spec), self.run.shard(spec).status, now, stale_after=120.0,
                                            launcher_phase=slot.phase.value, expected_total=self.users_total[slot.index]))
        return views

    def show_progress(self) -> None:
        views = self.views()
        if self.options.live:
            self.live.draw(views, self.options.max_parallel, self.cpu_state())
        else:
            self.out(progress.plain_line(views, self.options.max_parallel, self.cpu_state()))

    def wait(self) -> None:
        progress_every = 1.0 if self.options.live else self.options.progress_every
        last_progress = last_cpu = self.clock()
        if self.supervisor.policy.throttle is not None and self.cpu_reading is None:
            self.cpu_reading = CpuMeter(self.port.cpu_seconds, cpus=affinity(), clock=self.clock)
        while True:
            self.step()
            if self.supervisor.finished:
                break
            now = self.clock()
            if now - last_cpu >= self.options.cpu_check_every:
                if self.supervisor.policy.throttle is not None and not self.supervisor.stopping:
                    self.handle(self.cpu_reading())
                last_cpu = now
            if now - last_progress >= progress_every:
                self.show_progress()
                last_progress = now
            self.write_state()
            self.sleep(0.2)
        self.write_state()
        if self.options.live:
            self.show_progress()

    def summary(self) -> dict[str, int]:
        written = self.run.run_json.is_file() or self.storage_failure is not None
        self.out(f"run dir: {self.run.dir}" if written else "run dir: none (no shard wrote run.json)")
        codes = self.supervisor.exit_codes()
        for slot, view in zip(self.supervisor.slots, self.views()):
            spec = self.spec(slot.index)
            code = codes[str(spec)]
            log_path = shard_log_path(self.config.output.log_dir, spec)
            excerpt = shard_error_lines(log_path) if slot.exits and shows_its_error(code) else []
            stopped = self.stopped_early(slot.index, code)
            if stopped:
                excerpt = [stopped]
            restarts = f", restarted {slot.restarts}x" if slot.restarts else ""
            counts = (f" {view.done}/{view.total} users ({view.ok} ok, {view.skipped} skipped, {view.failed} failed)"
                      if view.total else "")
            said = describe_exit(code, log_hint=not excerpt) if slot.exits else "never started"
            if stopped:
                said = "stopped early: its first users all failed alike (fail fast)"
            self.out(f"  shard {spec}: {said}{restarts};{counts} log {log_path}"
                     + "".join(f"\n      {line}" for line in excerpt))
        return codes

    def stopped_early(self, index: int, code: int) -> str | None:
        """The error of a shard that exited 1 with users left (fail fast: status.json's last_error), else None."""
        if code != EXIT_USERS_FAILED:
            return None
        doc = status_document(self.run.shard(self.spec(index)).status)
        if doc.get("state") != ShardState.FAILED or not doc.get("users_todo"):
            return None
        return str(doc.get("last_error") or "")

    def resume_hint(self, config_source: Path | None, interrupted: bool = True) -> str:
        """A command that continues this run, or (nothing written yet) the one that starts it; when the
        shards were not interrupted but refused (a bad input, a full disk, ...), the same command would be
        refused again until that is fixed, and the hint says so first."""
        command = f"{self.options.invocation} --config {config_source} --shards {self.options.shards}"
        pilot = "" if self.options.pilot is None else f" --pilot {self.options.pilot}"
        if self.run.run_json.is_file():
            then = "Continue it with" if interrupted else "Once the errors above are fixed, continue it with"
            return f"the run is incomplete. {then}: {command} --out {self.run.dir}{pilot}"
        out = f" --out {self.options.out}" if self.options.out is not None else ""
        then = ("The same command starts the run" if interrupted
                else "Once the errors above are fixed, the same command starts the run")
        return f"nothing was written (no shard got as far as run.json). {then}: {command}{out}{pilot}"


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
            raise ResumeMismatch(
                f"{flag} {run.dir} was started with {started} ({shard_dir.name}/shard.json); {fix} to"
                f" continue it ({other})."
            )


def shard_error_lines(log_path: Path, tail_bytes: int = 256 * 1024) -> list[str]:
    """The lines of a shard's log that say why it stopped (policies.log_excerpt), from the log's end."""
    try:
        with open(log_path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            handle.seek(max(handle.tell() - tail_bytes, 0))
            text = handle.read().decode("utf-8", errors="replace")
    except OSError:
        return []
    return log_excerpt(text)


def admit_launch(config: RunConfig, options: LaunchOptions,
                 out: Callable[[str], None]) -> tuple[RunConfig, list[int], str, int]:
    """Refuse, before any process starts, a launch that cannot fit.

    Returns the config with its heap resolved, each shard's number of users, the data's fingerprint
    (an existing run given to --out must be of the same data) and one shard's input in memory. The
    input is read here as the shards will read it (no JVM; admission.measure_launch_data): the user
    index gives every user, the assignment, and jvm.xmx auto its value (from the task's bound of each
    user's need), and one shard's share is loaded to measure the memory its load takes.
    """
    task = load_task(config.task)
    if not config.jvm.xmx_is_auto:
        refuse_if(task.preflight(config.settings, config.jvm.xmx_bytes))  # cheap: before reading the data
    data = measure_launch_data(task, config.settings, config.jvm, options.shards, config.partition)
    given_run_dir(config, options, data.index.fingerprint)  # a run of other data: refused before the plan is shown
    if not any(where is not None and RunPaths(where).run_json.is_file() for where in (options.run_dir, options.out)):
        refuse_shards_without_users(options.shards, len(data.index.user_ids))
    at_once = min(options.shards, options.max_parallel or options.shards)
    check = check_launch(config, task, data, at_once)
    assignment = assign_index(data.index, options.shards, config.partition)
    users_per_shard = [len(users) for users in assignment]
    if options.pilot is not None:
        users_per_shard = [min(n, options.pilot) for n in users_per_shard]
    refuse_if(task.preflight(config.settings, check.heap.heap))
    if not check.ok:
        raise ConfigError(f"not starting {options.shards} shards: {check.admission.message}")
    for line in check.heap.report_lines():
        out(line)
    out(f"data per shard: {data.describe()}")
    out(f"memory: {check.admission.message}")
    return replace(config, jvm=check.heap.jvm), users_per_shard, data.index.fingerprint, data.share_bytes


def refuse_if(problems: list[str]) -> None:
    if problems:
        raise ConfigError("the configured analysis cannot run as it stands:\n  - " + "\n  - ".join(problems))


def plan_parallel(config: RunConfig, options: LaunchOptions) -> tuple[RunConfig, LaunchOptions, ParallelPlan]:
    """The shards at once on the cores available (an explicit --max-parallel wins) and their threads,
    written into the options and the config the launcher runs with."""
    cores = available_cores()
    parallel = parallel_for_cores(options.shards, cores.count, cores.describe(), config.jvm.threads,
                                  options.max_parallel)
    return (replace(config, jvm=replace(config.jvm, threads=parallel.threads)),
            replace(options, max_parallel=parallel.max_parallel), parallel)


def plan_launch(config: RunConfig, options: LaunchOptions,
                out: Callable[[str], None]) -> tuple[RunConfig, LaunchOptions, list[int], str]:
    """Everything decided before a shard starts, printed: the cores (how many shards at once, their
    threads), then the heap and the memory of that many shards at once. Refuses a launch that cannot fit."""
    given_run_dir(config, options)  # a refusal of --out/--run-dir comes before the data are read and the plan shown
    config, options, parallel = plan_parallel(config, options)
    config, users_per_shard, fingerprint, data_bytes = admit_launch(config, options, out)
    out(f"cores: {parallel.line}")
    return config, replace(options, shard_data_bytes=data_bytes), users_per_shard, fingerprint


def launch(config: RunConfig, options: LaunchOptions, out: Callable[[str], None] = print) -> LaunchResult:
    # A run that exists gets its one launcher before the data are read: a second launch_shards on a
    # running run is refused at once, with nothing else said (a new run dir appears only after every
    # check, so a new run is held once its dir is made).
    given = given_run_dir(config, options)
    early_guard = None
    if given is not None and given[1]:
        early_guard = hold_run(given[0], new_run=False, fix=follow_the_launcher(given[0]))
    launcher = None
    try:
        config, options, users_per_shard, fingerprint = plan_launch(config, options, out)
        launcher = Launcher(config, options, out, users_per_shard=users_per_shard)
        launcher.guard, early_guard = early_guard, None
        launcher.run = launcher.prepare_run_dir(fingerprint)
        launcher.hold_run()
        return run_and_merge(launcher, config, options, out)
    finally:
        if launcher is not None:
            launcher.release_run()
        if early_guard is not None:
            early_guard.release()


def run_and_merge(launcher: Launcher, config: RunConfig, options: LaunchOptions, out: Callable[[str], None]) -> LaunchResult:
    from shardrun.results.merge import merge_result_set
    from shardrun.results.validate import validation_of, write_validation

    run = launcher.run
    previous = {sig: signal.signal(sig, launcher.request_stop) for sig in STOP_SIGNALS}
    started = time.monotonic()
    try:
        out(f"starting {options.shards} shards in {run.dir}; logs in {config.output.log_dir}/shard<i>.log")
        launcher.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    shards_seconds = time.monotonic() - started
    result = LaunchResult(run_dir=run.dir, shard_codes=launcher.summary(), shards_seconds=shards_seconds,
                          max_parallel=options.max_parallel)
    result.exit_code = overall_exit(result.shard_codes)
    launcher.forget_empty_run_dir()
    if launcher.storage_failure is not None:
        raise launcher.storage_failure  # exit 6: the shards have stopped; the error says how to continue
    if result.exit_code not in (EXIT_OK, EXIT_USERS_FAILED):
        refused = result.exit_code in (EXIT_USAGE, EXIT_SHARD_LOCKED, EXIT_STORAGE)
        out(f"not merging: {launcher.resume_hint(config.source, interrupted=not refused)}")
        return result
    if options.merge:
        merged = run.merged
        remedy = launcher.storage_remedy()  # a storage failure: the same command merges again
        # the launcher owns RUN/merged
        merged_set = merge_result_set(run.shard_dirs(), merged, overwrite=True, remedy=remedy)
        report = merged_set.report
        # the frame just written, not read back
        validation = validation_of(merged, frame=merged_set.frame, max_failed=options.max_failed)
        durable_write("validation.json", merged,
                      lambda: write_validation(merged, validation.problems, verdict=validation.document()),
                      remedy=remedy)
        result.merged_dir = merged
        out(f"merged {report.rows} rows for {report.users} users into {merged}/results.csv (and .parquet)")
        # The final lines: the problems, the users by outcome, the verdict. Failed users beyond
        # --max-failed are a problem, so "validation passed" means every user counted.
        if validation.problems:
            out("validation FAILED:\n  - " + "\n  - ".join(validation.problems))
        for line in validation.lines():
            out(line)
        if validation.problems:
            out(f"validation FAILED ({len(validation.problems)} problem(s) above): {merged}/validation.json")
            result.exit_code = EXIT_VALIDATION_FAILED
        else:
            out(f"validation passed: {merged}/validation.json")
            result.exit_code = EXIT_OK  # failed users, if any, are within --max-failed
    return result
