"""launch_shards: K shards as local processes, then merge (also `python -m shardrun.launcher`)."""

from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import replace
from pathlib import Path
from typing import Sequence

from shardrun.cli.common import (
    add_verbose, command_parser, guarded, nice_level, non_negative_int, non_negative_seconds, pilot_size, positive_int,
    positive_seconds, thread_count,
)
from shardrun.config import load_config
from shardrun.errors import UsageError
from shardrun.launch.launcher import LaunchOptions, launch
from shardrun.launch.policies import RestartPolicy


def parser() -> argparse.ArgumentParser:
    p = command_parser("launch_shards", "Run K shards as K local processes, then merge.")
    p.add_argument("--config", type=Path, default=Path("config/proposal.yaml"), help="YAML config")
    p.add_argument("--shards", type=positive_int, default=4, metavar="K", help="number of shards")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--out", type=Path, metavar="DIR",
                       help="start the run in DIR, or continue it if DIR holds the same run (config, data, K)")
    where.add_argument("--run-dir", type=Path, help="continue this run (every shard resumes)")
    p.add_argument("--pilot", type=pilot_size, metavar="N", help="only the first N users of each shard")
    p.add_argument("--merge", action=argparse.BooleanOptionalAction, default=True,
                   help="merge and validate when every shard completed (default: yes)")
    p.add_argument("--grace", type=non_negative_seconds, default=120.0, metavar="S",
                   help="after Ctrl-C/SIGTERM, seconds to let shards finish their user before killing them")
    p.add_argument("--progress-every", type=positive_seconds, default=30.0, metavar="S",
                   help="seconds between progress lines when not on a terminal")
    p.add_argument("--live", action=argparse.BooleanOptionalAction, default=None,
                   help="redraw a progress table (default: when stdout is a terminal)")
    p.add_argument("--max-parallel", type=positive_int, metavar="M", help="run at most M shards at a time")
    p.add_argument("--cpu-limit", type=float, metavar="P",
                   help="suspend shards while the machine's CPU use is above P percent (resume below P-10)")
    p.add_argument("--nice", type=nice_level, default=0, metavar="N", help="run shards with CPU priority lowered by N")
    p.add_argument("--threads", type=thread_count, metavar="N",
                   help="threads per shard (default jvm.threads; auto: the CPUs shared by the shards running at once)")
    p.add_argument("--cooldown", type=non_negative_seconds, default=0.0, metavar="S", help="each shard pauses S seconds between users")
    p.add_argument("--restarts", type=non_negative_int, default=0, metavar="N",
                   help="restart a shard that died abnormally (signal, JVM crash) up to N times, by resuming it")
    p.add_argument("--restart-heap-factor", type=float, default=1.0, metavar="F",
                   help="each restart multiplies the shard's -Xmx by F (default 1: same heap)")
    add_verbose(p)
    return p


def _launch(args: argparse.Namespace) -> int:
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
        config_path=args.config.resolve(), shards=args.shards, run_dir=args.run_dir, out=args.out, pilot=args.pilot,
        merge=args.merge, grace_seconds=args.grace, progress_every=args.progress_every,
        max_parallel=args.max_parallel, cpu_limit=args.cpu_limit, nice=args.nice, cooldown_seconds=args.cooldown,
        restart=RestartPolicy(args.restarts, args.restart_heap_factor),
        live=sys.stdout.isatty() if args.live is None else args.live,
    )
    if options.live:
        logging.getLogger().setLevel(logging.WARNING)  # log lines would tear the redrawn table
    return launch(config, options).exit_code


def main(argv: Sequence[str] | None = None) -> int:
    return guarded(_launch, parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
