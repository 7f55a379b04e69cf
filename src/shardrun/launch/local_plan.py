"""A local launch's plan: the shared plan step (plan.py), then the cores and the memory of the shards at once."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

from shardrun.config import RunConfig
from shardrun.errors import ConfigError
from shardrun.launch.admission import admit_shards, available_cores
from shardrun.launch.options import LaunchOptions
from shardrun.launch.plan import RunPlan, plan_run
from shardrun.launch.policies import ParallelPlan, parallel_for_cores
from shardrun.launch.run_dir import RunDir, given_run_dir
from shardrun.shard.prepare import assign_index


def given(config: RunConfig, options: LaunchOptions) -> RunDir:
    """The run dir --run-dir or --out names (run_dir.given_run_dir), checked before anything is read."""
    return given_run_dir(config, options.shards, options.pilot, options.out, options.run_dir, options.retry_failed)


def plan_parallel(config: RunConfig, options: LaunchOptions) -> tuple[RunConfig, LaunchOptions, ParallelPlan]:
    """Shards at once and their threads, written into the options and config the launcher runs with."""
    cores = available_cores()
    parallel = parallel_for_cores(options.shards, cores.count, cores.describe(), config.jvm.threads,
                                  options.max_parallel)
    return (replace(config, jvm=replace(config.jvm, threads=parallel.threads)),
            replace(options, max_parallel=parallel.max_parallel), parallel)


def plan_launch(config: RunConfig, options: LaunchOptions, out: Callable[[str], None],
                where: RunDir | None = None) -> tuple[RunPlan, LaunchOptions, list[int]]:
    """Print everything decided before a shard starts; refuse a launch that cannot fit."""
    where = where or given(config, options)
    config, options, parallel = plan_parallel(config, options)
    plan = plan_run(config, where, options.shards, options.pilot)
    admission = admit_shards(plan.heap, options.at_once, plan.data.share_bytes)
    if not admission.ok:
        raise ConfigError(f"not starting {options.shards} shards: {admission.message}")
    for line in plan.heap.report_lines():
        out(line)
    out(f"data per shard: {plan.data.describe()}")
    out(f"memory: {admission.message}")
    out(f"cores: {parallel.line}")
    users_per_shard = [len(users) for users in assign_index(plan.data.index, options.shards, config.partition)]
    if options.pilot is not None:
        users_per_shard = [min(n, options.pilot) for n in users_per_shard]
    return plan, replace(options, shard_data_bytes=plan.data.share_bytes), users_per_shard
