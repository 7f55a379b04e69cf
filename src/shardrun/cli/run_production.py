"""`shardrun run` (also run_production): one shard of the analysis."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from shardrun.cli import common
from shardrun.config import load_config
from shardrun.early_signals import EarlySignals
from shardrun.errors import EXIT_INTERRUPTED, UsageError
from shardrun.platforms import lower_priority
from shardrun.shard.dirs import DEFAULT_FAIL_FAST, ShardOptions, shard_of
from shardrun.shard.lifecycle import PREEMPT_SIGNALS, PreemptionNotice, StopFlag, die_with_launcher
from shardrun.shard.prepare import dry_run
from shardrun.shard.run import ShardOutcome, run_shard


def parser() -> argparse.ArgumentParser:
    p = common.command_parser("run_production", "Run one shard of the analysis: the users whose index in the sorted"
                                                " user list is i mod K.")
    p.add_argument("--config", type=Path, default=Path("config/proposal.yaml"), help="YAML config")
    mode = p.add_mutually_exclusive_group(required=True)
    mode.add_argument("--full", action="store_true", help="every user of the shard")
    mode.add_argument("--pilot", type=common.pilot_size, metavar="N", help="only the first N users of the shard")
    p.add_argument("--shard", metavar="i/K",
                   help="i/K (0 <= i < K), or 'auto' inside a job array (SLURM, SGE, LSF, PBS, HTCondor, Kubernetes,"
                        " AWS Batch, GNU parallel: docs/SCHEDULERS.md); with auto, K is the run's when --out or"
                        " --resume names an existing run")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--out", type=Path, help="run dir; the shard writes DIR/shard-<i>-of-<K>/")
    where.add_argument("--resume", type=Path, help="continue a shard dir, or a run dir (with --shard)")
    p.add_argument("--dry-run", action="store_true", help="print the plan and what cannot run, then exit")
    p.add_argument("--heartbeat", type=common.positive_seconds, default=10.0, metavar="S",
                   help="seconds between refreshes of status.json")
    p.add_argument("--retry-failed", action="store_true",
                   help="with --resume: run again the users whose committed result is 'failed'")
    p.add_argument("--fail-fast", type=common.non_negative_int, default=DEFAULT_FAIL_FAST, metavar="N",
                   help="stop the shard (exit 1, the error and its fix in the log and status.json) when its first N"
                        " users all fail with the same error class; 0: never")
    p.add_argument("--xmx", type=common.heap_size, metavar="SIZE",
                   help="override jvm.xmx (e.g. 2g, or auto: from the data); does not change the config hash")
    p.add_argument("--threads", type=common.thread_count, metavar="N",
                   help="override jvm.threads: threads driving the JVM in this process; numbers do not depend on it")
    p.add_argument("--nice", type=common.nice_level, default=0, metavar="N",
                   help="lower this process's CPU priority by N (0-19)")
    p.add_argument("--cooldown", type=common.non_negative_seconds, default=0.0, metavar="S",
                   help="pause S seconds between users")
    p.add_argument("--commit-interval", type=common.non_negative_seconds, default=1.0, metavar="S",
                   help="group commit: users that end within S seconds of the last commit are committed together,"
                        " in one file and one fsync (default 1; 0 commits every user as it ends). A crash loses at"
                        " most the users of the last S seconds, which the resume computes again")
    p.add_argument("--preempt-signal", choices=PREEMPT_SIGNALS, metavar="SIG",
                   help="the scheduler's warning signal (TERM, USR1 or USR2; sbatch --signal) ahead of a time limit or"
                        " preemption: drain within --preempt-lead, status 'preempted', requeue while users are left")
    p.add_argument("--preempt-lead", type=common.positive_seconds, default=120.0, metavar="S",
                   help="seconds between the warning signal and the scheduler's kill (sbatch --signal=...@S)")
    p.add_argument("--requeue-limit", type=common.non_negative_int, default=3, metavar="N",
                   help="after the warning signal, ask SLURM to requeue this job at most N times in all (0: never);"
                        " a preemption by SLURM (PreemptTime in its record) is requeued regardless, as SLURM would")
    return p


def _run_production(args: argparse.Namespace, early: EarlySignals | None = None) -> int:
    # Flags are checked before anything is loaded: a missing --shard must not wait for the data.
    if args.shard is None and args.resume is None:
        raise UsageError("--shard i/K is required (or --shard auto inside a scheduler job array).")
    shard = shard_of(args.shard, args.out or args.resume)
    stop = stop_flag(args, early)
    if stop is None:
        return EXIT_INTERRUPTED
    if args.retry_failed and not args.resume:
        raise UsageError("--retry-failed goes with --resume DIR: it retries the failed users of an existing shard.")
    config = load_config(args.config)
    if args.xmx:
        config = replace(config, jvm=replace(config.jvm, xmx=args.xmx))
    if args.threads:
        config = replace(config, jvm=replace(config.jvm, threads=args.threads))
    options = ShardOptions(
        shard=shard, pilot=args.pilot, out=args.out, resume=args.resume, dry_run=args.dry_run,
        heartbeat_seconds=args.heartbeat, cooldown_seconds=args.cooldown, commit_interval_seconds=args.commit_interval,
        retry_failed=args.retry_failed, fail_fast=args.fail_fast,
    )
    if args.dry_run:
        return dry_run(config, options, print)
    try:
        outcome = run_shard(config, options, stop)
    finally:
        stop.ignore_from_now()
    say_outcome(args, outcome)
    return outcome.exit_code


def stop_flag(args: argparse.Namespace, early: EarlySignals | None) -> StopFlag | None:
    """The shard's stop flag, its handlers installed (not for --dry-run), the signals noted early handed
    to it; None: a --dry-run that a signal stopped already."""
    preemption = (PreemptionNotice.named(args.preempt_signal, args.preempt_lead, args.requeue_limit)
                  if args.preempt_signal else None)
    stop = StopFlag(preemption)
    if not args.dry_run:
        stop.install(early.caught if early is not None else ())
        die_with_launcher()
        if args.nice:
            lower_priority(args.nice)
    if early is not None:
        early.release()
        if args.dry_run and early.caught:
            return None
    return stop


def say_outcome(args: argparse.Namespace, outcome: ShardOutcome) -> None:
    shard, dirs = outcome.shard.plan.shard, outcome.shard.dirs
    print(f"shard {shard} done (exit {outcome.exit_code}): {dirs.shard.dir}")
    flags = f"--config {args.config} {'--full' if args.pilot is None else f'--pilot {args.pilot}'}"
    run_production = common.command_spelling("run_production")
    if outcome.exit_code == EXIT_INTERRUPTED:
        print(f"continue it with: {run_production} {flags} --resume {dirs.shard.dir}")
    if args.out is None and args.resume is None and shard.count > 1:
        # a shard of K > 1 started without --out (by hand, as in the original workflow) made a run dir of its own
        print(f"this run dir holds shard {shard} alone; once all {shard.count} shards are done, merge them into one set"
              f" with: {common.command_spelling('merge_shard_results')} --shards"
              f" {dirs.run.dir.parent}/*/shard-*-of-{shard.count} --output DIR (the shell expands the pattern: make"
              f" sure it names one run's {shard.count} shards), or next time give every shard one run dir:"
              f" {run_production} {flags} --shard i/{shard.count} --out RUN")


def main(argv: Sequence[str] | None = None, early: EarlySignals | None = None) -> int:
    """`early`: the signals noted before this module was imported (entry.run)."""
    return common.guarded(lambda args: _run_production(args, early), parser(), argv, stop_signals_interrupt=False)
