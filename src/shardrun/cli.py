"""Thin argparse entry points: parse flags, call the module that does the work, map errors to exits."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from dataclasses import replace
from pathlib import Path
from typing import Callable, Sequence

from shardrun.errors import EXIT_CRASH, EXIT_OK, EXIT_USAGE, EXIT_VALIDATION_FAILED, ShardrunError, UsageError

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
    except Exception:  # not swallowed: logged with its traceback, and a distinct exit code for the launcher
        log.exception("unexpected error; please report it with this traceback")
        return EXIT_CRASH


def _heap_size(text: str) -> str:
    from shardrun.config import heap_bytes

    try:
        heap_bytes(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a JVM heap size such as 512m or 2g") from None
    return text


def _thread_count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"--threads takes a positive number of threads, got {text!r}")
    return value


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
    p.add_argument("--retry-failed", action="store_true",
                   help="with --resume: run again the users whose committed result is 'failed'")
    p.add_argument("--xmx", type=_heap_size, metavar="SIZE", help="override jvm.xmx (e.g. 2g); does not change the config hash")
    p.add_argument("--threads", type=_thread_count, metavar="N",
                   help="override jvm.threads: threads driving the JVM in this process; numbers do not depend on it")
    p.add_argument("--nice", type=int, default=0, metavar="N", help="lower this process's CPU priority by N (0-19)")
    p.add_argument("--cooldown", type=float, default=0.0, metavar="S", help="pause S seconds between users")
    p.add_argument("-v", "--verbose", action="store_true")
    return p


def _run_production(args: argparse.Namespace) -> int:
    from shardrun.config import load_config
    from shardrun.shards import ShardSpec
    from shardrun.worker import StopFlag, WorkerOptions, die_with_launcher, prepare, run_shard

    stop = StopFlag()
    if not args.dry_run:
        stop.install()
        die_with_launcher()
        if args.nice:
            os.nice(args.nice)
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
            print("every configured (feature mode, k) fits the JVM heap")
        return EXIT_USAGE if prepared.problems else EXIT_OK
    outcome = run_shard(config, options, stop)
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
    p.add_argument("--progress-every", type=float, default=30.0, metavar="S",
                   help="seconds between progress lines when not on a terminal")
    p.add_argument("--live", action=argparse.BooleanOptionalAction, default=None,
                   help="redraw a progress table (default: when stdout is a terminal)")
    p.add_argument("--max-parallel", type=int, metavar="M", help="run at most M shards at a time")
    p.add_argument("--cpu-limit", type=float, metavar="P",
                   help="suspend shards while the machine's CPU use is above P percent (resume below P-10)")
    p.add_argument("--nice", type=int, default=0, metavar="N", help="run shards with CPU priority lowered by N")
    p.add_argument("--threads", type=_thread_count, metavar="N",
                   help="threads per shard (default jvm.threads; auto: the CPUs shared by the shards running at once)")
    p.add_argument("--cooldown", type=float, default=0.0, metavar="S", help="each shard pauses S seconds between users")
    p.add_argument("--restarts", type=int, default=0, metavar="N",
                   help="restart a shard that died abnormally (signal, JVM crash) up to N times, by resuming it")
    p.add_argument("--restart-heap-factor", type=float, default=1.0, metavar="F",
                   help="each restart multiplies the shard's -Xmx by F (default 1: same heap)")
    p.add_argument("-v", "--verbose", action="store_true")
    return p


def _launch(args: argparse.Namespace) -> int:
    from shardrun.config import load_config
    from shardrun.launcher import LaunchOptions, launch

    from shardrun.scheduling import RestartPolicy

    if args.shards < 1:
        raise UsageError(f"--shards must be at least 1, got {args.shards}.")
    if args.max_parallel is not None and args.max_parallel < 1:
        raise UsageError(f"--max-parallel must be at least 1, got {args.max_parallel}.")
    if args.cpu_limit is not None and not 10 < args.cpu_limit <= 100:
        raise UsageError(f"--cpu-limit is a percentage of the machine between 10 and 100, got {args.cpu_limit}.")
    if args.restarts < 0 or args.restart_heap_factor < 1:
        raise UsageError("--restarts must be >= 0 and --restart-heap-factor >= 1.")
    config = load_config(args.config)
    if args.threads:
        config = replace(config, jvm=replace(config.jvm, threads=args.threads))
    options = LaunchOptions(
        config_path=args.config.resolve(), shards=args.shards, run_dir=args.run_dir, pilot=args.pilot,
        merge=args.merge, grace_seconds=args.grace, progress_every=args.progress_every,
        max_parallel=args.max_parallel, cpu_limit=args.cpu_limit, nice=args.nice, cooldown_seconds=args.cooldown,
        restart=RestartPolicy(args.restarts, args.restart_heap_factor),
        live=sys.stdout.isatty() if args.live is None else args.live,
    )
    if options.live:
        logging.getLogger().setLevel(logging.WARNING)  # log lines would tear the redrawn table
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
