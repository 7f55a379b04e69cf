#!/usr/bin/env bash
# Set up (if needed) and run the test suite: ./run_tests.sh [pytest args]
set -euo pipefail
cd "$(dirname "$0")"
tools/install_slurm.sh   # SLURM and munge for the tests' private cluster (docs/CLUSTER_TESTS.md)
tools/bootstrap.sh
# The shared-filesystem tests mount a real vfat image (mkfs.vfat from dosfstools, fusefat: this kernel
# may have no vfat driver). Installed once when missing and possible (root with apt-get); elsewhere
# those tests are skipped with the reason.
if ! command -v mkfs.vfat >/dev/null 2>&1 || ! command -v fusefat >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "run_tests: installing dosfstools and fusefat with apt-get (the vfat tests)" >&2
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dosfstools fusefat >/dev/null
  else
    echo "run_tests: mkfs.vfat or fusefat missing: the vfat tests will be skipped" >&2
  fi
fi
exec .venv/bin/python -m pytest -q "$@"
