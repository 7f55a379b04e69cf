"""`shardrun launch` (also launch_shards): K shards as local processes or a SLURM job array, then merge."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from shardrun.cli.common import (
    add_max_failed,
    add_verbose,
    command_parser,
    command_spelling,
    guarded,
    nice_level,
    non_negative_int,
    non_negative_seconds,
    pilot_size,
    positive_int,
    positive_seconds,
    thread_count,
)
from shardrun.cli.launch_slurm import SLURM_ONLY, add_slurm_flags, given_flags, submit
from shardrun.config import load_config
from shardrun.early_signals import EarlySignals
from shardrun.errors import UsageError
from shardrun.launch.benchmark import run_benchmark
from shardrun.launch.local import dry_run, launch
from shardrun.launch.options import LaunchOptions, shards_to_launch
from shardrun.launch.policies import RestartPolicy
from shardrun.shard.dirs import DEFAULT_FAIL_FAST


def parser() -> argparse.ArgumentParser:
    p = command_parser("launch_shards", "Run K shards as K local processes (or as a SLURM job array), then merge.")
    p.add_argument("--config", type=Path, default=Path("config/proposal.yaml"), help="YAML config")
    p.add_argument("--shards", type=positive_int, metavar="K",
                   help="number of shards (default: the K of the run --out or --run-dir names, else 4)")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--out", type=Path, metavar="DIR",
                       help="start the run in DIR, or continue it if DIR holds the same run (config, data, K)")
    where.add_argument("--run-dir", type=Path, help="continue this run (every shard resumes)")
    p.add_argument("--pilot", type=pilot_size, metavar="N", help="only the first N users of each shard")
    p.add_argument("--merge", action=argparse.BooleanOptionalAction, default=True,
                   help="merge and validate when every shard completed (default: yes)")
    add_max_failed(p)
    p.add_argument("--retry-failed", action="store_true",
                   help="with --out RUN (or --run-dir RUN) of an existing run: every shard runs again the users whose"
                        " result is 'failed' (run_production --resume --retry-failed), then the run is merged")
    p.add_argument("--fail-fast", type=non_negative_int, metavar="N",
                   help="a shard whose first N users all fail with the same error class stops (exit 1) instead of"
                        f" running on (default: run_production's, {DEFAULT_FAIL_FAST}); 0: never")
    p.add_argument("--grace", type=non_negative_seconds, default=120.0, metavar="S",
                   help="after Ctrl-C/SIGTERM, seconds to let shards finish their user before killing them")
    p.add_argument("--progress-every", type=positive_seconds, default=30.0, metavar="S",
                   help="seconds between progress lines when not on a terminal")
    p.add_argument("--live", action=argparse.BooleanOptionalAction, default=None,
                   help="redraw a progress table (default: when stdout is a terminal, not TERM=dumb)")
    p.add_argument("--max-parallel", type=positive_int, metavar="M",
                   help="run at most M shards at a time (default: as many as the cores available hold, each shard"
                        " counting its jvm.threads; with --scheduler slurm: the array's %%M cap, default none)")
    p.add_argument("--cpu-limit", type=float, metavar="P",
                   help="suspend shards while the CPUs the run may use are more than P percent busy, down to one"
                        " running shard, never none; resume one when one more fits under P")
    p.add_argument("--nice", type=nice_level, default=0, metavar="N", help="run shards with CPU priority lowered by N")
    p.add_argument("--threads", type=thread_count, metavar="N",
                   help="threads per shard (default jvm.threads; auto: the CPUs shared by the shards running at once)")
    p.add_argument("--cooldown", type=non_negative_seconds, default=0.0, metavar="S", help="each shard pauses S seconds between users")
    p.add_argument("--commit-interval", type=non_negative_seconds, metavar="S",
                   help="each shard's group commit (run_production --commit-interval; default 1): the users that end"
                        " within S seconds share one batch file; raise it on a shared filesystem where file"
                        " creations are slow, 0 commits every user at once")
    p.add_argument("--restarts", type=non_negative_int, default=0, metavar="N",
                   help="restart a shard that died abnormally (signal, JVM crash) up to N times, by resuming it")
    p.add_argument("--restart-heap-factor", type=float, default=1.0, metavar="F",
                   help="each restart multiplies the shard's -Xmx by F (default 1: same heap)")
    p.add_argument("--dry-run", action="store_true",
                   help="print the plan and start nothing: locally the heap, the memory check and the shards at once"
                        " on the cores; with --scheduler slurm the sbatch scripts (and what is missing), submitting nothing")
    p.add_argument("--benchmark", type=positive_int, metavar="N",
                   help="run the first N users (rounded up to a multiple of K) at K=1 and at K, check that both give the"
                        " same numbers, print the wall times, the speedup and the full run's projected time")
    p.add_argument("--scheduler", choices=("local", "slurm"), default="local",
                   help="local: K processes on this machine; slurm: submit a job array and a merge job (docs/CLUSTER.md)")
    add_slurm_flags(p)
    add_verbose(p)
    return p


def invocation(args: argparse.Namespace) -> str:
    """The command the hints repeat: ./run_parallel_4shards.sh's name when it ran this, else launch_shards
    spelled so that it runs for the way this process was started."""
    return getattr(args, "invocation", None) or command_spelling("launch_shards")


def run(args: argparse.Namespace) -> int:
    """launch_shards on parsed flags (also ./run_parallel_4shards.sh's, which adds `invocation`)."""
    args.shards = shards_to_launch(args.shards, args.out or args.run_dir)
    if args.shards < 1:
        raise UsageError(f"--shards must be at least 1, got {args.shards}.")
    if args.retry_failed and args.out is None and args.run_dir is None:
        raise UsageError("--retry-failed runs again the failed users of an existing run: pass its dir with --out RUN"
                         " (the command that started it, plus --retry-failed).")
    if args.scheduler == "slurm":
        return submit(args, invocation(args))
    slurm_flags = given_flags(args, SLURM_ONLY)
    if slurm_flags:
        raise UsageError(f"{', '.join(slurm_flags)} belong to --scheduler slurm; add --scheduler slurm, or drop them.")
    if args.max_parallel is not None and args.max_parallel < 1:
        raise UsageError(f"--max-parallel must be at least 1, got {args.max_parallel}.")
    if args.cpu_limit is not None and not 10 < args.cpu_limit <= 100:
        raise UsageError(f"--cpu-limit is a percentage of the machine between 10 and 100, got {args.cpu_limit}.")
    if args.restarts < 0 or args.restart_heap_factor < 1:
        raise UsageError("--restarts must be >= 0 and --restart-heap-factor >= 1.")
    if args.benchmark is not None:
        clashing = [flag for flag, given in (("--pilot", args.pilot is not None), ("--run-dir", args.run_dir is not None),
                                             ("--no-merge", not args.merge), ("--dry-run", args.dry_run),
                                             ("--retry-failed", args.retry_failed)) if given]
        if clashing:
            raise UsageError(f"--benchmark runs its own pilots (the same first N users at K=1 and at K), in new run dirs,"
                             f" and merges both to compare them, so it takes no {', '.join(clashing)}; drop"
                             f" {'it' if len(clashing) == 1 else 'them'} (--out DIR names a new dir for the benchmark).")
    config = load_config(args.config)
    if args.threads:
        config = replace(config, jvm=replace(config.jvm, threads=args.threads))
    options = LaunchOptions(
        config_path=args.config.resolve(), shards=args.shards, run_dir=args.run_dir, out=args.out, pilot=args.pilot,
        merge=args.merge, grace_seconds=args.grace, progress_every=args.progress_every,
        max_parallel=args.max_parallel, cpu_limit=args.cpu_limit, nice=args.nice, cooldown_seconds=args.cooldown,
        commit_interval_seconds=args.commit_interval,
        restart=RestartPolicy(args.restarts, args.restart_heap_factor),
        live=sys.stdout.isatty() and os.environ.get("TERM") != "dumb" if args.live is None else args.live,
        retry_failed=args.retry_failed, fail_fast=args.fail_fast, max_failed=args.max_failed,
        invocation=invocation(args),
    )
    if options.live:
        logging.getLogger().setLevel(logging.WARNING)  # log lines would tear the redrawn table
    if args.benchmark is not None:
        return run_benchmark(config, options, args.benchmark)
    if args.dry_run:
        return dry_run(config, options, print)
    return launch(config, options).exit_code


def main(argv: Sequence[str] | None = None, early: EarlySignals | None = None) -> int:
    return guarded(run, parser(), argv, early)
