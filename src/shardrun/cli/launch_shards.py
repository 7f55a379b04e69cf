"""launch_shards: K shards as local processes or a SLURM job array, then merge (also `python -m shardrun.launcher`)."""

from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import replace
from pathlib import Path
from typing import Sequence

from shardrun.cli.common import (
    add_max_failed, add_verbose, command_parser, command_spelling, guarded, nice_level, non_negative_int,
    non_negative_seconds, pilot_size,
    positive_int, positive_seconds, thread_count,
)
from shardrun.config import load_config
from shardrun.early_signals import EarlySignals
from shardrun.errors import EXIT_OK, UsageError
from shardrun.launch.cluster import ClusterOptions, submit_run
from shardrun.launch.benchmark import run_benchmark
from shardrun.launch.local import launch
from shardrun.launch.local_plan import plan_launch
from shardrun.launch.options import LaunchOptions
from shardrun.launch.policies import RestartPolicy
from shardrun.launch.slurm_script import DEFAULT_SIGNAL, WarningSignal, time_limit_seconds
from shardrun.shard.fail_fast import DEFAULT_FAIL_FAST
from shardrun.units import MIB, heap_bytes

# Flags of the local launcher only, with their defaults: given with --scheduler slurm they are refused.
LOCAL_ONLY = {"run_dir": None, "grace": 120.0, "live": None, "cpu_limit": None, "nice": 0, "cooldown": 0.0,
              "restarts": 0, "restart_heap_factor": 1.0, "threads": None, "progress_every": 30.0, "benchmark": None}
SLURM_ONLY = {"time": None, "signal": DEFAULT_SIGNAL, "cpus_per_shard": 1, "mem": None, "merge_mem": None,
              "requeue_limit": 3, "sbatch_option": [], "partition": None, "account": None, "qos": None,
              "constraint": None}


def parser() -> argparse.ArgumentParser:
    p = command_parser("launch_shards", "Run K shards as K local processes (or as a SLURM job array), then merge.")
    p.add_argument("--config", type=Path, default=Path("config/proposal.yaml"), help="YAML config")
    p.add_argument("--shards", type=positive_int, default=4, metavar="K", help="number of shards")
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
                   help="redraw a progress table (default: when stdout is a terminal)")
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
    slurm = p.add_argument_group("with --scheduler slurm")
    slurm.add_argument("--time", metavar="LIMIT", help="each element's time limit (sbatch --time, e.g. 2-00:00:00)")
    slurm.add_argument("--signal", default=DEFAULT_SIGNAL, metavar="SIG@S",
                       help="the warning SLURM sends S seconds before a time limit (TERM, USR1 or USR2): the shard drains,"
                            " says preempted and requeues itself")
    slurm.add_argument("--cpus-per-shard", type=positive_int, default=1, metavar="N",
                       help="CPUs per element (sbatch --cpus-per-task; the shard's threads)")
    slurm.add_argument("--mem", metavar="SIZE", help="memory per element (default: heap + the JVM's overhead + the data)")
    slurm.add_argument("--merge-mem", metavar="SIZE",
                       help="memory of the merge + validate job (default: from the users, rows and columns of the result set)")
    slurm.add_argument("--requeue-limit", type=non_negative_int, default=3, metavar="N",
                       help="times an element warned of its time limit requeues itself (then resubmit with the same"
                            " command); a preemption by SLURM is requeued regardless, as SLURM would")
    slurm.add_argument("--partition", help="sbatch --partition")
    slurm.add_argument("--account", help="sbatch --account")
    slurm.add_argument("--qos", help="sbatch --qos")
    slurm.add_argument("--constraint", help="sbatch --constraint")
    slurm.add_argument("--sbatch-option", action="append", default=[], metavar="OPTION",
                       help="any other sbatch option, written into the scripts as is (repeatable), e.g. --sbatch-option=--gres=tmp:10G")
    add_verbose(p)
    return p


def _given(args: argparse.Namespace, defaults: dict) -> list[str]:
    return [f"--{name.replace('_', '-')}" for name, default in defaults.items() if getattr(args, name) != default]


