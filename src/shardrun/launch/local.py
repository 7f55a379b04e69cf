"""`launch_shards` on this machine: plan (plan.py, then the shards at once on the cores and in the memory),
hold the run dir, run the loop (launcher.py), then finish (finish.py)."""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from dataclasses import replace

from shardrun.config import RunConfig
from shardrun.early_signals import STOP_SIGNALS
from shardrun.errors import ConfigError
from shardrun.launch.admission import CpuMeter, admit_shards, affinity, available_cores
from shardrun.launch.finish import LaunchResult, finish
from shardrun.launch.launcher import Launcher
from shardrun.launch.options import LaunchOptions
from shardrun.launch.plan import RunPlan, plan_run
from shardrun.launch.policies import parallel_for_cores
from shardrun.launch.run_dir import HeldRun, RunDir, follow_the_launcher, given_run_dir, hold_run, open_run_dir

__all__ = ["LaunchResult", "dry_run", "launch"]


def given(config: RunConfig, options: LaunchOptions) -> RunDir:
    """The run dir --run-dir or --out names (run_dir.given_run_dir), checked before anything is read."""
    return given_run_dir(config, options.shards, options.pilot, options.out, options.run_dir, options.retry_failed)


def plan_launch(config: RunConfig, options: LaunchOptions, out: Callable[[str], None],
                where: RunDir | None = None) -> tuple[RunPlan, LaunchOptions, list[int]]:
    """Print everything decided before a shard starts; refuse a launch that cannot fit."""
    where = where or given(config, options)
    cores = available_cores()
    parallel = parallel_for_cores(options.shards, cores.count, cores.describe(), config.jvm.threads,
                                  options.max_parallel)
    config = replace(config, jvm=replace(config.jvm, threads=parallel.threads))
    options = replace(options, max_parallel=parallel.max_parallel)
    plan = plan_run(config, where, options.shards, options.pilot)
    admission = admit_shards(plan.heap, options.at_once, plan.data.share_bytes)
    if not admission.ok:
        raise ConfigError(f"not starting {options.shards} shards: {admission.message}")
    for line in [*plan.heap.report_lines(), f"data per shard: {plan.data.describe()}",
                 f"memory: {admission.message}", f"cores: {parallel.line}"]:
        out(line)
    return (plan, replace(options, shard_data_bytes=plan.data.share_bytes),
            plan.users_per_shard(options.shards, options.pilot))


def launch(config: RunConfig, options: LaunchOptions, out: Callable[[str], None] = print) -> LaunchResult:
    # An existing run is held before the data are read, so a second launch is refused at once.
    where = given(config, options)
    early_guard = (hold_run(where.run, new_run=False, fix=follow_the_launcher(where.run))
                   if where.run is not None and where.existing else None)
    held: HeldRun | None = None
    try:
        plan, options, users_per_shard = plan_launch(config, options, out, where)
        held, early_guard = open_run_dir(where, plan.config.output.root, plan.label(options.pilot), early_guard), None
        held.hold()
        launcher = Launcher(plan.config, options, held.run, out, users_per_shard=users_per_shard)
        return run_shards(launcher, held, out)
    finally:
        if held is not None:
            held.release()
        if early_guard is not None:
            early_guard.release()


def dry_run(config: RunConfig, options: LaunchOptions, out: Callable[[str], None] = print) -> int:
    """The plan, said as a launch would say it; nothing started, nothing written."""
    plan_launch(config, options, out)
    out(f"dry run: started no shard and wrote nothing; without --dry-run this starts {options.shards} shards")
    return 0


def run_shards(launcher: Launcher, held: HeldRun, out: Callable[[str], None]) -> LaunchResult:
    """The loop, with the stop signals handed to it, then the end (finish.finish)."""
    options = launcher.options
    if options.cpu_limit:
        launcher.cpu_reading = CpuMeter(launcher.port.cpu_seconds, cpus=affinity(), clock=launcher.clock)
    previous = {sig: signal.signal(sig, launcher.request_stop) for sig in STOP_SIGNALS}
    started = time.monotonic()
    try:
        out(f"starting {options.shards} shards in {held.run.dir};"
            f" logs in {launcher.config.output.log_dir}/shard<i>.log")
        launcher.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return finish(launcher, held, time.monotonic() - started, out)
