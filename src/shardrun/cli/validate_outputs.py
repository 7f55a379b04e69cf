"""validate_outputs: check a merged result set (also `python -m shardrun.validate`)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Sequence

from shardrun.cli.common import add_verbose, command_parser, guarded
from shardrun.config import load_config
from shardrun.errors import EXIT_OK, EXIT_VALIDATION_FAILED
from shardrun.results.validate import validate_result_set, write_validation


def parser() -> argparse.ArgumentParser:
    p = command_parser("validate_outputs", "Check that a merged result set is whole and sane.")
    p.add_argument("--dir", type=Path, required=True, help="a merged dir (with results.parquet or results.csv)")
    p.add_argument("--config", type=Path, help="check coverage against this config's input data")
    add_verbose(p)
    return p


def _validate(args: argparse.Namespace) -> int:
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


def main(argv: Sequence[str] | None = None) -> int:
    return guarded(_validate, parser(), argv)


if __name__ == "__main__":
    raise SystemExit(main())
