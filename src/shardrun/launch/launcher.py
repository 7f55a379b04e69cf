"""Local K-process launcher behind `launch_shards` and the run_parallel_4shards scripts.

The launcher never starts a JVM: it starts shard processes with subprocess (a fresh interpreter
each, so no JVM is ever forked), watches them, and acts on the decisions of scheduling.py: start
(at most --max-parallel at once), restart by resuming (--restarts), suspend and resume
(--cpu-limit). Each shard runs in its own process group so that a terminal's Ctrl-C reaches the launcher
alone, which then drains the shards once; each shard also dies with the launcher (parent-death
signal, set by the worker; for a suspended shard, the orphaned process group's SIGHUP + SIGCONT). What the launcher knows that the shards cannot (waiting, suspended,
restarts, deaths) is written to RUN/launcher.json for `monitor_progress`.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, Callable

import psutil

from shardrun.observe import progress
from shardrun.storage import store
from shardrun.launch.admission import check_launch, measure_load
from shardrun.config import RunConfig, resolve_threads
from shardrun.storage.durability import durable_write
from shardrun.errors import EXIT_CRASH, EXIT_INTERRUPTED, EXIT_OK, EXIT_USERS_FAILED, EXIT_VALIDATION_FAILED, ConfigError
from shardrun.storage.paths import RunPaths, shard_log_path
from shardrun.launch.policies import CpuThrottle, RestartPolicy, describe_exit, died_abnormally, shards_to_start
from shardrun.sharding import ShardSpec, users_of_shard
from shardrun.storage.status import record_death
from shardrun.task import load_task
from shardrun.shard.lifecycle import LAUNCHER_PID_ENV
from shardrun.shard.prepare import run_label

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LaunchOptions:
    config_path: Path
    shards: int
    run_dir: Path | None = None  # an existing run dir: continue it (every shard resumes)
    pilot: int | None = None
    merge: bool = True
    grace_seconds: float = 120.0
    progress_every: float = 30.0
    max_parallel: int | None = None
    cpu_limit: float | None = None
    cpu_check_every: float = 2.0
    nice: int = 0
    cooldown_seconds: float = 0.0
    restart: RestartPolicy = RestartPolicy()
    live: bool = False  # redraw a table on the terminal instead of plain lines


@dataclass
class ShardSlot:
    spec: ShardSpec
    xmx: str
    users_total: int | None = None  # known before the shard writes its status (from the launcher's data load)
    phase: str = "waiting"  # waiting | running | suspended | done
    process: subprocess.Popen | None = None
    log_handle: IO[bytes] | None = None
    starts: int = 0
    started_at: float = 0.0  # monotonic time of the latest start: the throttle suspends the newest first
    restarts: int = 0
    exits: list[int] = field(default_factory=list)
    deaths: list[str] = field(default_factory=list)

    @property
    def index(self) -> int:
        return self.spec.index

    def to_json(self) -> dict:
        return {
            "shard": str(self.spec), "phase": self.phase, "pid": self.process.pid if self.process else None,
            "users_total": self.users_total, "starts": self.starts, "restarts": self.restarts, "xmx": self.xmx,
            "exits": self.exits,
            "deaths": self.deaths,
        }


@dataclass
class LaunchResult:
    run_dir: Path
    shard_codes: dict[str, int] = field(default_factory=dict)
    exit_code: int = EXIT_OK
    merged_dir: Path | None = None


def shard_command(config_path: Path, spec: ShardSpec, run_dir: Path, resume: bool, options: LaunchOptions,
                  xmx: str, threads: int) -> list[str]:
    mode = ["--full"] if options.pilot is None else ["--pilot", str(options.pilot)]
    where = ["--resume", str(run_dir)] if resume else ["--out", str(run_dir)]
    command = [sys.executable, "-m", "shardrun.worker", "--config", str(config_path), *mode, "--shard", str(spec),
               *where, "--xmx", xmx, "--threads", str(threads)]
    if options.nice:
        command += ["--nice", str(options.nice)]
    if options.cooldown_seconds:
        command += ["--cooldown", str(options.cooldown_seconds)]
    return command


def overall_exit(codes: dict[str, int]) -> int:
    """The launcher's exit: interrupted first, then any abnormal death, then the worst deliberate exit."""
    values = list(codes.values())
    if EXIT_INTERRUPTED in values:
        return EXIT_INTERRUPTED
    if any(died_abnormally(code) for code in values):
        return EXIT_CRASH
    return max(values, default=EXIT_OK)


