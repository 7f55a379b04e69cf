"""Local K-process launcher behind `launch_shards` and the run_parallel_4shards scripts.

The launcher never starts a JVM: it only starts shard processes with subprocess (a fresh
interpreter each, so no JVM is ever forked), forwards SIGINT/SIGTERM to them, waits, reports
and optionally merges. Each shard runs in its own session so that a terminal's Ctrl-C reaches
the launcher alone, which then drains the shards once instead of every process getting it twice.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import IO, Callable

from shardrun import store
from shardrun.config import RunConfig
from shardrun.errors import EXIT_INTERRUPTED, EXIT_OK, EXIT_USERS_FAILED, ConfigError
from shardrun.paths import RunPaths, shard_log_path
from shardrun.shards import ShardSpec
from shardrun.task import load_task
from shardrun.worker import run_label

log = logging.getLogger(__name__)

PARENT_PID_ENV = "SHARDRUN_LAUNCHER_PID"


@dataclass(frozen=True)
class LaunchOptions:
    config_path: Path
    shards: int
    run_dir: Path | None = None  # an existing run dir: continue it (every shard resumes)
    pilot: int | None = None
    merge: bool = True
    grace_seconds: float = 120.0
    progress_every: float = 30.0


@dataclass
class ShardProcess:
    spec: ShardSpec
    process: subprocess.Popen
    log_path: Path
    log_handle: IO[bytes]
    returncode: int | None = None


@dataclass
class LaunchResult:
    run_dir: Path
    shard_codes: dict[str, int] = field(default_factory=dict)
    exit_code: int = EXIT_OK
    merged_dir: Path | None = None


def shard_command(config_path: Path, spec: ShardSpec, run_dir: Path, resume: bool, pilot: int | None) -> list[str]:
    mode = ["--full"] if pilot is None else ["--pilot", str(pilot)]
    where = ["--resume", str(run_dir)] if resume else ["--out", str(run_dir)]
    return [sys.executable, "-m", "shardrun.worker", "--config", str(config_path), *mode,
            "--shard", str(spec), *where]


def describe_exit(code: int) -> str:
    """A shard's exit status in words, with the likely cause for a death by signal."""
    if code == EXIT_OK:
        return "completed"
    if code == EXIT_USERS_FAILED:
        return "completed, some users failed (see errors.jsonl)"
    if code == EXIT_INTERRUPTED:
        return "interrupted (resume to continue)"
    if code == -signal.SIGKILL:
        return "killed by SIGKILL (likely the OOM killer: lower K or jvm.xmx, then resume)"
    if code < 0:
        return f"killed by {signal.Signals(-code).name}"
    if code == 2:
        return "refused its input (config, data or environment; see its log)"
    return f"crashed with exit code {code} (see its log; an hs_err_pid*.log next to it means the JVM crashed)"


