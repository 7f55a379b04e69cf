"""`python -m shardrun.validate` runs `validate_outputs` (the console script's other name)."""

from shardrun.cli.validate_outputs import main

if __name__ == "__main__":
    raise SystemExit(main())
