"""`python -m shardrun.stop` runs `stop_shards` (the console script's other name)."""

from shardrun.entry import stop_shards as main

if __name__ == "__main__":
    raise SystemExit(main())
