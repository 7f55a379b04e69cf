"""monitor_progress: the progress of runs (also `python -m shardrun.monitor`)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Sequence

from shardrun.cli.common import guarded
from shardrun.observe.monitor import watch


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="monitor_progress", description="Show the progress of runs from their status.json files.")
    p.add_argument("runs", type=Path, nargs="*", help="run dirs (default: the newest under analysis/out)")
    p.add_argument("--watch", action="store_true", help="refresh until every shard has ended")
    p.add_argument("--every", type=float, default=5.0, metavar="S")
    p.add_argument("--stale-after", type=float, default=120.0, metavar="S",
                   help="a running shard whose heartbeat is older than this is shown as dead")
    p.add_argument("-v", "--verbose", action="store_true")
    return p


def _monitor(args: argparse.Namespace) -> int:
    return watch(args.runs, watch=args.watch, every=args.every, stale_after=args.stale_after)


def main(argv: Sequence[str] | None = None) -> int:
    return guarded(_monitor, parser(), argv)


if __name__ == "__main__":
    raise SystemExit(main())
