"""Filesystems for the shared-filesystem tests: a real vfat image on a loop device, and the command that
runs a shard with the named stand-ins of tests/stand_in_worker.py.

The vfat image is real: made by mkfs.vfat, attached to a loop device, mounted with fusefat (this
machine's kernel has no vfat driver; fusefat is Debian's FUSE driver for the same on-disk format). It
refuses hard links (EPERM) and renameat2 RENAME_NOREPLACE (EINVAL) for real, so shardrun's last
fallback, the checked rename, runs on it. tools/install_vfat_tools.sh (run by run_tests.sh) installs
dosfstools and fusefat when missing.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
VFAT_TOOLS = ("mkfs.vfat", "losetup", "fusefat", "umount")
# mkfs.vfat and losetup live in sbin, which a non-root PATH often lacks
SEARCH_PATH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/local/sbin", "/usr/sbin", "/sbin"])


def tool(name: str) -> str:
    return shutil.which(name, path=SEARCH_PATH) or name


def vfat_unavailable() -> str | None:
    """Why a vfat image cannot be mounted here, or None."""
    if os.geteuid() != 0:
        return "needs root (loop devices and FUSE mounts)"
    missing = [name for name in VFAT_TOOLS if shutil.which(name, path=SEARCH_PATH) is None]
    if missing:
        return f"needs {', '.join(missing)} (tools/install_vfat_tools.sh installs dosfstools and fusefat as root)"
    if not Path("/dev/fuse").exists():
        return "needs /dev/fuse"
    return None


@contextmanager
def vfat_mount(image: Path, mount_point: Path, size_mib: int = 64) -> Iterator[Path]:
    """A fresh vfat filesystem in the file `image`, mounted at `mount_point` (made if missing, else
    empty); unmounted, its loop device detached and its image removed when the block ends, whatever
    happened inside."""
    why = vfat_unavailable()
    if why:
        pytest.skip(why)
    image.parent.mkdir(parents=True, exist_ok=True)
    mount_point.mkdir(parents=True, exist_ok=True)
    with open(image, "wb") as handle:
        handle.truncate(size_mib * 1024 * 1024)
    loop = None
    mounted = False
    try:
        # no volume label: fusefat would list it as a file in the root dir
        subprocess.run([tool("mkfs.vfat"), str(image)], check=True, capture_output=True)
        loop = subprocess.run([tool("losetup"), "--find", "--show", str(image)], check=True, capture_output=True,
                              text=True).stdout.strip()
        # -s: one thread; fusefat's driver is not written for concurrent requests
        subprocess.run([tool("fusefat"), "-s", "-o", "rw+", loop, str(mount_point)], check=True, capture_output=True)
        mounted = True
        yield mount_point
    finally:
        if mounted:
            unmount(mount_point)
        if loop:
            subprocess.run([tool("losetup"), "--detach", loop], capture_output=True)
        image.unlink(missing_ok=True)


def unmount(mount_point: Path) -> None:
    """Unmount, retrying while a process that the test just stopped still holds a file there; lazily
    at last, so a failed test never leaves a mount behind."""
    for _ in range(50):
        if subprocess.run([tool("umount"), str(mount_point)], capture_output=True).returncode == 0:
            return
        time.sleep(0.1)
    subprocess.run([tool("umount"), "-l", str(mount_point)], check=True)


def stand_in_worker(*args: str) -> list[str]:
    """run_production's command line, through tests/stand_in_worker.py (stand-ins chosen by STAND_IN_* variables)."""
    return [sys.executable, str(TESTS / "stand_in_worker.py"), *args]


def needs_root_mounts() -> None:
    if os.geteuid() != 0 or subprocess.run(["unshare", "-m", "true"], capture_output=True).returncode != 0:
        pytest.skip("needs root with mount rights (tmpfs, bind mounts in a private mount namespace)")


def read_only(path: Path) -> list[str]:
    """Run the command with `path` read-only: a bind mount in a private mount namespace (root ignores chmod)."""
    return ["unshare", "-m", "--propagation", "private", "sh", "-c",
            'mount --bind "$0" "$0" && mount -o remount,ro,bind "$0" && exec "$@"', str(path)]
