"""The local launcher's loop: the port's events in, the pure supervisor's actions carried out.
Shards run in their own process groups (Ctrl-C reaches the launcher alone) and die with the launcher."""

from __future__ import annotations

import logging
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path

from shardrun.config import RunConfig, resolve_threads
from shardrun.errors import EXIT_STORAGE, StorageError
from shardrun.launch import report
from shardrun.launch.options import LaunchOptions
from shardrun.launch.policies import died_abnormally
from shardrun.launch.processes import LocalProcesses
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
    Suspend,
    Terminate,
    Tick,
)
from shardrun.partition import ShardSpec
from shardrun.storage.durability import Remedy, durable_write
from shardrun.storage.paths import RunPaths, shard_log_path

__all__ = ["LaunchOptions", "Launcher", "shard_command"]

log = logging.getLogger(__name__)


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


class Launcher:
    """Runs the supervisor's decisions through a process port until every shard is done."""

    def __init__(self, config: RunConfig, options: LaunchOptions, run: RunPaths, out: Callable[[str], None] = print,
                 cpu_reading: Callable[[], CpuReading] | None = None, users_per_shard: list[int] | None = None,
                 port: LocalProcesses | None = None, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep):
        self.config = config
        self.options = options
        self.run = run
        self.display = report.Display(out, options)
        self.cpu_reading = cpu_reading  # --cpu-limit's meter; None: no limit
        self.port = port if port is not None else LocalProcesses()
        self.clock = clock
        self.sleep = sleep
        self.users_total: list[int | None] = [*users_per_shard] if users_per_shard else [None] * options.shards
        self.supervisor = Supervisor(options.supervisor_policy(config.jvm.xmx))
        # The CPUs are shared by the shards that run at once (auto), not by all K.
        self.threads = resolve_threads(config.jvm.threads, options.at_once)
        self._signals: list[StopRequested] = []  # stop requests from the signal handler, for the loop
        self.storage_failure: StorageError | None = None  # the launcher's own first failed write (exit 6)

    def out(self, message: str) -> None:
        self.display.say(message)

    def handle(self, event: Event) -> None:
        for action in self.supervisor.handle(event):
            self.perform(action)

    def perform(self, action: Action) -> None:
        if isinstance(action, Say):
            self.out(action.message)
            return
        spec = self.supervisor.spec(action.index)
        if isinstance(action, Start):
            self.start(action)
        elif isinstance(action, RecordDeath):
            shard = self.run.shard(spec)
            if shard.status.is_file():
                self.guarded_write(f"the death of shard {spec}", shard.dir, lambda: report.record_death(shard, action))
        elif isinstance(action, Suspend):
            self.port.suspend(action.index)
            log.info("--cpu-limit %g%%: suspended shard %s (%s)", self.options.cpu_limit, spec, self.supervisor.cpu)
        elif isinstance(action, Resume):
            self.port.resume(action.index)
            log.info("--cpu-limit %g%%: resumed shard %s (%s)", self.options.cpu_limit, spec,
                     f"one more fits: {self.supervisor.cpu}" if self.supervisor.others_running(action.index)
                     else "no other shard was running")
        elif isinstance(action, Terminate):
            self.port.terminate(action.index)
            if action.wake:  # a stopped process cannot drain
                self.port.resume(action.index)
        elif isinstance(action, Kill):
            self.port.kill(action.index)

    def start(self, action: Start) -> None:
        spec = self.supervisor.spec(action.index)
        # Resume whenever the shard dir has an identity: after a restart, or when continuing a run.
        resume = self.run.shard(spec).identity.is_file()
        # Failed users are retried at a shard's first start only, not on a restart in this launch.
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
            shard = self.run.shard(self.supervisor.spec(index))
            hs_err = tuple(str(p) for p in shard.hs_err_files() if f"pid{pid}." in p.name)
        return ShardExited(index, code, hs_err)

    def request_stop(self, signum: int, _frame: object = None) -> None:
        """The signal handler: the loop hands the request to the supervisor within one turn (0.2 s)."""
        self._signals.append(StopRequested(signal.Signals(signum).name, self.clock()))

    def step(self) -> None:
        """One turn: stop requests, exits, then starts or the grace kill."""
        while self._signals:
            self.handle(self._signals.pop(0))
        for exited in self.port.poll():
            self.handle(self.exit_event(exited.index, exited.code, exited.pid))
        self.handle(Tick(self.clock()))

    def wait(self) -> None:
        """Turn until every shard is done, reading CPU, progress and writing launcher.json on schedule."""
        progress_every = 1.0 if self.options.live else self.options.progress_every
        last_progress = last_cpu = self.clock()
        while True:
            self.step()
            if self.supervisor.finished:
                break
            now = self.clock()
            if now - last_cpu >= self.options.cpu_check_every:
                if self.supervisor.policy.throttle is not None and self.cpu_reading is not None \
                        and not self.supervisor.stopping:
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

    def views(self) -> list:
        return report.shard_views(self.run, self.supervisor, self.users_total)

    def show_progress(self) -> None:
        self.display.progress(self.views(), self.cpu_state())

    def write_state(self) -> None:
        shards = [self.slot_json(slot.index) for slot in self.supervisor.slots]
        self.guarded_write("launcher.json", self.run.dir,
                           lambda: report.write_launcher_json(self.run, self.options, self.cpu_state(), shards))

    def guarded_write(self, what: str, where: Path, write: Callable[[], object]) -> bool:
        """The launcher's own write; True if written. A storage failure drains the run as a stop signal
        would, and the launcher exits 6 (local.launch)."""
        if self.storage_failure is not None:
            return False
        try:
            durable_write(what, where, write, remedy=self.storage_remedy())
            return True
        except StorageError as exc:
            self.storage_failure = exc
            why = getattr(exc.__cause__, "strerror", None) or exc.__cause__
            # said in full once at the end; a drain under way goes on (a second request would kill).
            if not (self.supervisor.stopping or self.supervisor.finished):
                self.handle(StopRequested(f"cannot write {what} in {where} ({why})", self.clock()))
            return False

    def storage_remedy(self) -> Remedy:
        command = self.options.continue_command(self.config.source, self.run.dir)
        return Remedy(f"continue the run (its committed users are kept): {command}", None)

    def cpu_state(self) -> dict | None:
        """--cpu-limit's limit and latest reading (launcher.json's `cpu`, for the progress line); None without it."""
        if self.options.cpu_limit is None:
            return None
        reading = self.supervisor.cpu
        return {"limit": self.options.cpu_limit, **(reading.document() if reading is not None else {})}

    def slot_json(self, index: int) -> report.LauncherShard:
        slot = self.supervisor.slots[index]
        return {
            "shard": str(self.supervisor.spec(index)), "phase": slot.phase.value, "pid": self.port.pid(index),
            "users_total": self.users_total[index], "starts": slot.starts, "restarts": slot.restarts,
            "xmx": slot.xmx, "exits": list(slot.exits), "deaths": list(slot.deaths),
            "memory_budget_bytes": self.options.memory_budget_bytes(slot.xmx),
        }
