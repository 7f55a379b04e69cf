"""`shardrun merge` (also merge_shard_results): shard dirs into one result set."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from shardrun.cli.common import command_parser, guarded
from shardrun.early_signals import EarlySignals
from shardrun.errors import EXIT_OK, EXIT_VALIDATION_FAILED


def parser() -> argparse.ArgumentParser:
    p = command_parser("merge_shard_results", "Merge shard dirs into one result set.")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--shards", type=Path, nargs="+", metavar="DIR", help="shard dirs (any runs)")
    source.add_argument("--run", type=Path, metavar="DIR", help="a run dir: all its shards")
    p.add_argument("--output", type=Path, required=True, metavar="DIR", help="where the merged result set is written")
    p.add_argument("--force", action="store_true",
                   help="merge shards of different config hashes or input data anyway (recorded; the set is"
                        " incomplete); does not imply --overwrite")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing --output dir (the old set stays until the new one is complete)")
    return p


def _merge(args: argparse.Namespace) -> int:
    from shardrun.results.merge import merge_shards
    from shardrun.results.read import shard_dirs_of_run

    dirs = shard_dirs_of_run(args.run) if args.run else list(args.shards)
    report = merge_shards(dirs, args.output, force=args.force, overwrite=args.overwrite)
    print(f"merged {report.rows} rows for {report.users} users from {len(dirs)} shard dirs into {args.output}")
    for line in report.problem_lines():
        print(f"  - {line}")
    return EXIT_OK if report.complete else EXIT_VALIDATION_FAILED


def main(argv: Sequence[str] | None = None, early: EarlySignals | None = None) -> int:
    return guarded(_merge, parser(), argv, early)
