"""`shardrun validate` (also validate_outputs): check a merged result set."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from shardrun.cli.common import add_max_failed, command_parser, guarded
from shardrun.config import load_config
from shardrun.early_signals import EarlySignals
from shardrun.errors import EXIT_OK, EXIT_VALIDATION_FAILED, UsageError
from shardrun.results.validate import checked_config_hash, validation_of, write_validation
from shardrun.storage.durability import Remedy, durable_write
from shardrun.storage.paths import MergedPaths, RunPaths

# The verdict is printed before validation.json is written, so a failed write loses only the record of it.
VALIDATE_AGAIN = Remedy("run the same validate_outputs command again (the verdict above was not recorded)",
                        "copy of the result set (--dir)")


def parser() -> argparse.ArgumentParser:
    p = command_parser("validate_outputs", "Check that a merged result set is whole and sane.")
    p.add_argument("--dir", type=Path, required=True, help="a merged dir (with results.parquet or results.csv)")
    p.add_argument("--config", type=Path, help="check coverage against this config's input data")
    add_max_failed(p)
    return p


def _check_dir(result_dir: Path) -> None:
    merged = MergedPaths(result_dir)
    if merged.parquet.is_file() or merged.csv.is_file():
        return
    if not result_dir.exists():
        raise UsageError(f"result dir {result_dir} does not exist; pass the --output dir of merge_shard_results (or"
                         " RUN/merged of a launch_shards run) to --dir.")
    if not result_dir.is_dir():
        raise UsageError(f"{result_dir} is a file, not a result dir; pass the dir that holds results.parquet and"
                         " merge_report.json (the --output dir of merge_shard_results) to --dir.")
    # No result set here: a verdict would be written into a dir that is no result set (a run dir's
    # validation.json), and "pass --config" would not help. Say what the dir is and where the set is.
    run = RunPaths(result_dir)
    if run.run_json.is_file() or run.shard_dirs():
        set_of_run = MergedPaths(run.merged)
        where = (f"its result set is {run.merged}: pass --dir {run.merged}"
                 if set_of_run.csv.is_file() or set_of_run.parquet.is_file() else
                 f"it has no result set yet: merge it first with merge_shard_results --run {result_dir}"
                 f" --output {run.merged}, then pass --dir {run.merged}")
        raise UsageError(f"{result_dir} is a run dir, not a result set (no results.parquet or results.csv); {where}.")
    raise UsageError(f"{result_dir} holds no result set (no results.parquet or results.csv); pass the --output dir of"
                     " merge_shard_results (or RUN/merged of a launch_shards run) to --dir.")


def _validate(args: argparse.Namespace) -> int:
    _check_dir(args.dir)
    config = load_config(args.config) if args.config else None
    validation = validation_of(args.dir, config, max_failed=args.max_failed)
    problems = validation.problems
    if problems:
        print(f"{args.dir}: {len(problems)} problem(s):")
        for problem in problems:
            print(f"  - {problem}")
    for line in validation.lines():  # the final lines: the users by outcome, then the verdict
        print(line)
    print(f"{args.dir}: not valid ({len(problems)} problem(s) above)" if problems else f"{args.dir}: valid")
    note = durable_write("validation.json", args.dir,
                         lambda: write_validation(args.dir, problems, checked_config_hash(args.dir, config),
                                                  validation.document()), remedy=VALIDATE_AGAIN)
    if note:
        print(f"note: {note}")
    return EXIT_VALIDATION_FAILED if problems else EXIT_OK


def main(argv: Sequence[str] | None = None, early: EarlySignals | None = None) -> int:
    return guarded(_validate, parser(), argv, early)
