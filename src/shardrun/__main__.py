"""`python -m shardrun SUBCOMMAND ARGS`: the one command (entry.main)."""

from shardrun.entry import main

if __name__ == "__main__":
    raise SystemExit(main())
