"""Every command's entry point: the console scripts, `python -m shardrun.<name>`, the tools/ shims and
./run_parallel_4shards.sh all start here, so each command notes the stop signals (early_signals) before
its own modules are imported, and a signal at any instant gets the command's documented exit.

`python -m shardrun.entry COMMAND ARGS` runs COMMAND (the shell script's way in)."""

from __future__ import annotations

import importlib
import sys

from shardrun.early_signals import SHARD_SIGNALS, STOP_SIGNALS, EarlySignals

TYPE_CHECKING = False  # typing is not imported: every millisecond before catch() is a window
if TYPE_CHECKING:
    from typing import Sequence

COMMANDS = ("run_production", "launch_shards", "merge_shard_results", "validate_outputs", "monitor_progress",
            "stop_shards", "run_parallel")


def run(command: str, argv: Sequence[str] | None = None) -> int:
    # a shard also notes the scheduler's warning signals: they ask it to drain before a time limit
    early = EarlySignals(SHARD_SIGNALS if command == "run_production" else STOP_SIGNALS).catch()
    return importlib.import_module(f"shardrun.cli.{command}").main(argv, early)


def run_production(argv: Sequence[str] | None = None) -> int:
    return run("run_production", argv)


def launch_shards(argv: Sequence[str] | None = None) -> int:
    return run("launch_shards", argv)


def merge_shard_results(argv: Sequence[str] | None = None) -> int:
    return run("merge_shard_results", argv)


def validate_outputs(argv: Sequence[str] | None = None) -> int:
    return run("validate_outputs", argv)


def monitor_progress(argv: Sequence[str] | None = None) -> int:
    return run("monitor_progress", argv)


def stop_shards(argv: Sequence[str] | None = None) -> int:
    return run("stop_shards", argv)


if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1] not in COMMANDS:
        print(f"usage: python -m shardrun.entry COMMAND [ARGS], COMMAND one of {', '.join(COMMANDS)}",
              file=sys.stderr)
        raise SystemExit(2)
    raise SystemExit(run(sys.argv[1], sys.argv[2:]))
