"""`python -m shardrun.launcher` runs `launch_shards` (the console script's other name)."""

from shardrun.cli.launch_shards import main

if __name__ == "__main__":
    raise SystemExit(main())
