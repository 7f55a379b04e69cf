"""`python -m shardrun.stop` runs `stop_shards` (the console script's other name)."""

from shardrun.cli.stop_shards import main

if __name__ == "__main__":
    raise SystemExit(main())
