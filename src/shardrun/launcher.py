"""`python -m shardrun.launcher` runs `launch_shards` (the console script's other name)."""

from shardrun.entry import launch_shards as main

if __name__ == "__main__":
    raise SystemExit(main())
