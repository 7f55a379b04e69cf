"""`shardrun launch` (also launch_shards): K shards as local processes or a SLURM job array, then merge."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from shardrun.cli import common
from shardrun.config import load_config
from shardrun.errors import EXIT_OK, UsageError
from shardrun.launch.benchmark import run_benchmark
from shardrun.launch.cluster import ClusterOptions, submit_run
from shardrun.launch.local import dry_run, launch
from shardrun.launch.options import LaunchOptions, shards_to_launch
from shardrun.launch.policies import RestartPolicy
from shardrun.launch.slurm_script import DEFAULT_SIGNAL, WarningSignal, time_limit_seconds
from shardrun.shard.dirs import DEFAULT_FAIL_FAST

# Flags of one scheduler only: given with the other one they are refused.
LOCAL_ONLY = ("run_dir", "grace", "live", "cpu_limit", "nice", "cooldown", "restarts", "restart_heap_factor", "threads",
              "progress_every", "benchmark")
SBATCH_NAMED = ("partition", "account", "qos", "constraint")  # each passed to sbatch as is
SLURM_ONLY = ("time", "signal", "cpus_per_shard", "mem", "merge_mem", "requeue_limit", "sbatch_option", *SBATCH_NAMED)


def parser() -> argparse.ArgumentParser:
    p = common.command_parser("launch_shards",
                              "Run K shards as K local processes (or as a SLURM job array), then merge.")
    p.add_argument("--config", type=Path, default=Path("config/proposal.yaml"), help="YAML config")
    p.add_argument("--shards", type=common.positive_int, metavar="K",
                   help="number of shards (default: the K of the run --out or --run-dir names, else 4)")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--out", type=Path, metavar="DIR",
                       help="start the run in DIR, or continue it if DIR holds the same run (config, data, K)")
    where.add_argument("--run-dir", type=Path, help="continue this run (every shard resumes)")
    p.add_argument("--pilot", type=common.pilot_size, metavar="N", help="only the first N users of each shard")
    p.add_argument("--merge", action=argparse.BooleanOptionalAction, default=True,
                   help="merge and validate when every shard completed (default: yes)")
    common.add_max_failed(p)
    p.add_argument("--retry-failed", action="store_true",
                   help="with --out RUN (or --run-dir RUN) of an existing run: every shard runs again the users whose"
                        " result is 'failed' (run_production --resume --retry-failed), then the run is merged")
    p.add_argument("--fail-fast", type=common.non_negative_int, metavar="N",
                   help="a shard whose first N users all fail with the same error class stops (exit 1) instead of"
                        f" running on (default: run_production's, {DEFAULT_FAIL_FAST}); 0: never")
    add_pace_flags(p)
    p.add_argument("--dry-run", action="store_true",
                   help="print the plan and start nothing: locally the heap, the memory check and the shards at once"
                        " on the cores; with --scheduler slurm the sbatch scripts (and what is missing), submitting"
                        " nothing")
    p.add_argument("--benchmark", type=common.positive_int, metavar="N",
                   help="run the first N users (rounded up to a multiple of K) at K=1 and at K, check that both give"
                        " the same numbers, print the wall times, the speedup and the full run's projected time")
    p.add_argument("--scheduler", choices=("local", "slurm"), default="local",
                   help="local: K processes on this machine; slurm: submit a job array and a merge job"
                        " (docs/CLUSTER.md)")
    add_slurm_flags(p)
    return p


def add_pace_flags(p: argparse.ArgumentParser) -> None:
    """How the shards run: their stop, progress, share of the machine and restarts."""
    p.add_argument("--grace", type=common.non_negative_seconds, default=120.0, metavar="S",
                   help="after Ctrl-C/SIGTERM, seconds to let shards finish their user before killing them")
    p.add_argument("--progress-every", type=common.positive_seconds, default=30.0, metavar="S",
                   help="seconds between progress lines when not on a terminal")
    p.add_argument("--live", action=argparse.BooleanOptionalAction, default=None,
                   help="redraw a progress table (default: when stdout is a terminal, not TERM=dumb)")
    p.add_argument("--max-parallel", type=common.positive_int, metavar="M",
                   help="run at most M shards at a time (default: as many as the cores available hold, each shard"
                        " counting its jvm.threads; with --scheduler slurm: the array's %%M cap, default none)")
    p.add_argument("--cpu-limit", type=float, metavar="P",
                   help="suspend shards while the CPUs the run may use are more than P percent busy, down to one"
                        " running shard, never none; resume one when one more fits under P")
    p.add_argument("--nice", type=common.nice_level, default=0, metavar="N",
                   help="run shards with CPU priority lowered by N")
    p.add_argument("--threads", type=common.thread_count, metavar="N",
                   help="threads per shard (default jvm.threads; auto: the CPUs shared by the shards running at once)")
    p.add_argument("--cooldown", type=common.non_negative_seconds, default=0.0, metavar="S",
                   help="each shard pauses S seconds between users")
    p.add_argument("--commit-interval", type=common.non_negative_seconds, metavar="S",
                   help="each shard's group commit (run_production --commit-interval; default 1): the users that end"
                        " within S seconds share one batch file; raise it on a shared filesystem where file"
                        " creations are slow, 0 commits every user at once")
    p.add_argument("--restarts", type=common.non_negative_int, default=0, metavar="N",
                   help="restart a shard that died abnormally (signal, JVM crash) up to N times, by resuming it")
    p.add_argument("--restart-heap-factor", type=float, default=1.0, metavar="F",
                   help="each restart multiplies the shard's -Xmx by F (default 1: same heap)")


def add_slurm_flags(p: argparse.ArgumentParser) -> None:
    slurm = p.add_argument_group("with --scheduler slurm")
    slurm.add_argument("--time", metavar="LIMIT", help="each element's time limit (sbatch --time, e.g. 2-00:00:00)")
    slurm.add_argument("--signal", default=DEFAULT_SIGNAL, metavar="SIG@S",
                       help="the warning SLURM sends S seconds before a time limit (TERM, USR1 or USR2): the shard"
                            " drains, says preempted and requeues itself")
    slurm.add_argument("--cpus-per-shard", type=common.positive_int, default=1, metavar="N",
                       help="CPUs per element (sbatch --cpus-per-task; the shard's threads)")
    slurm.add_argument("--mem", type=common.mib_size, metavar="SIZE",
                       help="memory per element (default: heap + the JVM's overhead + the data)")
    slurm.add_argument("--merge-mem", type=common.mib_size, metavar="SIZE",
                       help="memory of the merge + validate job (default: from the users, rows and columns of the"
                            " result set)")
    slurm.add_argument("--requeue-limit", type=common.non_negative_int, default=3, metavar="N",
                       help="times an element warned of its time limit requeues itself (then resubmit with the same"
                            " command); a preemption by SLURM is requeued regardless, as SLURM would")
    for name in SBATCH_NAMED:
        slurm.add_argument(f"--{name}", help=f"sbatch --{name}")
    slurm.add_argument("--sbatch-option", action="append", default=[], metavar="OPTION",
                       help="any other sbatch option, written into the scripts as is (repeatable), e.g."
                            " --sbatch-option=--gres=tmp:10G")


def given_flags(args: argparse.Namespace, names: Sequence[str]) -> list[str]:
    """The flags of `names` given with another value than their default."""
    defaults = parser()
    return [f"--{name.replace('_', '-')}" for name in names if getattr(args, name) != defaults.get_default(name)]


def run(args: argparse.Namespace) -> int:
    """launch_shards on parsed flags (also ./run_parallel_4shards.sh's, which adds `invocation`)."""
    # the command the hints repeat, spelled so that it runs for the way this process was started
    invocation = getattr(args, "invocation", None) or common.command_spelling("launch_shards")
    args.shards = shards_to_launch(args.shards, args.out or args.run_dir)
    if args.shards < 1:
        raise UsageError(f"--shards must be at least 1, got {args.shards}.")
    if args.retry_failed and args.out is None and args.run_dir is None:
        raise UsageError("--retry-failed runs again the failed users of an existing run: pass its dir with --out RUN"
                         " (the command that started it, plus --retry-failed).")
    if args.scheduler == "slurm":
        return submit(args, invocation)
    slurm_flags = given_flags(args, SLURM_ONLY)
    if slurm_flags:
        raise UsageError(f"{', '.join(slurm_flags)} belong to --scheduler slurm; add --scheduler slurm, or drop them.")
    if args.cpu_limit is not None and not 10 < args.cpu_limit <= 100:
        raise UsageError(f"--cpu-limit is a percentage of the machine between 10 and 100, got {args.cpu_limit}.")
    if args.restart_heap_factor < 1:
        raise UsageError("--restarts must be >= 0 and --restart-heap-factor >= 1.")
    if args.benchmark is not None:
        clashing = [flag for flag, given in (("--pilot", args.pilot is not None),
                                             ("--run-dir", args.run_dir is not None), ("--no-merge", not args.merge),
                                             ("--dry-run", args.dry_run), ("--retry-failed", args.retry_failed))
                    if given]
        if clashing:
            raise UsageError(f"--benchmark runs its own pilots (the same first N users at K=1 and at K), in new run"
                             f" dirs, and merges both to compare them, so it takes no {', '.join(clashing)}; drop"
                             f" {'it' if len(clashing) == 1 else 'them'} (--out DIR names a new dir for the"
                             " benchmark).")
    config = load_config(args.config)
    if args.threads:
        config = replace(config, jvm=replace(config.jvm, threads=args.threads))
    options = LaunchOptions(
        config_path=args.config.resolve(), shards=args.shards, run_dir=args.run_dir, out=args.out, pilot=args.pilot,
        merge=args.merge, grace_seconds=args.grace, progress_every=args.progress_every,
        max_parallel=args.max_parallel, cpu_limit=args.cpu_limit, nice=args.nice, cooldown_seconds=args.cooldown,
        commit_interval_seconds=args.commit_interval, restart=RestartPolicy(args.restarts, args.restart_heap_factor),
        live=sys.stdout.isatty() and os.environ.get("TERM") != "dumb" if args.live is None else args.live,
        retry_failed=args.retry_failed, fail_fast=args.fail_fast, max_failed=args.max_failed, invocation=invocation,
    )
    if options.live:
        logging.getLogger().setLevel(logging.WARNING)  # log lines would tear the redrawn table
    if args.benchmark is not None:
        return run_benchmark(config, options, args.benchmark)
    if args.dry_run:
        return dry_run(config, options, print)
    return launch(config, options).exit_code


def submit(args: argparse.Namespace, invocation: str) -> int:
    """launch_shards --scheduler slurm: the job array and its merge job (launch/cluster.py)."""
    local_flags = given_flags(args, LOCAL_ONLY)
    if local_flags:
        raise UsageError(f"{', '.join(local_flags)} belong to --scheduler local; on SLURM the scheduler runs the shards"
                         " (drop them; --max-parallel sets the array's concurrency cap).")
    for option in args.sbatch_option:
        if not option.startswith("--") or any(option.startswith(f"--{own}") for own in
                                               ("array", "output", "signal", "requeue", "dependency", "chdir")):
            raise UsageError(f"--sbatch-option {option!r}: give a long sbatch option (--name=value) other than the ones"
                             " launch_shards writes itself (--array, --output, --signal, --requeue, --dependency,"
                             " --chdir).")
    named = [f"--{name}={getattr(args, name)}" for name in SBATCH_NAMED if getattr(args, name)]
    signal = WarningSignal.parse(args.signal)
    limit = time_limit_seconds(args.time) if args.time else None
    if limit is not None and limit <= signal.lead_seconds:
        raise UsageError(f"--time {args.time} is not longer than the warning's lead ({signal}): an element would be"
                         " warned before it starts; raise --time or shorten the lead (--signal USR1@60).")
    options = ClusterOptions(
        config_path=args.config, shards=args.shards, signal=signal, out=args.out, pilot=args.pilot,
        dry_run=args.dry_run, merge=args.merge, max_parallel=args.max_parallel, cpus=args.cpus_per_shard,
        mem_mib=args.mem, merge_mem_mib=args.merge_mem, time_limit=args.time, requeue_limit=args.requeue_limit,
        sbatch_options=(*named, *args.sbatch_option), commit_interval_seconds=args.commit_interval,
        retry_failed=args.retry_failed, fail_fast=args.fail_fast, max_failed=args.max_failed, invocation=invocation,
    )
    submit_run(load_config(args.config), options)
    return EXIT_OK


def main(argv: Sequence[str] | None = None, early: common.EarlySignals | None = None) -> int:
    return common.guarded(run, parser(), argv, early)
