#!/usr/bin/env bash
# Make sure mkfs.vfat (dosfstools) and fusefat are installed, for the shared-filesystem tests that
# mount a real vfat image (tests/fs_support.py, docs/SHARED_FILESYSTEMS.md). Idempotent and instant
# when they are there. Missing and root with apt-get (CI): installs the Debian/Ubuntu packages.
# Missing and not root: says so and goes on (those tests need root anyway and are skipped with the
# reason). Called by run_tests.sh only (shardrun itself does not need them).
set -euo pipefail

PACKAGES="dosfstools fusefat"
# mkfs.vfat lives in sbin, which a non-root PATH often lacks.
PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"

missing() {
  local name
  for name in mkfs.vfat fusefat losetup; do
    command -v "$name" >/dev/null 2>&1 || echo "$name"
  done
}

gone="$(missing | tr '\n' ' ')"
[ -z "$gone" ] && exit 0

if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "install_vfat_tools: not found: $gone; the vfat tests will be skipped (they need root, and $PACKAGES)" >&2
  exit 0
fi

echo "install_vfat_tools: installing $PACKAGES with apt-get (for the vfat tests)" >&2
apt_install() { DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $PACKAGES >/dev/null; }
# Package lists may be missing or stale on a fresh machine: update only when the install needs it.
if ! apt_install 2>/dev/null; then
  apt-get update -qq >/dev/null
  apt_install
fi

gone="$(missing | tr '\n' ' ')"
if [ -n "$gone" ]; then
  echo "install_vfat_tools: still not found after installing $PACKAGES: $gone" >&2
  exit 2
fi
