"""`shardrun monitor` (also monitor_progress): the progress of runs."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from shardrun.cli.common import command_parser, guarded, positive_seconds
from shardrun.config import load_config
from shardrun.early_signals import EarlySignals
from shardrun.observe.monitor import watch

DEFAULT_ROOT = Path("analysis/out")


def parser() -> argparse.ArgumentParser:
    p = command_parser("monitor_progress", "Show the progress of runs from their status.json files.")
    p.add_argument("runs", type=Path, nargs="*", metavar="RUN_DIR",
                   help="run dirs, or dirs of runs (their newest run); default: the newest run under output.root"
                        f" of --config, else under {DEFAULT_ROOT}")
    p.add_argument("--config", type=Path, help="the run's config: its output.root is where to look for the newest run")
    p.add_argument("--watch", action="store_true", help="refresh until every shard has ended")
    p.add_argument("--json", action="store_true",
                   help="for scripts: one JSON document per refresh, on one line (its shape: docs/MONITOR.md)")
    p.add_argument("--every", type=positive_seconds, default=5.0, metavar="S",
                   help="seconds between refreshes with --watch")
    p.add_argument("--stale-after", type=positive_seconds, default=120.0, metavar="S",
                   help="a running shard whose heartbeat is older than this is shown as dead")
    return p


def _monitor(args: argparse.Namespace) -> int:
    root = load_config(args.config).output.root if args.config else DEFAULT_ROOT
    return watch(args.runs, watch=args.watch, every=args.every, stale_after=args.stale_after, root=root,
                 as_json=args.json)


def main(argv: Sequence[str] | None = None, early: EarlySignals | None = None) -> int:
    return guarded(_monitor, parser(), argv, early)