class Launcher:
    def __init__(self, config: RunConfig, options: LaunchOptions, out: Callable[[str], None] = print):
        self.config = config
        self.options = options
        self.out = out
        self.children: list[ShardProcess] = []
        self.signals_seen = 0

    def prepare_run_dir(self) -> tuple[RunPaths, bool]:
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
            return run, True
        task = load_task(self.config.task)
        label = run_label(task, self.config, self.options.pilot)
        return RunPaths.create(self.config.output.root, label, datetime.now()), False

    def start(self, run: RunPaths, resume: bool) -> None:
        log_dir = self.config.output.log_dir
        log_dir.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, PARENT_PID_ENV: str(os.getpid())}
        for index in range(self.options.shards):
            spec = ShardSpec(index, self.options.shards)
            # A shard that never got as far as its identity has nothing to resume: start it fresh.
            shard_resume = resume and run.shard(spec).identity.is_file()
            command = shard_command(self.config.source, spec, run.dir, shard_resume, self.options.pilot)
            log_path = shard_log_path(log_dir, spec)
            handle = open(log_path, "ab")
            handle.write(f"\n=== {store.utc_now()} {' '.join(command)}\n".encode())
            handle.flush()
            process = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=handle, stderr=subprocess.STDOUT, env=env,
                start_new_session=True,
            )
            self.children.append(ShardProcess(spec, process, log_path, handle))
            log.info("started shard %s as pid %d, log %s", spec, process.pid, log_path)

    def forward(self, signum: int, _frame: object = None) -> None:
        self.signals_seen += 1
        name = signal.Signals(signum).name
        if self.signals_seen == 1:
            self.out(f"{name}: asking every shard to finish its current user and stop (again to stop at once)")
        else:
            self.out(f"{name} again: stopping every shard now")
        for child in self.children:
            if child.process.poll() is None:
                child.process.send_signal(signal.SIGTERM)

    def wait(self, run: RunPaths) -> None:
        last_report = time.monotonic()
        drain_started: float | None = None
        while any(child.process.poll() is None for child in self.children):
            time.sleep(0.2)
            if self.signals_seen and drain_started is None:
                drain_started = time.monotonic()
            if drain_started is not None and time.monotonic() - drain_started > self.options.grace_seconds:
                self.out(f"grace period of {self.options.grace_seconds:.0f} s over: killing the remaining shards")
                for child in self.children:
                    if child.process.poll() is None:
                        child.process.kill()
                drain_started = float("inf")
            if time.monotonic() - last_report >= self.options.progress_every:
                self.out(progress_line(run))
                last_report = time.monotonic()
        for child in self.children:
            child.returncode = child.process.returncode
            child.log_handle.close()

    def summary(self, run: RunPaths) -> dict[str, int]:
        codes = {}
        self.out(f"run dir: {run.dir}")
        for child in self.children:
            status_path = run.shard(child.spec).status
            counts = ""
            if status_path.is_file():
                doc = store.read_json(status_path)
                counts = (f" {doc.get('users_done')}/{doc.get('users_total')} users"
                          f" ({doc.get('users_ok')} ok, {doc.get('users_skipped')} skipped,"
                          f" {doc.get('users_failed')} failed)")
            self.out(f"  shard {child.spec}: {describe_exit(child.returncode)};{counts} log {child.log_path}")
            codes[str(child.spec)] = child.returncode
        return codes


def progress_line(run: RunPaths) -> str:
    parts = []
    for shard_dir in sorted(run.dir.glob("shard-*-of-*")):
        status_path = shard_dir / "status.json"
        if not status_path.is_file():
            parts.append(f"{shard_dir.name}: starting")
            continue
        try:
            doc = store.read_json(status_path)
        except (OSError, ValueError):
            continue  # replaced atomically, so an error here is a race with the writer: skip this tick
        eta = doc.get("eta_seconds")
        eta_text = f", ETA {eta:.0f} s" if isinstance(eta, (int, float)) else ""
        parts.append(f"{doc.get('shard')} {doc.get('users_done')}/{doc.get('users_total')}{eta_text}")
    return "progress: " + "; ".join(parts)


def overall_exit(codes: dict[str, int]) -> int:
    values = list(codes.values())
    if any(code == EXIT_INTERRUPTED for code in values):
        return EXIT_INTERRUPTED
    if any(code not in (EXIT_OK, EXIT_USERS_FAILED) for code in values):
        return max(abs(c) for c in values if c not in (EXIT_OK, EXIT_USERS_FAILED)) or 1
    return EXIT_USERS_FAILED if EXIT_USERS_FAILED in values else EXIT_OK


def launch(config: RunConfig, options: LaunchOptions, out: Callable[[str], None] = print) -> LaunchResult:
    from shardrun.merge import merge_shards
    from shardrun.validate import validate_result_set, write_validation

    task = load_task(config.task)
    problems = task.preflight(config.settings, config.jvm.xmx_bytes)
    if problems:
        raise ConfigError("the configured analysis cannot run as it stands:\n  - " + "\n  - ".join(problems))
    launcher = Launcher(config, options, out)
    run, resume = launcher.prepare_run_dir()
    previous = {sig: signal.signal(sig, launcher.forward) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        launcher.start(run, resume)
        out(f"started {options.shards} shards in {run.dir}; logs in {config.output.log_dir}/shard<i>.log")
        launcher.wait(run)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    result = LaunchResult(run_dir=run.dir, shard_codes=launcher.summary(run))
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
            result.exit_code = max(result.exit_code, 5)
        else:
            out(f"validation passed: {merged}/validation.json")
    return result


if __name__ == "__main__":
    from shardrun.cli import launch_shards_main

    sys.exit(launch_shards_main())
