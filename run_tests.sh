#!/usr/bin/env bash
# Set up (if needed), lint (ruff, mypy: any finding fails) and run the test suite: ./run_tests.sh [pytest args]
# ./run_tests.sh --lint-only: set up and lint, no tests.
set -euo pipefail
cd "$(dirname "$0")"
tools/install_slurm.sh   # SLURM and munge for the tests' private cluster (docs/CLUSTER_TESTS.md)
tools/install_vfat_tools.sh  # mkfs.vfat and fusefat for the vfat tests (docs/SHARED_FILESYSTEMS.md)
tools/bootstrap.sh
.venv/bin/ruff check
.venv/bin/mypy
if [ "${1:-}" = "--lint-only" ]; then exit 0; fi
exec .venv/bin/python -m pytest -q "$@"
