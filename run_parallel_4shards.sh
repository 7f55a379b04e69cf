#!/usr/bin/env bash
# Run the analysis as K shard processes on this machine, then merge and validate.
#   ./run_parallel_4shards.sh [CONFIG] [K]      (defaults: config/proposal.yaml, 4)
# Any further flags go to launch_shards (see `launch_shards --help`).
set -euo pipefail
cd "$(dirname "$0")"
CONFIG="${1:-config/proposal.yaml}"
SHARDS="${2:-4}"
shift $(( $# < 2 ? $# : 2 ))
tools/bootstrap.sh
exec .venv/bin/launch_shards --config "$CONFIG" --shards "$SHARDS" --merge "$@"
