#!/usr/bin/env bash
# Set up (if needed) and run the test suite: ./run_tests.sh [pytest args]
set -euo pipefail
cd "$(dirname "$0")"
tools/bootstrap.sh
exec .venv/bin/python -m pytest -q "$@"
