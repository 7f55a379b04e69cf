"""`python -m shardrun.worker` runs `run_production`: one shard (how a launcher starts its shards)."""

from shardrun.entry import run_production as main

if __name__ == "__main__":
    raise SystemExit(main())
