"""launch_shards --benchmark N: the same first n users (N rounded up to a multiple of K) at K=1 and K.

Results must agree value for value. The projection scales only the analysis part of the K run's
time, not start-up (scaling all of it projected 59 s for a 10 s sample run).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from shardrun.config import RunConfig
from shardrun.errors import EXIT_OK, EXIT_USERS_FAILED, EXIT_VALIDATION_FAILED, UsageError
from shardrun.launch.local import LaunchResult, launch
from shardrun.launch.options import LaunchOptions
from shardrun.launch.run_dir import benchmark_dir
from shardrun.results.frame import read_result_frame, result_differences
from shardrun.results.read import read_shard
from shardrun.results.timeline import span_table
from shardrun.storage.paths import RunPaths
from shardrun.task import load_task

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PilotUsers:
    users: int  # n, the first users of the sorted list: the --pilot of the K=1 run
    per_shard: int  # n / K: the --pilot of the K run


def pilot_users(requested: int, shards: int, users_total: int) -> PilotUsers:
    """N rounded up to a multiple of K, at most the users there are (pure)."""
    if requested < 1 or shards < 1:
        raise ValueError(f"requested users and shards must be at least 1, got {requested} and {shards}")
    users = min(math.ceil(requested / shards) * shards, users_total)
    # Fewer users than asked for: each shard's pilot need only hold its share of all of them.
    return PilotUsers(users=users, per_shard=max(1, math.ceil(users / shards)))


@dataclass(frozen=True)
class Projection:
    fixed: float  # of the K run's time: start-ups and waiting, which the full run pays the same
    analysis: float  # of the K run's time: its users' analysis, on the shards that ran at once
    scale: float  # the work of all users over the work of the pilot's users

    @property
    def seconds(self) -> float:
        return self.fixed + self.analysis * self.scale


def project(measured_seconds: float, users_seconds: float, at_once: int, pilot_work: float,
            total_work: float) -> Projection:
    """(T - A) + A x (all users' work / the pilot's), A = `users_seconds` / `at_once`, capped at T (pure)."""
    if pilot_work <= 0 or at_once < 1:
        raise ValueError(f"the pilot's work and the shards at once must be positive, got {pilot_work} and {at_once}")
    analysis = min(max(users_seconds, 0.0) / at_once, measured_seconds)
    return Projection(fixed=measured_seconds - analysis, analysis=analysis, scale=total_work / pilot_work)


@dataclass(frozen=True)
class Verdict:
    exit_code: int
    lines: list[str]


def verdict(shards: int, reference_rows: int, users: int, differences: Sequence[str]) -> Verdict:
    """Whether the K run gave K=1's numbers, in the words the benchmark prints (pure)."""
    if not differences:
        return Verdict(EXIT_OK, [f"benchmark: the numbers agree: {reference_rows} rows of {users} users, K=1 and"
                                 f" K={shards} value for value (shard, seconds and config_hash aside)"])
    return Verdict(EXIT_VALIDATION_FAILED, [
        f"benchmark FAILED: K={shards} did not give K=1's numbers for the same {users} users, though no number may"
        f" depend on K. Keep both run dirs and report it with these lines (shardrun's or the task's bug):",
        *(f"  - {line}" for line in differences)])


