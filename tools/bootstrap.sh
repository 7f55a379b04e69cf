#!/usr/bin/env bash
# Create or refresh the project's virtual environment (.venv): shardrun with its dependencies and
# the JIDT jar. Idempotent: when nothing changed since the last install it returns at once.
# Used by run_parallel_4shards.sh and run_tests.sh; run it by hand to set up without running.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV="${SHARDRUN_VENV:-.venv}"
# JIDT ships inside this registry package; installed without its ~530 MB of dependencies.
JIDT_PACKAGE="idtxl-uv==1.6.1"

fail() { echo "bootstrap: $*" >&2; exit 2; }

if ! command -v java >/dev/null 2>&1 && [ -z "${JAVA_HOME:-}" ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "bootstrap: no Java found; installing openjdk-17-jre-headless with apt-get" >&2
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openjdk-17-jre-headless >/dev/null
  else
    fail "no Java runtime found. Install Java 11 or newer (Debian/Ubuntu: sudo apt-get install openjdk-17-jre-headless) or set JAVA_HOME."
  fi
fi

PYTHON="${PYTHON:-python3}"
command -v "$PYTHON" >/dev/null 2>&1 || fail "no $PYTHON found; install Python 3.11 or newer (or set PYTHON=/path/to/python3)."
"$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
  || fail "$("$PYTHON" --version 2>&1) is too old; shardrun needs Python 3.11 or newer (set PYTHON=/path/to/python3)."

wanted="$(cat pyproject.toml "$0" | sha256sum | cut -d' ' -f1)"
stamp="$VENV/.shardrun-installed"
if [ -x "$VENV/bin/python" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$wanted" ]; then
  exit 0
fi

if [ ! -x "$VENV/bin/python" ]; then
  echo "bootstrap: creating $VENV (first use; takes a minute)" >&2
  "$PYTHON" -m venv "$VENV" || fail "could not create $VENV; on Debian/Ubuntu install python3-venv."
fi
"$VENV/bin/python" -m pip install -q --upgrade pip
"$VENV/bin/python" -m pip install -q -e ".[test]"
"$VENV/bin/python" -m pip install -q --no-deps "$JIDT_PACKAGE"
echo "$wanted" > "$stamp"
echo "bootstrap: $VENV is ready" >&2
