"""`python -m shardrun.worker` runs `run_production` (the console script's other name)."""

from shardrun.cli.run_production import main

if __name__ == "__main__":
    raise SystemExit(main())
