#!/usr/bin/env bash
# Make sure munge and SLURM are installed, for the tests' private single-node cluster
# (tests/slurm_cluster.py, docs/CLUSTER_TESTS.md). Idempotent and instant when they are there.
# Missing and root with apt-get (CI): installs the Debian/Ubuntu packages. Missing otherwise: fails,
# naming the packages. Called by run_tests.sh only (the main job does not need SLURM).
set -euo pipefail

PACKAGES="munge slurm-wlm slurmctld slurmd slurm-client"
# Daemons live in sbin, which a non-root PATH often lacks.
PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"

missing() {
  local name
  for name in sbatch squeue scontrol scancel sinfo slurmctld slurmd munged mungekey; do
    command -v "$name" >/dev/null 2>&1 || echo "$name"
  done
}

gone="$(missing | tr '\n' ' ')"
[ -z "$gone" ] && exit 0

if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "install_slurm: the tests need SLURM and munge; not found: $gone" >&2
  echo "install_slurm: install them as root, e.g. sudo apt-get install $PACKAGES (Debian/Ubuntu)," >&2
  echo "install_slurm: or run this script as root." >&2
  exit 2
fi

echo "install_slurm: installing $PACKAGES with apt-get (for the tests' SLURM cluster)" >&2
apt_install() { DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $PACKAGES >/dev/null; }
# Package lists may be missing or stale on a fresh machine: update only when the install needs it.
if ! apt_install 2>/dev/null; then
  apt-get update -qq >/dev/null
  apt_install
fi

gone="$(missing | tr '\n' ' ')"
if [ -n "$gone" ]; then
  echo "install_slurm: still not found after installing $PACKAGES: $gone" >&2
  exit 2
fi
echo "install_slurm: installed slurm-client $(dpkg-query -W -f='${Version}' slurm-client 2>/dev/null)" >&2
