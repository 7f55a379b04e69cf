"""`python -m shardrun.validate` runs `validate_outputs` (the console script's other name)."""

from shardrun.entry import validate_outputs as main

if __name__ == "__main__":
    raise SystemExit(main())