class Launcher:
    def __init__(self, config: RunConfig, options: LaunchOptions, out: Callable[[str], None] = print,
                 cpu_percent: Callable[[], float] = lambda: psutil.cpu_percent(interval=None),
                 users_per_shard: list[int] | None = None):
        self.config = config
        self.options = options
        self._out = out
        self.cpu_percent = cpu_percent
        totals = users_per_shard or [None] * options.shards
        self.slots = [ShardSlot(ShardSpec(i, options.shards), config.jvm.xmx, users_total=totals[i])
                      for i in range(options.shards)]
        # The CPUs are shared by the shards that run at once (auto), not by all K.
        self.threads = resolve_threads(config.jvm.threads, min(options.shards, options.max_parallel or options.shards))
        self.signals_seen = 0
        self.stopping_since: float | None = None
        self.killed_after_grace = False
        self.throttle = CpuThrottle(options.cpu_limit) if options.cpu_limit else None
        self.run: RunPaths | None = None
        self.resume_all = False
        self._live_lines = 0

    def out(self, message: str) -> None:
        self._out(message)
        self._live_lines = 0  # the live table is redrawn below the message, not over it

    # --- set-up -------------------------------------------------------------------------------

    def prepare_run_dir(self) -> RunPaths:
        if self.options.run_dir is not None:
            run = RunPaths(self.options.run_dir)
            if not run.run_json.is_file():
                raise ConfigError(f"--run-dir {run.dir} has no run.json; it is not a run made by launch_shards.")
            existing = store.read_json(run.run_json)
            if existing.get("shards") != self.options.shards:
                raise ConfigError(
                    f"--run-dir {run.dir} was started with {existing.get('shards')} shards; pass --shards"
                    f" {existing.get('shards')} to continue it."
                )
            self.resume_all = True
            return run
        task = load_task(self.config.task)
        label = run_label(task, self.config, self.options.pilot)
        root = self.config.output.root
        return durable_write("a new run dir", root, lambda: RunPaths.create(root, label, datetime.now()))

    # --- actions ------------------------------------------------------------------------------

    def start(self, slot: ShardSlot) -> None:
        assert self.run is not None
        # Resume whenever the shard dir has an identity: after a restart, or when continuing a run.
        resume = self.run.shard(slot.spec).identity.is_file()
        command = shard_command(self.options.config_path, slot.spec, self.run.dir, resume, self.options, slot.xmx,
                                self.threads)
        log_dir = self.config.output.log_dir
        log_dir.mkdir(parents=True, exist_ok=True)
        log_path = shard_log_path(log_dir, slot.spec)
        slot.log_handle = open(log_path, "ab")
        slot.log_handle.write(f"\n=== {store.utc_now()} {' '.join(command)}\n".encode())
        slot.log_handle.flush()
        env = {**os.environ, LAUNCHER_PID_ENV: str(os.getpid())}
        # Its own process group, in the launcher's session: a terminal's Ctrl-C reaches the launcher
        # alone, and if the launcher dies while this shard is suspended (--cpu-limit), the group
        # becomes orphaned and the kernel sends it SIGHUP and SIGCONT, so it drains instead of
        # staying stopped forever (a stopped process cannot act on its parent-death signal).
        slot.process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=slot.log_handle,
                                        stderr=subprocess.STDOUT, env=env, process_group=0)
        slot.phase = "running"
        slot.started_at = time.monotonic()
        slot.starts += 1
        log.info("started shard %s as pid %d (%s), log %s", slot.spec, slot.process.pid,
                 "resuming" if resume else "new", log_path)

    def suspend(self, slot: ShardSlot) -> None:
        slot.process.send_signal(signal.SIGSTOP)
        slot.phase = "suspended"
        log.info("CPU above %.0f%%: suspended shard %s", self.options.cpu_limit, slot.spec)

    def resume(self, slot: ShardSlot) -> None:
        slot.process.send_signal(signal.SIGCONT)
        slot.phase = "running"
        log.info("CPU below %.0f%%: resumed shard %s", self.options.cpu_limit - self.throttle.hysteresis, slot.spec)

    def on_exit(self, slot: ShardSlot, code: int) -> None:
        slot.exits.append(code)
        slot.log_handle.close()
        shard_paths = self.run.shard(slot.spec)
        if died_abnormally(code):
            hs_err = [str(p) for p in shard_paths.hs_err_files() if f"pid{slot.process.pid}." in p.name]
            if self.killed_after_grace and code == -signal.SIGKILL:
                description = f"killed by the launcher after the --grace period of {self.options.grace_seconds:.0f} s"
            else:
                description = describe_exit(code) + (f"; JVM crash report: {', '.join(hs_err)}" if hs_err else "")
            slot.deaths.append(description)
            self.out(f"shard {slot.spec} {description}")
            if shard_paths.status.is_file():
                record_death(shard_paths, code, description, hs_err)
        if not self.stopping_since and self.options.restart.should_restart(code, slot.restarts):
            slot.xmx = self.options.restart.heap_for_restart(slot.xmx, slot.restarts)
            slot.restarts += 1
            slot.phase = "waiting"
            self.out(f"restarting shard {slot.spec} by resuming its dir (restart {slot.restarts} of"
                     f" {self.options.restart.max_restarts}, -Xmx{slot.xmx})")
        else:
            slot.phase = "done"

    def forward(self, signum: int, _frame: object = None) -> None:
        self.signals_seen += 1
        name = signal.Signals(signum).name
        if self.signals_seen == 1:
            self.stopping_since = time.monotonic()
            self.out(f"{name}: asking every shard to finish its current user and stop (again to stop at once)")
        else:
            self.out(f"{name} again: stopping every shard now")
        for slot in self.slots:
            if slot.phase == "waiting":
                slot.phase = "done"
            elif slot.phase in ("running", "suspended"):
                slot.process.send_signal(signal.SIGTERM)
                if slot.phase == "suspended":  # a stopped process cannot drain
                    slot.process.send_signal(signal.SIGCONT)
                    slot.phase = "running"

    # --- the loop -----------------------------------------------------------------------------

    def tick(self) -> None:
        for slot in self.slots:
            if slot.phase in ("running", "suspended") and slot.process.poll() is not None:
                self.on_exit(slot, slot.process.returncode)
        if self.stopping_since is None:
            waiting = [s.index for s in self.slots if s.phase == "waiting"]
            active = sum(1 for s in self.slots if s.phase in ("running", "suspended"))
            for index in shards_to_start(waiting, active, self.options.max_parallel):
                self.start(self.slots[index])
        elif (not self.killed_after_grace
              and time.monotonic() - self.stopping_since > self.options.grace_seconds):
            self.out(f"grace period of {self.options.grace_seconds:.0f} s over: killing the remaining shards")
            for slot in self.slots:
                if slot.phase in ("running", "suspended"):
                    slot.process.kill()
            self.killed_after_grace = True

    def throttle_tick(self) -> None:
        if self.throttle is None or self.stopping_since is not None:
            return
        running = sorted((s for s in self.slots if s.phase == "running"), key=lambda s: s.started_at)
        suspended = [s for s in self.slots if s.phase == "suspended"]
        decision = self.throttle.decide(self.cpu_percent(), [s.index for s in running], [s.index for s in suspended])
        if decision:
            action, index = decision
            (self.suspend if action == "suspend" else self.resume)(self.slots[index])

    def write_state(self) -> None:
        doc = {"pid": os.getpid(), "host": socket.gethostname(), "updated_at": store.utc_now(),
               "max_parallel": self.options.max_parallel, "cpu_limit": self.options.cpu_limit,
               "shards": [slot.to_json() for slot in self.slots]}
        store.write_json_atomic(self.run.launcher_json, doc)

    def views(self) -> list[progress.ShardView]:
        now = datetime.now(timezone.utc)
        views = []
        for slot in self.slots:
            status_path = self.run.shard(slot.spec).status
            doc = None
            if status_path.is_file():
                try:
                    doc = store.read_json(status_path)
                except (OSError, ValueError):
                    doc = None  # replaced atomically: an error here is a race with the writer
            views.append(progress.shard_view(str(slot.spec), doc, now, stale_after=120.0, launcher_phase=slot.phase,
                                             expected_total=slot.users_total))
        return views

    def show_progress(self) -> None:
        views = self.views()
        if self.options.live:
            lines = progress.render_table(views, self.options.max_parallel)
            clear = f"\x1b[{self._live_lines}F\x1b[J" if self._live_lines else ""
            sys.stdout.write(clear + "\n".join(lines) + "\n")
            sys.stdout.flush()
            self._live_lines = len(lines)
        else:
            self.out(progress.plain_line(views, self.options.max_parallel))

    def wait(self) -> None:
        progress_every = 1.0 if self.options.live else self.options.progress_every
        last_progress = last_cpu = time.monotonic()
        self.cpu_percent()  # the first reading only starts psutil's measuring interval
        while True:
            self.tick()
            if all(slot.phase == "done" for slot in self.slots):
                break
            now = time.monotonic()
            if now - last_cpu >= self.options.cpu_check_every:
                self.throttle_tick()
                last_cpu = now
            if now - last_progress >= progress_every:
                self.show_progress()
                last_progress = now
            self.write_state()
            time.sleep(0.2)
        self.write_state()
        if self.options.live:
            self.show_progress()

    def summary(self) -> dict[str, int]:
        codes = {}
        self.out(f"run dir: {self.run.dir}")
        for slot, view in zip(self.slots, self.views()):
            code = slot.exits[-1] if slot.exits else EXIT_INTERRUPTED
            restarts = f", restarted {slot.restarts}x" if slot.restarts else ""
            counts = (f" {view.done}/{view.total} users ({view.ok} ok, {view.skipped} skipped, {view.failed} failed)"
                      if view.total else "")
            self.out(f"  shard {slot.spec}: {describe_exit(code) if slot.exits else 'never started'}{restarts};"
                     f"{counts} log {shard_log_path(self.config.output.log_dir, slot.spec)}")
            codes[str(slot.spec)] = code
        return codes


