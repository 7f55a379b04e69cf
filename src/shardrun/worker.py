"""`python -m shardrun.worker` and the console script run_production: one shard.

The stop and warning signals are noted before anything heavy is imported (shard.lifecycle.EarlySignals),
so a signal in the process's first second drains the shard like any other instead of killing it."""

from __future__ import annotations

from typing import Sequence

from shardrun.shard.lifecycle import EarlySignals


def main(argv: Sequence[str] | None = None) -> int:
    early = EarlySignals().catch()
    from shardrun.cli.run_production import main as run_production

    return run_production(argv, early)


if __name__ == "__main__":
    raise SystemExit(main())
