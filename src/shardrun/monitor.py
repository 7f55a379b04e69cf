"""`python -m shardrun.monitor` runs `monitor_progress` (the console script's other name)."""

from shardrun.entry import monitor_progress as main

if __name__ == "__main__":
    raise SystemExit(main())