def admit_launch(config: RunConfig, options: LaunchOptions, out: Callable[[str], None]) -> tuple[RunConfig, list[int]]:
    """Refuse, before any process starts, a launch that cannot fit.

    Returns the config with its heap resolved and each shard's number of users. The data is loaded
    once here (no JVM): it gives jvm.xmx auto its value, the per-user heap needs, the memory one
    loaded table takes in every shard, and the users of shards still waiting for the progress view.
    """
    task = load_task(config.task)
    if not config.jvm.xmx_is_auto:
        refuse_if(task.preflight(config.settings, config.jvm.xmx_bytes))  # cheap: before reading the data
    dataset, data_bytes = measure_load(task, config.settings)
    at_once = min(options.shards, options.max_parallel or options.shards)
    check = check_launch(config, task, dataset, at_once, data_bytes=data_bytes)
    users_per_shard = [len(users_of_shard(dataset.user_ids, ShardSpec(i, options.shards))) for i in range(options.shards)]
    if options.pilot is not None:
        users_per_shard = [min(n, options.pilot) for n in users_per_shard]
    del dataset  # the shards load their own copy; this one must not count against them
    refuse_if(task.preflight(config.settings, check.heap.heap))
    if not check.ok:
        raise ConfigError(f"not starting {options.shards} shards: {check.admission.message}")
    for line in check.heap.report_lines():
        out(line)
    out(f"memory: {check.admission.message}")
    return replace(config, jvm=check.heap.jvm), users_per_shard


