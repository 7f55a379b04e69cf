"""launch_shards --scheduler slurm: its own flags, and the submission they make (launch/cluster.py)."""

from __future__ import annotations

import argparse

from shardrun.cli.common import non_negative_int, positive_int
from shardrun.config import load_config
from shardrun.errors import EXIT_OK, UsageError
from shardrun.launch.cluster import ClusterOptions, submit_run
from shardrun.launch.slurm_script import (
    DEFAULT_SIGNAL,
    WarningSignal,
    time_limit_seconds,
)
from shardrun.units import MIB, heap_bytes

# Flags of the local launcher only, with their defaults: given with --scheduler slurm they are refused.
LOCAL_ONLY: dict[str, object] = {"run_dir": None, "grace": 120.0, "live": None, "cpu_limit": None, "nice": 0, "cooldown": 0.0,
              "restarts": 0, "restart_heap_factor": 1.0, "threads": None, "progress_every": 30.0, "benchmark": None}
SLURM_ONLY: dict[str, object] = {"time": None, "signal": DEFAULT_SIGNAL, "cpus_per_shard": 1, "mem": None, "merge_mem": None,
              "requeue_limit": 3, "sbatch_option": [], "partition": None, "account": None, "qos": None,
              "constraint": None}


def add_slurm_flags(p: argparse.ArgumentParser) -> None:
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


def given_flags(args: argparse.Namespace, defaults: dict[str, object]) -> list[str]:
    """The flags of `defaults` given with another value than their default."""
    return [f"--{name.replace('_', '-')}" for name, default in defaults.items() if getattr(args, name) != default]


def size_mib(flag: str, text: str | None) -> int | None:
    if not text:
        return None
    try:
        return max(heap_bytes(text) // MIB, 1)
    except ValueError:
        raise UsageError(f"{flag} {text!r}: give a size such as 4g or 3500m.") from None


def submit(args: argparse.Namespace, invocation: str) -> int:
    local_flags = given_flags(args, LOCAL_ONLY)
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
    mem_mib = size_mib("--mem", args.mem)
    merge_mem_mib = size_mib("--merge-mem", args.merge_mem)
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
        invocation=invocation,
    )
    submit_run(config, options)
    return EXIT_OK
