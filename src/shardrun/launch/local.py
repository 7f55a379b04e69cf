"""`launch_shards` on this machine: plan, hold the run dir, run the loop (launcher.py), then finish (finish.py)."""

from __future__ import annotations

import signal
import time
from collections.abc import Callable

from shardrun.config import RunConfig
from shardrun.early_signals import STOP_SIGNALS
from shardrun.launch.cpu import CpuMeter, affinity
from shardrun.launch.finish import LaunchResult, finish
from shardrun.launch.launcher import Launcher
from shardrun.launch.local_plan import given, plan_launch
from shardrun.launch.options import LaunchOptions
from shardrun.launch.run_dir import HeldRun, follow_the_launcher, hold_run, open_run_dir

__all__ = ["LaunchResult", "dry_run", "launch"]


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
        out(f"starting {options.shards} shards in {held.run.dir}; logs in {launcher.config.output.log_dir}/shard<i>.log")
        launcher.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return finish(launcher, held, time.monotonic() - started, out)
