"""run_production: one shard of the analysis (also `python -m shardrun.worker`)."""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path
from typing import Sequence

from shardrun.cli.common import guarded, heap_size, pilot_size, thread_count
from shardrun.config import load_config
from shardrun.platforms import lower_priority
from shardrun.errors import EXIT_OK, EXIT_USAGE, UsageError
from shardrun.shard.lifecycle import StopFlag, die_with_launcher
from shardrun.shard.prepare import WorkerOptions, prepare
from shardrun.shard.run import run_shard
from shardrun.sharding import ShardSpec


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="run_production",
        description="Run one shard of the analysis: the users whose index in the sorted user list is i mod K.",
    )
    p.add_argument("--config", type=Path, required=True, help="YAML config (see config/proposal.yaml)")
    mode = p.add_mutually_exclusive_group(required=True)
    mode.add_argument("--full", action="store_true", help="every user of the shard")
    mode.add_argument("--pilot", type=pilot_size, metavar="N", help="only the first N users of the shard")
    p.add_argument("--shard", help="i/K (0 <= i < K), or 'auto' inside a SLURM/SGE/PBS job array")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--out", type=Path, help="run dir; the shard writes DIR/shard-<i>-of-<K>/")
    where.add_argument("--resume", type=Path, help="continue a shard dir, or a run dir (with --shard)")
    p.add_argument("--dry-run", action="store_true", help="print the plan and what cannot run, then exit")
    p.add_argument("--heartbeat", type=float, default=10.0, metavar="S", help="status.json refresh period")
    p.add_argument("--retry-failed", action="store_true",
                   help="with --resume: run again the users whose committed result is 'failed'")
    p.add_argument("--xmx", type=heap_size, metavar="SIZE", help="override jvm.xmx (e.g. 2g); does not change the config hash")
    p.add_argument("--threads", type=thread_count, metavar="N",
                   help="override jvm.threads: threads driving the JVM in this process; numbers do not depend on it")
    p.add_argument("--nice", type=int, default=0, metavar="N", help="lower this process's CPU priority by N (0-19)")
    p.add_argument("--cooldown", type=float, default=0.0, metavar="S", help="pause S seconds between users")
    p.add_argument("-v", "--verbose", action="store_true")
    return p


def _run_production(args: argparse.Namespace) -> int:
    stop = StopFlag()
    if not args.dry_run:
        stop.install()
        die_with_launcher()
        if args.nice:
            lower_priority(args.nice)
    if args.retry_failed and not args.resume:
        raise UsageError("--retry-failed goes with --resume DIR: it retries the failed users of an existing shard.")
    config = load_config(args.config)
    if args.xmx:
        config = replace(config, jvm=replace(config.jvm, xmx=args.xmx))
    if args.threads:
        config = replace(config, jvm=replace(config.jvm, threads=args.threads))
    options = WorkerOptions(
        shard=ShardSpec.parse(args.shard) if args.shard else None,
        pilot=args.pilot,
        out=args.out,
        resume=args.resume,
        dry_run=args.dry_run,
        heartbeat_seconds=args.heartbeat,
        cooldown_seconds=args.cooldown,
        retry_failed=args.retry_failed,
    )
    if args.dry_run:
        prepared = prepare(config, options)
        plan = prepared.plan
        print(f"shard {plan.shard}: {len(plan.assigned)} users assigned, {len(plan.done)} already done,"
              f" {len(plan.todo)} to do")
        print(f"shard dir: {prepared.dirs.shard.dir}")
        print(f"jvm: {prepared.heap.jvm_line()}")
        for line in prepared.heap.report_lines():
            print(line)
        for problem in prepared.problems:
            print(f"cannot run: {problem}")
        if not prepared.problems:
            print("preflight: the task found nothing that cannot run with this heap")
        return EXIT_USAGE if prepared.problems else EXIT_OK
    outcome = run_shard(config, options, stop)
    print(f"shard {outcome.plan.shard} done (exit {outcome.exit_code}): {outcome.dirs.shard.dir}")
    return outcome.exit_code


def main(argv: Sequence[str] | None = None) -> int:
    return guarded(_run_production, parser(), argv)


if __name__ == "__main__":
    raise SystemExit(main())
