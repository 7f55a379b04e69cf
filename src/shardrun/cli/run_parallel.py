"""./run_parallel_4shards.sh [CONFIG] [K] [launch_shards flags]: launch_shards with the config and
the shard count also given by position, anywhere among the flags, as the original workflow's script took
them. The flags are launch_shards' own parser's, so every flag passes through with its value.

The script runs from the repository; SHARDRUN_CALLER_DIR is the directory it was started from, against
which a relative CONFIG, --config, --out and --run-dir are read (CONFIG falls back to the repository's),
and SHARDRUN_INVOKED_AS the script's path as typed there, which the continue hint repeats.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from pathlib import Path

from shardrun.cli import launch_shards
from shardrun.cli.common import guarded
from shardrun.early_signals import EarlySignals
from shardrun.errors import UsageError

CALLER_ENV = "SHARDRUN_CALLER_DIR"
INVOKED_AS_ENV = "SHARDRUN_INVOKED_AS"  # the script's path as the user typed it, for the hints
SCRIPT = "./run_parallel_4shards.sh"
DEFAULT_CONFIG = Path("config/proposal.yaml")
USAGE = f"""usage: {SCRIPT} [CONFIG] [K] [launch_shards flags ...]

Run K shards of CONFIG as local processes, then merge and validate (launch_shards --merge).
  CONFIG   YAML config; relative to the current directory, else to the repository
           (default: config/proposal.yaml)
  K        number of shards (default: 4)
CONFIG and K may come before, between or after the flags. Flags of launch_shards:"""


def parser() -> argparse.ArgumentParser:
    p = launch_shards.parser()
    p.prog = SCRIPT
    p.usage = argparse.SUPPRESS
    p.description = USAGE
    p.add_argument("positional", nargs="*", metavar="CONFIG K", help=argparse.SUPPRESS)
    for action in p._actions:
        if action.dest in ("config", "shards"):
            action.default = None
    return p


def config_and_shards(positional: Sequence[str], config: Path | None,
                      shards: int | None) -> tuple[Path | None, int | None]:
    """CONFIG and K from the positional words: one number is K, one other word is CONFIG, two are both;
    a flag (--config, --shards) wins over its positional twin."""
    if len(positional) > 2:
        raise UsageError(f"at most two positional arguments (CONFIG and K), got: {' '.join(positional)}; flags and"
                         f" their values go with their flag ({SCRIPT} --help lists them).")
    words: list[str | None] = list(positional)
    if len(positional) == 1 and positional[0].isdigit():
        words = [None, positional[0]]
    given_config, given_shards = (words + [None, None])[:2]
    if given_shards is not None and not given_shards.isdigit():
        raise UsageError(f"K must be a whole number of shards, got {given_shards!r} ({SCRIPT} CONFIG K).")
    return (config or (Path(given_config) if given_config else None),
            shards or (int(given_shards) if given_shards else None))


def _run(args: argparse.Namespace) -> int:
    caller, repository = Path(os.environ.get(CALLER_ENV) or Path.cwd()), Path.cwd()
    config, args.shards = config_and_shards(args.positional, args.config, args.shards)
    config = config or DEFAULT_CONFIG
    # a relative config is looked for in the caller's dir, then in the repository
    found = [config] if config.is_absolute() else [base / config for base in (caller, repository)
                                                   if (base / config).exists()]
    if not found:
        raise UsageError(f"config {config} not found (looked in {caller} and in the repository {repository});"
                         " give its path.")
    args.config = found[0]
    for name in ("out", "run_dir"):
        where = getattr(args, name)
        if where is not None and not where.is_absolute():
            setattr(args, name, caller / where)
    args.invocation = os.environ.get(INVOKED_AS_ENV) or SCRIPT
    del args.positional
    return launch_shards.run(args)


def main(argv: Sequence[str] | None = None, early: EarlySignals | None = None) -> int:
    p = parser()
    return guarded(_run, p, argv, early, parse=p.parse_intermixed_args)
