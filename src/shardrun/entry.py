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
    from typing import Callable, Sequence

COMMANDS = ("run_production", "launch_shards", "merge_shard_results", "validate_outputs", "monitor_progress",
            "stop_shards", "run_parallel")


def run(command: str, argv: Sequence[str] | None = None) -> int:
    # a shard also notes the scheduler's warning signals: they ask it to drain before a time limit
    early = EarlySignals(SHARD_SIGNALS if command == "run_production" else STOP_SIGNALS).catch()
    return importlib.import_module(f"shardrun.cli.{command}").main(argv, early)


def _command(name: str) -> Callable[[Sequence[str] | None], int]:
    def main(argv: Sequence[str] | None = None) -> int:
        return run(name, argv)

    main.__name__ = main.__qualname__ = name
    return main


# the console scripts (pyproject.toml) and the `python -m shardrun.<name>` modules call these
run_production = _command("run_production")
launch_shards = _command("launch_shards")
merge_shard_results = _command("merge_shard_results")
validate_outputs = _command("validate_outputs")
monitor_progress = _command("monitor_progress")
stop_shards = _command("stop_shards")


if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1] not in COMMANDS:
        print(f"usage: python -m shardrun.entry COMMAND [ARGS], COMMAND one of {', '.join(COMMANDS)}",
              file=sys.stderr)
        raise SystemExit(2)
    raise SystemExit(run(sys.argv[1], sys.argv[2:]))