def refuse_if(problems: list[str]) -> None:
    if problems:
        raise ConfigError("the configured analysis cannot run as it stands:\n  - " + "\n  - ".join(problems))


def launch(config: RunConfig, options: LaunchOptions, out: Callable[[str], None] = print) -> LaunchResult:
    from shardrun.results.merge import merge_shards
    from shardrun.results.validate import validate_result_set, write_validation

    config, users_per_shard = admit_launch(config, options, out)
    launcher = Launcher(config, options, out, users_per_shard=users_per_shard)
    launcher.run = run = launcher.prepare_run_dir()
    previous = {sig: signal.signal(sig, launcher.forward) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    try:
        out(f"starting {options.shards} shards in {run.dir}; logs in {config.output.log_dir}/shard<i>.log")
        launcher.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    result = LaunchResult(run_dir=run.dir, shard_codes=launcher.summary())
    result.exit_code = overall_exit(result.shard_codes)
    if result.exit_code not in (EXIT_OK, EXIT_USERS_FAILED):
        out(f"not merging: the run is incomplete. Continue it with: launch_shards --config {config.source}"
            f" --shards {options.shards} --run-dir {run.dir}")
        return result
    if options.merge:
        merged = run.merged
        report = merge_shards(run.shard_dirs(), merged)
        problems = validate_result_set(merged)
        write_validation(merged, problems)
        result.merged_dir = merged
        out(f"merged {report.rows} rows for {report.users} users into {merged}/results.csv (and .parquet)")
        if problems:
            out("validation FAILED:\n  - " + "\n  - ".join(problems))
            result.exit_code = max(result.exit_code, EXIT_VALIDATION_FAILED)
        else:
            out(f"validation passed: {merged}/validation.json")
    return result
