"""`shardrun stop` (also stop_shards): drain every live shard of a run on this host, as Ctrl-C does."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from shardrun.cli.common import command_parser, guarded
from shardrun.early_signals import EarlySignals
from shardrun.errors import EXIT_OK, UsageError
from shardrun.launch.stop import stop_run
from shardrun.storage.paths import RunPaths, not_a_dir


def parser() -> argparse.ArgumentParser:
    p = command_parser(
        "stop_shards",
        "Ask every live shard of a run on this host to stop after the user in flight (SIGTERM, as Ctrl-C),"
        " whether the launcher or a person started it. Only processes verified to be that run's shards"
        " (or its launcher) are signalled.",
    )
    p.add_argument("run", type=Path, metavar="RUN_DIR", help="the run dir (holding run.json and shard-<i>-of-<K>/)")
    p.add_argument("--now", action="store_true",
                   help="signal again processes already asked to drain: they stop at once, abandoning the user in"
                        " flight (uncommitted)")
    return p


def _stop(args: argparse.Namespace) -> int:
    run = RunPaths(args.run)
    if not run.dir.is_dir() or not (run.run_json.is_file() or run.launcher_json.is_file()
                                    or any(run.dir.glob("shard-*-of-*/status.json"))):
        why = not_a_dir(run.dir) or "is not a run dir (no run.json, launcher.json or shard status)"
        raise UsageError(f"{args.run} {why}; pass the dir of a run (the one launch_shards or run_production printed).")
    report = stop_run(run.dir, now=args.now)
    verb = "stop now" if args.now else "drain"
    for target in report.signalled:
        print(f"asked {target.what} (pid {target.pid}) to {verb}")
    for shard in report.via_launcher:
        print(f"{shard}: the launcher passes the signal on")
    for line in report.skipped:
        print(f"not signalled: {line}")
    if not report.signalled:
        print(f"{run.dir}: no live shard of this run on this host")
    return EXIT_OK


def main(argv: Sequence[str] | None = None, early: EarlySignals | None = None) -> int:
    return guarded(_stop, parser(), argv, early)