def _size_mib(flag: str, text: str | None) -> int | None:
    if not text:
        return None
    try:
        return max(heap_bytes(text) // MIB, 1)
    except ValueError:
        raise UsageError(f"{flag} {text!r}: give a size such as 4g or 3500m.") from None


def _submit(args: argparse.Namespace) -> int:
    local_flags = _given(args, LOCAL_ONLY)
    if local_flags:
        raise UsageError(f"{', '.join(local_flags)} belong to --scheduler local; on SLURM the scheduler runs the shards"
                         " (drop them; --max-parallel sets the array's concurrency cap).")
    for option in args.sbatch_option:
        if not option.startswith("--") or any(option.startswith(f"--{own}") for own in
                                               ("array", "output", "signal", "requeue", "dependency", "chdir")):
            raise UsageError(f"--sbatch-option {option!r}: give a long sbatch option (--name=value) other than the ones"
                             " launch_shards writes itself (--array, --output, --signal, --requeue, --dependency, --chdir).")
    named = [f"--{name}={getattr(args, name)}" for name in ("partition", "account", "qos", "constraint")
             if getattr(args, name)]
    mem_mib = _size_mib("--mem", args.mem)
    merge_mem_mib = _size_mib("--merge-mem", args.merge_mem)
    signal = WarningSignal.parse(args.signal)
    limit = time_limit_seconds(args.time) if args.time else None
    if limit is not None and limit <= signal.lead_seconds:
        raise UsageError(f"--time {args.time} is not longer than the warning's lead ({signal}): an element would be warned"
                         " before it starts; raise --time or shorten the lead (--signal USR1@60).")
    config = load_config(args.config)
    options = ClusterOptions(
        config_path=args.config, shards=args.shards, signal=signal, out=args.out,
        pilot=args.pilot, dry_run=args.dry_run, merge=args.merge, max_parallel=args.max_parallel,
        cpus=args.cpus_per_shard, mem_mib=mem_mib, merge_mem_mib=merge_mem_mib, time_limit=args.time, requeue_limit=args.requeue_limit,
        sbatch_options=(*named, *args.sbatch_option), commit_interval_seconds=args.commit_interval,
        retry_failed=args.retry_failed, fail_fast=args.fail_fast, max_failed=args.max_failed,
        invocation=invocation(args),
    )
    submit_run(config, options)
    return EXIT_OK


def invocation(args: argparse.Namespace) -> str:
    """The command the hints repeat: ./run_parallel_4shards.sh's name when it ran this, else launch_shards
    spelled so that it runs for the way this process was started."""
    return getattr(args, "invocation", None) or command_spelling("launch_shards")


def run(args: argparse.Namespace) -> int:
    """launch_shards on parsed flags (also ./run_parallel_4shards.sh's, which adds `invocation`)."""
    if args.shards < 1:
        raise UsageError(f"--shards must be at least 1, got {args.shards}.")
    if args.retry_failed and args.out is None and args.run_dir is None:
        raise UsageError("--retry-failed runs again the failed users of an existing run: pass its dir with --out RUN"
                         " (the command that started it, plus --retry-failed).")
    if args.scheduler == "slurm":
        return _submit(args)
    slurm_flags = _given(args, SLURM_ONLY)
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
        live=sys.stdout.isatty() if args.live is None else args.live,
        retry_failed=args.retry_failed, fail_fast=args.fail_fast, max_failed=args.max_failed,
        invocation=invocation(args),
    )
    if options.live:
        logging.getLogger().setLevel(logging.WARNING)  # log lines would tear the redrawn table
    if args.benchmark is not None:
        return run_benchmark(config, options, args.benchmark)
    if args.dry_run:
        plan_launch(config, options, print)
        print(f"dry run: started no shard and wrote nothing; without --dry-run this starts {args.shards} shards")
        return 0
    return launch(config, options).exit_code


def main(argv: Sequence[str] | None = None, early: EarlySignals | None = None) -> int:
    return guarded(run, parser(), argv, early)
