"""`python -m shardrun.monitor` runs `monitor_progress` (the console script's other name)."""

from shardrun.cli.monitor_progress import main

if __name__ == "__main__":
    raise SystemExit(main())
