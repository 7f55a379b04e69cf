"""Thin argparse entry points: parse flags, call the module that does the work, map errors to exits."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Callable, Sequence

from shardrun.errors import EXIT_OK, EXIT_USAGE, EXIT_VALIDATION_FAILED, ShardrunError, UsageError

log = logging.getLogger("shardrun")


def _guarded(main: Callable[[argparse.Namespace], int], parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> int:
    from shardrun.worker import configure_logging

    args = parser.parse_args(argv)
    configure_logging(getattr(args, "verbose", False))
    try:
        return main(args)
    except ShardrunError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code


def _pilot_size(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("--pilot takes a positive number of users")
    return value


# --- run_production -------------------------------------------------------------------------


def run_production_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="run_production",
        description="Run one shard of the analysis: the users whose index in the sorted user list is i mod K.",
    )
    p.add_argument("--config", type=Path, required=True, help="YAML config (see config/proposal.yaml)")
    mode = p.add_mutually_exclusive_group(required=True)
    mode.add_argument("--full", action="store_true", help="every user of the shard")
    mode.add_argument("--pilot", type=_pilot_size, metavar="N", help="only the first N users of the shard")
    p.add_argument("--shard", help="i/K (0 <= i < K), or 'auto' inside a SLURM/SGE/PBS job array")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--out", type=Path, help="run dir; the shard writes DIR/shard-<i>-of-<K>/")
    where.add_argument("--resume", type=Path, help="continue a shard dir, or a run dir (with --shard)")
    p.add_argument("--dry-run", action="store_true", help="print the plan and what cannot run, then exit")
    p.add_argument("--heartbeat", type=float, default=10.0, metavar="S", help="status.json refresh period")
    p.add_argument("-v", "--verbose", action="store_true")
    return p


def _run_production(args: argparse.Namespace) -> int:
    from shardrun.config import load_config
    from shardrun.shards import ShardSpec
    from shardrun.worker import StopFlag, WorkerOptions, run_shard

    stop = StopFlag()
    if not args.dry_run:
        stop.install()
    config = load_config(args.config)
    options = WorkerOptions(
        shard=ShardSpec.parse(args.shard) if args.shard else None,
        pilot=args.pilot,
        out=args.out,
        resume=args.resume,
        dry_run=args.dry_run,
        heartbeat_seconds=args.heartbeat,
    )
    outcome = run_shard(config, options, stop)
    if args.dry_run:
        plan = outcome.plan
        print(f"shard {plan.shard}: {len(plan.assigned)} users assigned, {len(plan.done)} already done,"
              f" {len(plan.todo)} to do")
        print(f"shard dir: {outcome.dirs.shard.dir}")
        print(f"jvm: {' '.join(config.jvm.jvm_args())}")
        for problem in outcome.problems:
            print(f"cannot run: {problem}")
        if not outcome.problems:
            print("every configured (feature mode, k) fits the JVM heap")
    else:
        print(f"shard {outcome.plan.shard} done (exit {outcome.exit_code}): {outcome.dirs.shard.dir}")
    return outcome.exit_code


def run_production_main(argv: Sequence[str] | None = None) -> int:
    return _guarded(_run_production, run_production_parser(), argv)


# --- launch_shards --------------------------------------------------------------------------


def launch_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="launch_shards", description="Run K shards as K local processes, then merge.")
    p.add_argument("--config", type=Path, default=Path("config/proposal.yaml"))
    p.add_argument("--shards", type=int, default=4, metavar="K")
    p.add_argument("--run-dir", type=Path, help="continue this run (every shard resumes)")
    p.add_argument("--pilot", type=_pilot_size, metavar="N", help="only the first N users of each shard")
    p.add_argument("--merge", action=argparse.BooleanOptionalAction, default=True,
                   help="merge and validate when every shard completed (default: yes)")
    p.add_argument("--grace", type=float, default=120.0, metavar="S",
                   help="after Ctrl-C/SIGTERM, seconds to let shards finish their user before killing them")
    p.add_argument("--progress-every", type=float, default=30.0, metavar="S")
    p.add_argument("-v", "--verbose", action="store_true")
    return p


def _launch(args: argparse.Namespace) -> int:
    from shardrun.config import load_config
    from shardrun.launcher import LaunchOptions, launch

    if args.shards < 1:
        raise UsageError(f"--shards must be at least 1, got {args.shards}.")
    config = load_config(args.config)
    options = LaunchOptions(
        config_path=args.config.resolve(), shards=args.shards, run_dir=args.run_dir, pilot=args.pilot,
        merge=args.merge, grace_seconds=args.grace, progress_every=args.progress_every,
    )
    return launch(config, options).exit_code


def launch_shards_main(argv: Sequence[str] | None = None) -> int:
    return _guarded(_launch, launch_parser(), argv)


# --- merge_shard_results --------------------------------------------------------------------


def merge_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="merge_shard_results", description="Merge shard dirs into one result set.")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--shards", type=Path, nargs="+", metavar="DIR", help="shard dirs (any runs)")
    source.add_argument("--run", type=Path, metavar="DIR", help="a run dir: all its shards")
    p.add_argument("--output", type=Path, required=True, metavar="DIR")
    p.add_argument("--force", action="store_true", help="merge shards of different config hashes anyway")
    p.add_argument("-v", "--verbose", action="store_true")
    return p


def _merge(args: argparse.Namespace) -> int:
    from shardrun.merge import merge_shards, shard_dirs_of_run

    dirs = shard_dirs_of_run(args.run) if args.run else list(args.shards)
    report = merge_shards(dirs, args.output, force=args.force)
    print(f"merged {report.rows} rows for {report.users} users from {len(dirs)} shard dirs into {args.output}")
    for line in report.problem_lines():
        print(f"  - {line}")
    return EXIT_OK if report.complete else EXIT_VALIDATION_FAILED


def merge_main(argv: Sequence[str] | None = None) -> int:
    return _guarded(_merge, merge_parser(), argv)


# --- validate_outputs -----------------------------------------------------------------------


def validate_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="validate_outputs", description="Check that a merged result set is whole and sane.")
    p.add_argument("--dir", type=Path, required=True, help="a merged dir (with results.parquet or results.csv)")
    p.add_argument("--config", type=Path, help="check coverage against this config's input data")
    p.add_argument("-v", "--verbose", action="store_true")
    return p


def _validate(args: argparse.Namespace) -> int:
    from shardrun.config import load_config
    from shardrun.validate import validate_result_set, write_validation

    config = load_config(args.config) if args.config else None
    problems = validate_result_set(args.dir, config)
    write_validation(args.dir, problems)
    if problems:
        print(f"{args.dir}: {len(problems)} problem(s):")
        for problem in problems:
            print(f"  - {problem}")
        return EXIT_VALIDATION_FAILED
    print(f"{args.dir}: valid")
    return EXIT_OK


def validate_main(argv: Sequence[str] | None = None) -> int:
    return _guarded(_validate, validate_parser(), argv)


# --- monitor_progress -----------------------------------------------------------------------


def monitor_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="monitor_progress", description="Show the progress of runs from their status.json files.")
    p.add_argument("runs", type=Path, nargs="*", help="run dirs (default: the newest under analysis/out)")
    p.add_argument("--watch", action="store_true", help="refresh until every shard has ended")
    p.add_argument("--every", type=float, default=5.0, metavar="S")
    p.add_argument("--stale-after", type=float, default=120.0, metavar="S",
                   help="a running shard whose heartbeat is older than this is shown as dead")
    p.add_argument("-v", "--verbose", action="store_true")
    return p


def _monitor(args: argparse.Namespace) -> int:
    from shardrun.monitor import watch

    return watch(args.runs, watch=args.watch, every=args.every, stale_after=args.stale_after)


def monitor_main(argv: Sequence[str] | None = None) -> int:
    return _guarded(_monitor, monitor_parser(), argv)


if __name__ == "__main__":  # pragma: no cover
    print("use the console scripts, or python -m shardrun.<worker|launcher|merge|validate|monitor>", file=sys.stderr)
    sys.exit(EXIT_USAGE)
