#!/usr/bin/env bash
# Run the analysis as K shard processes on this machine, then merge and validate.
#   ./run_parallel_4shards.sh [CONFIG] [K] [launch_shards flags]   (defaults: config/proposal.yaml, 4)
# CONFIG and K may stand anywhere among the flags; a relative CONFIG (and --run-dir/--out) is taken
# from the directory you run it from, and CONFIG falls back to the repository's (config/...).
# ./run_parallel_4shards.sh --help prints this and launch_shards' flags.
set -euo pipefail
CALLER="$(pwd)"
REPO="$(cd "$(dirname "$0")" && pwd)"

usage() {
  cat <<'TEXT'
usage: ./run_parallel_4shards.sh [CONFIG] [K] [launch_shards flags ...]

Run K shards of CONFIG as local processes, then merge and validate (launch_shards --merge).
  CONFIG   YAML config; relative to the current directory, else to the repository
           (default: config/proposal.yaml)
  K        number of shards (default: 4)
CONFIG and K may come before, between or after the flags. Flags of launch_shards:
TEXT
}

# launch_shards flags that take a value (the value is not a positional CONFIG or K).
takes_value() {
  case "$1" in
    --config|--shards|--run-dir|--out|--pilot|--grace|--progress-every|--max-parallel|--cpu-limit|--nice|\
    --threads|--cooldown|--restarts|--restart-heap-factor|--benchmark|--commit-interval|--max-failed|\
    --fail-fast) return 0 ;;
    *) return 1 ;;
  esac
}

# A path given relative to the caller's directory, made absolute (the script runs from the repository).
from_caller() {
  case "$1" in
    /*) printf '%s' "$1" ;;
    *) printf '%s' "$CALLER/$1" ;;
  esac
}

positional=()
flags=()
config_flag=""
shards_flag=""
want_help=""
while [ $# -gt 0 ]; do
  arg="$1"; shift
  case "$arg" in
    -h|--help) want_help=1 ;;
    --) positional+=("$@"); break ;;
    --config=*) config_flag="${arg#--config=}" ;;
    --shards=*) shards_flag="${arg#--shards=}" ;;
    --run-dir=*|--out=*) flags+=("${arg%%=*}=$(from_caller "${arg#*=}")") ;;
    -*)
      if takes_value "$arg"; then
        [ $# -gt 0 ] || { echo "error: $arg needs a value" >&2; exit 2; }
        value="$1"; shift
        case "$arg" in
          --config) config_flag="$value" ;;
          --shards) shards_flag="$value" ;;
          --run-dir|--out) flags+=("$arg" "$(from_caller "$value")") ;;
          *) flags+=("$arg" "$value") ;;
        esac
      else
        flags+=("$arg")
      fi ;;
    *) positional+=("$arg") ;;
  esac
done

cd "$REPO"
if [ -n "$want_help" ]; then
  usage
  tools/bootstrap.sh
  .venv/bin/launch_shards --help | sed -n '/^options:/,$p'
  exit 0
fi

config="$config_flag"
shards="$shards_flag"
case "${#positional[@]}" in
  0) ;;
  1) if [[ "${positional[0]}" =~ ^[0-9]+$ ]] && [ -z "$shards" ]; then shards="${positional[0]}"
     else config="${config:-${positional[0]}}"; fi ;;
  2) config="${config:-${positional[0]}}"; shards="${shards:-${positional[1]}}" ;;
  *) echo "error: at most two positional arguments (CONFIG and K), got: ${positional[*]}" >&2; usage >&2; exit 2 ;;
esac

if [ -z "$config" ]; then
  if [ -f "$CALLER/config/proposal.yaml" ]; then config="$CALLER/config/proposal.yaml"; else config="$REPO/config/proposal.yaml"; fi
else
  case "$config" in
    /*) ;;
    *) if [ -e "$CALLER/$config" ]; then config="$CALLER/$config"
       elif [ -e "$REPO/$config" ]; then config="$REPO/$config"
       else echo "error: config $config not found (looked in $CALLER and in the repository)" >&2; exit 2; fi ;;
  esac
fi

tools/bootstrap.sh
exec .venv/bin/launch_shards --config "$config" --shards "${shards:-4}" --merge ${flags[@]+"${flags[@]}"}
