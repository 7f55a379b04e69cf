"""Every command's entry point: `shardrun SUB` (the console script, `python -m shardrun`), the six console
names, the tools/ shims and ./run_parallel_4shards.sh all start here, so each command notes the stop
signals (early_signals) before its own modules are imported, and a signal at any instant gets the
command's documented exit."""

from __future__ import annotations

import importlib
import sys

from shardrun.cli import SUBCOMMANDS
from shardrun.early_signals import SHARD_SIGNALS, STOP_SIGNALS, EarlySignals

TYPE_CHECKING = False  # typing is not imported: every millisecond before catch() is a window
if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

MODULES = {sub: module for sub, module, _ in SUBCOMMANDS} | {"run_parallel": "run_parallel"}  # the script's, unlisted


def run(command: str, argv: Sequence[str] | None = None) -> int:
    # a shard also notes the scheduler's warning signals: they ask it to drain before a time limit
    early = EarlySignals(SHARD_SIGNALS if command == "run_production" else STOP_SIGNALS).catch()
    return importlib.import_module(f"shardrun.cli.{command}").main(argv, early)


USAGE = f"usage: shardrun [-h] [--version] {{{','.join(sub for sub, _, _ in SUBCOMMANDS)}}} ..."


def main(argv: Sequence[str] | None = None) -> int:
    """`shardrun SUB ARGS`: runs SUB's command; --help, --version, or an error (exit 2)."""
    args = list(sys.argv[1:] if argv is None else argv)
    first = args[0] if args else ""
    if first in MODULES:
        return run(MODULES[first], args[1:])
    if first in ("-h", "--help"):
        lines = [f"  {sub:<9} {line} (also {module})" for sub, module, line in SUBCOMMANDS]
        print("\n".join([USAGE, "", "Run a per-user analysis as K resumable shards, then merge and validate.", "",
                         "commands:", *lines, "", "`shardrun COMMAND --help` shows the command's own flags."]))
        return 0
    if first == "--version":
        from shardrun.cli.common import shardrun_version

        print(f"shardrun {shardrun_version()}")
        return 0
    said = f"unknown command {first!r}" if first else "no command given"
    print(f"{USAGE}\nshardrun: error: {said}; choose one of {', '.join(s for s, _, _ in SUBCOMMANDS)}"
          " (shardrun --help says what each does).", file=sys.stderr)
    return 2


def _command(name: str) -> Callable[[Sequence[str] | None], int]:
    def main(argv: Sequence[str] | None = None) -> int:
        return run(name, argv)

    main.__name__ = main.__qualname__ = name
    return main


# the six console names (pyproject.toml), the original workflow's commands
run_production = _command("run_production")
launch_shards = _command("launch_shards")
merge_shard_results = _command("merge_shard_results")
validate_outputs = _command("validate_outputs")
monitor_progress = _command("monitor_progress")
stop_shards = _command("stop_shards")
