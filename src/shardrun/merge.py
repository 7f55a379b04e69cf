"""`python -m shardrun.merge` runs `merge_shard_results` (the console script's other name)."""

from shardrun.cli.merge_shard_results import main

if __name__ == "__main__":
    raise SystemExit(main())