def run_benchmark(config: RunConfig, options: LaunchOptions, requested: int, out: Callable[[str], None] = print) -> int:
    """Run the pilot at K=1 and at options.shards, compare, report; the exit code."""
    shards = options.shards
    if shards < 2:
        raise UsageError(f"--benchmark compares K=1 with the K of --shards, which is {shards}; pass"
                         " --shards 2 or more.")
    task = load_task(config.task)
    dataset = task.load(config.settings)
    # Each user's work in sorted order: the task's time estimate, else 1 per user.
    estimates = task.user_seconds(config.settings, dataset)
    work = [float(estimates[u]) if estimates else 1.0 for u in dataset.user_ids]
    del dataset  # the runs' shards load their own copies
    chosen = pilot_users(requested, shards, len(work))
    where = benchmark_dir(config, options.out, shards, chosen.users)
    out(f"benchmark: the first {chosen.users} of {len(work)} users in sorted order"
        f"{rounding(requested, chosen, shards)}, at K=1 and at K={shards}, in {where}")
    results: list[LaunchResult] = []
    for run_k, pilot in ((1, chosen.users), (shards, chosen.per_shard)):
        out(f"benchmark: K={run_k} (--pilot {pilot}{' per shard' if run_k > 1 else ''}) in"
            f" {where / f'k{run_k}'}")
        result = launch(config, replace(options, shards=run_k, pilot=pilot, out=where / f"k{run_k}",
                                        run_dir=None, merge=True), out)
        log.info("benchmark run at K=%d: exit %d, shards' wall time %s s, run dir %s", run_k, result.exit_code,
                 None if result.shards_seconds is None else round(result.shards_seconds, 3), result.run_dir)
        if result.exit_code not in (EXIT_OK, EXIT_USERS_FAILED) or result.merged_dir is None:
            out(f"benchmark stopped: the K={run_k} run did not complete (exit {result.exit_code}; see above), so"
                " there is nothing to compare. Fix what it reports and run the benchmark again.")
            return result.exit_code
        results.append(result)
    return compare(results[0], results[1], shards, task.key_columns, work, chosen.users,
                   "users" if not estimates else "the task's per-user time estimate", out)


def compare(one: LaunchResult, many: LaunchResult, shards: int, key_columns: Sequence[str], work: list[float],
            pilot: int, work_unit: str, out: Callable[[str], None]) -> int:
    """The speedup, the verdict on the numbers and, when they agree, the full run's projected time."""
    assert one.merged_dir and many.merged_dir and one.shards_seconds is not None and many.shards_seconds is not None
    out(f"benchmark: K=1 took {one.shards_seconds:.1f} s, K={shards} took {many.shards_seconds:.1f} s"
        f" (first shard's start to last shard's exit): speedup {one.shards_seconds / many.shards_seconds:.2f}x")
    reference = read_result_frame(one.merged_dir)
    differences = result_differences(reference, read_result_frame(many.merged_dir), key_columns,
                                     names=("K=1", f"K={shards}"))
    outcome = verdict(shards, len(reference), pilot, differences)
    for line in outcome.lines:
        out(line)
    if outcome.exit_code != EXIT_OK:
        return outcome.exit_code
    at_once = min(shards, many.max_parallel or shards)
    projection = project(many.shards_seconds, users_seconds(many.run_dir), at_once, sum(work[:pilot]), sum(work))
    scaled_by = (f"{len(work)} / {pilot} users" if work_unit == "users"
                 else f"{projection.scale:.2f} ({work_unit} of all {len(work)} users over these {pilot})")
    out(f"benchmark: projected full run at K={shards}: {duration(projection.seconds)} ="
        f" {projection.fixed:.1f} s of start-up and waiting (the K={shards} run's {many.shards_seconds:.1f} s"
        f" less its analysis) + {projection.analysis:.1f} s of analysis (its users' seconds / {at_once}"
        f" shard{'s' if at_once > 1 else ''} at once) x {scaled_by}")
    return max(one.exit_code, many.exit_code)


def users_seconds(run_dir: Path) -> float:
    """The seconds a run's committed users took to analyse, summed over its shards (their `seconds`)."""
    spans = span_table([read_shard(d) for d in RunPaths(run_dir).shard_dirs()])
    return float((spans["end"] - spans["start"]).sum())


def rounding(requested: int, chosen: PilotUsers, shards: int) -> str:
    """How the users run differ from --benchmark N: all there are, or N rounded up to a multiple of K."""
    if chosen.users < requested:
        return f" (all of them: --benchmark {requested} is more than there are)"
    if chosen.users > requested:
        return (f" (--benchmark {requested} rounded up to a multiple of K={shards}, so that --pilot"
                f" {chosen.per_shard} in each of {shards} shards takes exactly these users)")
    return ""


def duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.1f} min" if seconds < 2 * 3600 else f"{seconds / 3600:.1f} h"
