#!/usr/bin/env bash
# Run the analysis as K shard processes on this machine, then merge and validate.
#   ./run_parallel_4shards.sh [CONFIG] [K] [launch_shards flags]   (defaults: config/proposal.yaml, 4)
# CONFIG and K may stand anywhere among the flags; every flag is launch_shards' own
# (src/shardrun/cli/run_parallel.py reads them with its parser). A relative CONFIG (and --out/--run-dir)
# is taken from the directory you run it from, and CONFIG falls back to the repository's (config/...).
# ./run_parallel_4shards.sh --help prints the usage and launch_shards' flags.
set -euo pipefail
CALLER="$(pwd)"
cd "$(dirname "$0")"
tools/bootstrap.sh
SHARDRUN_CALLER_DIR="$CALLER" SHARDRUN_INVOKED_AS="$0" exec .venv/bin/python -m shardrun run_parallel "$@"
