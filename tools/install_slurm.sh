#!/usr/bin/env bash
# Make sure munge and SLURM are installed, for the tests' private clusters (tests/slurm_cluster.py,
# docs/dev/CLUSTER_TESTS.md), and iproute2, whose `ip` makes the two-node cluster's namespaces and links. Idempotent and instant when they are there.
# Missing and root with apt-get (CI): installs the Debian/Ubuntu packages. Missing otherwise: fails,
# naming the packages. Called by run_tests.sh only (the main job does not need SLURM).
set -euo pipefail
. "$(dirname "$0")/apt_packages.sh"

PACKAGES="munge slurm-wlm slurmctld slurmd slurm-client iproute2"
status=0
install_missing install_slurm "the tests' SLURM cluster" "$PACKAGES" \
  sbatch squeue scontrol scancel sinfo slurmctld slurmd munged mungekey ip nsenter unshare hostname || status=$?
if [ "$status" = 3 ]; then
  echo "install_slurm: the tests need SLURM, munge and ip; not found: $MISSING" >&2
  echo "install_slurm: install them as root, e.g. sudo apt-get install $PACKAGES (Debian/Ubuntu)," >&2
  echo "install_slurm: or run this script as root." >&2
  exit 2
fi
exit "$status"
