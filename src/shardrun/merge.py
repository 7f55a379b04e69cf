"""`python -m shardrun.merge` runs `merge_shard_results` (the console script's other name)."""

from shardrun.entry import merge_shard_results as main

if __name__ == "__main__":
    raise SystemExit(main())
