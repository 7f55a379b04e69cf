"""What differs between POSIX and Windows, in one place: nothing else branches on the platform.

Linux is tested; Windows keeps the same contracts (docs/GUIDE.md, "Set-up").
"""

from __future__ import annotations

import errno
import logging
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import psutil

log = logging.getLogger(__name__)

WINDOWS = os.name == "nt"

def keep_usr2_from_jvm() -> None:
    """Before the JVM starts: move HotSpot's suspend/resume signal off SIGUSR2 (POSIX; a user's own choice stands)."""
    # HotSpot takes SIGUSR2 (a scheduler's `--signal=USR2` warning) unless _JAVA_SR_SIGNUM names another;
    # an unused real-time signal takes that role (HotSpot accepts one above SIGSEGV).
    if not WINDOWS and hasattr(signal, "SIGRTMIN"):
        os.environ.setdefault("_JAVA_SR_SIGNUM", str(signal.SIGRTMIN + 6))


def lock_exclusive(handle: IO[Any]) -> None:
    """A non-blocking exclusive lock the OS drops when the process dies; OSError if held or unsupported."""
    if sys.platform == "win32":  # not WINDOWS: mypy checks only the branch of the platform it runs on
        import msvcrt

        handle.seek(0)
        msvcrt.locking(handle.fileno(), msvcrt.LK_NBLCK, 1)
        return
    import fcntl

    fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)


def signal_on_parent_death(signum: int) -> bool:
    """Linux PR_SET_PDEATHSIG: `signum` when the parent dies; False elsewhere or on failure."""
    if not sys.platform.startswith("linux"):
        return False
    import ctypes

    pr_set_pdeathsig = 1
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(pr_set_pdeathsig, signum, 0, 0, 0) != 0:
        log.warning("could not ask to be signalled when the launcher dies (errno %d)", ctypes.get_errno())
        return False
    return True


def lower_priority(steps: int) -> None:
    """Lower this process's CPU priority: `nice` by `steps` on POSIX, the below-normal class on Windows."""
    if steps <= 0:
        return
    if sys.platform == "win32":
        psutil.Process().nice(psutil.BELOW_NORMAL_PRIORITY_CLASS)
    else:
        os.nice(steps)


def own_process_group() -> dict[str, Any]:
    """Popen options for a child in its own process group, so Ctrl-C reaches the launcher alone."""
    if sys.platform == "win32":
        return {"creationflags": subprocess.CREATE_NEW_PROCESS_GROUP}
    return {"process_group": 0}


def suspend(pid: int) -> None:
    """Stop a process from running until `resume` (SIGSTOP; on Windows, psutil suspends its threads)."""
    if WINDOWS:
        psutil.Process(pid).suspend()
    else:
        os.kill(pid, signal.SIGSTOP)


def resume(pid: int) -> None:
    if WINDOWS:
        psutil.Process(pid).resume()
    else:
        os.kill(pid, signal.SIGCONT)


def lock_is_held(exc: OSError) -> bool:
    """True if `exc` of lock_exclusive means the lock is held (on Windows, any failure; untested)."""
    return WINDOWS or exc.errno in {errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES, errno.EDEADLK}


def locks_unsupported(exc: OSError) -> bool:
    """True if `exc` of lock_exclusive means the filesystem has no file locks (NFS without a lock manager,
    some Lustre, FUSE)."""
    return not WINDOWS and exc.errno in {errno.ENOLCK, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP}


def boot_id() -> str | None:
    """This boot's id (Linux), telling a lease from before a reboot from a live pid; None elsewhere."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip() or None
    except OSError:
        return None


def process_start_time() -> float | None:
    """This process's start in POSIX seconds, to 10 ms from /proc (psutil's can be a second off)."""
    try:
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        start_tick = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        return time.time() - (uptime - start_tick / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        try:
            return psutil.Process().create_time()
        except (psutil.Error, OSError):
            return None


@dataclass(frozen=True)
class Filesystem:
    """The mount a path lives on, as /proc/self/mountinfo tells (Linux)."""

    type: str  # ext4, nfs4, lustre, beegfs, fuse.fusefat, ...
    source: str  # the device or server:/export
    mount_point: str
    options: frozenset[str]  # the mount's and the superblock's options

    def describe(self) -> str:
        return f"{self.type} filesystem {self.source} mounted at {self.mount_point}"

    def option(self, name: str) -> str | None:
        """The value of option `name=value`, or None."""
        for option in self.options:
            key, _, value = option.partition("=")
            if key == name:
                return value
        return None


def _unescape_mountinfo(field: str) -> str:
    # mountinfo writes space, tab, newline and backslash in octal (\040 ...)
    return re.sub(r"\\([0-7]{3})", lambda octal: chr(int(octal.group(1), 8)), field)


def filesystem_of(path: Path, mountinfo: str | None = None) -> Filesystem | None:
    """The mount that holds `path` (of those in mountinfo's order, the later hides the earlier); None off
    Linux or when unreadable."""
    if mountinfo is None:
        try:
            mountinfo = Path("/proc/self/mountinfo").read_text()
        except OSError:
            return None
    target = os.path.realpath(path)
    best: Filesystem | None = None
    for line in mountinfo.splitlines():
        left, sep, right = line.partition(" - ")
        fields, tail = left.split(), right.split()
        if not sep or len(fields) < 6 or len(tail) < 2:
            continue
        point = _unescape_mountinfo(fields[4])
        inside = target == point or target.startswith(point.rstrip("/") + "/")
        if inside and (best is None or len(point) >= len(best.mount_point)):
            options = fields[5].split(",") + (tail[2].split(",") if len(tail) > 2 else [])
            best = Filesystem(type=tail[0], source=_unescape_mountinfo(tail[1]), mount_point=point,
                              options=frozenset(options))
    return best


def describe_filesystem(path: Path) -> str:
    fs = filesystem_of(path)
    return fs.describe() if fs else "filesystem type unknown"


def flock_is_host_local(fs: Filesystem) -> bool:
    """True for NFS with local_lock=flock|all (`nolock`): flock succeeds on every host at once."""
    return fs.type in ("nfs", "nfs4") and fs.option("local_lock") in ("flock", "all")


class PeakMemory:
    """The most memory this process took above its size at start(): a load's peak, not what it keeps.

    Linux resets VmHWM via /proc/self/clear_refs; elsewhere an earlier peak may overstate it (the safe side).
    """

    def __init__(self) -> None:
        self._before = 0

    def start(self) -> PeakMemory:
        if sys.platform.startswith("linux"):
            try:
                with open("/proc/self/clear_refs", "w") as handle:
                    handle.write("5")
            except OSError as exc:  # an old kernel or a restricted /proc: the lifetime peak stands in
                log.debug("cannot reset the peak resident size (%s)", exc)
        self._before = int(psutil.Process().memory_info().rss)
        return self

    def grown(self) -> int:
        """Bytes of the peak since start() above the size at start() (0 if it never grew)."""
        return max(peak_rss() - self._before, 0)


def peak_rss() -> int:
    """This process's peak resident size in bytes (since start, unless a PeakMemory reset it)."""
    if sys.platform.startswith("linux"):
        try:
            with open("/proc/self/status") as handle:
                for line in handle:
                    if line.startswith("VmHWM:"):
                        return int(line.split()[1]) * 1024
        except (OSError, ValueError, IndexError):
            pass
    if sys.platform == "win32":
        return int(psutil.Process().memory_info().peak_wset)
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak) if sys.platform == "darwin" else int(peak) * 1024  # bytes on macOS, KiB elsewhere
