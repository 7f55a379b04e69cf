#!/usr/bin/env bash
# Set up (if needed) and run the test suite: ./run_tests.sh [pytest args]
set -euo pipefail
cd "$(dirname "$0")"
tools/install_slurm.sh   # SLURM and munge for the tests' private cluster (docs/CLUSTER_TESTS.md)
tools/install_vfat_tools.sh  # mkfs.vfat and fusefat for the vfat tests (docs/SHARED_FILESYSTEMS.md)
tools/bootstrap.sh
exec .venv/bin/python -m pytest -q "$@"
