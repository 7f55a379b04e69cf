#!/usr/bin/env bash
# Make sure mkfs.vfat (dosfstools) and fusefat are installed, for the shared-filesystem tests that
# mount a real vfat image (tests/fs_support.py, docs/SHARED_FILESYSTEMS.md). Idempotent and instant
# when they are there. Missing and root with apt-get (CI): installs the Debian/Ubuntu packages.
# Missing and not root: says so and goes on (those tests need root anyway and are skipped with the
# reason). Called by run_tests.sh only (shardrun itself does not need them).
set -euo pipefail
. "$(dirname "$0")/apt_packages.sh"

PACKAGES="dosfstools fusefat"
status=0
install_missing install_vfat_tools "the vfat tests" "$PACKAGES" mkfs.vfat fusefat losetup || status=$?
if [ "$status" = 3 ]; then
  echo "install_vfat_tools: not found: $MISSING; the vfat tests will be skipped (they need root, and $PACKAGES)" >&2
  exit 0
fi
exit "$status"
