"""What differs between POSIX and Windows, in one place: the rest of shardrun calls these and never
branches on the platform itself, so nothing POSIX-only is touched on Windows.

Linux is the platform that is tested; the Windows branches keep the same contracts with the means
Windows has (README: "Set-up and the two commands" lists what differs).
"""

from __future__ import annotations

import logging
import os
import signal
import sys
from typing import IO, Any

log = logging.getLogger(__name__)

WINDOWS = os.name == "nt"

# Signals that ask a process to drain (finish the user in flight, then stop). SIGHUP: a lost terminal,
# or the kernel telling an orphaned, suspended shard that its launcher is gone. Windows has no SIGHUP;
# SIGBREAK is its Ctrl-Break.
STOP_SIGNALS: tuple[signal.Signals, ...] = tuple(
    getattr(signal, name) for name in ("SIGTERM", "SIGINT", "SIGHUP", "SIGBREAK") if hasattr(signal, name)
)


# HotSpot suspends and resumes its threads with SIGUSR2 unless _JAVA_SR_SIGNUM names another signal, and
# then takes SIGUSR2 from Python: a scheduler's `--signal=USR2` warning would be lost once the JVM runs.
# A real-time signal nobody else uses takes that role instead (HotSpot accepts one above SIGSEGV).
JVM_SUSPEND_SIGNAL_ENV = "_JAVA_SR_SIGNUM"


def keep_usr2_from_jvm() -> None:
    """Before the JVM starts: move HotSpot's suspend/resume signal off SIGUSR2 (POSIX; a user's own choice stands)."""
    if not WINDOWS and hasattr(signal, "SIGRTMIN"):
        os.environ.setdefault(JVM_SUSPEND_SIGNAL_ENV, str(signal.SIGRTMIN + 6))


def lock_exclusive(handle: IO[Any]) -> None:
    """A non-blocking exclusive lock on an open file that the OS drops when the process dies; OSError if
    another process holds it (flock on POSIX, a one-byte region lock on Windows)."""
    if WINDOWS:
        import msvcrt

        handle.seek(0)
        msvcrt.locking(handle.fileno(), msvcrt.LK_NBLCK, 1)
        return
    import fcntl

    fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)


def signal_on_parent_death(signum: int) -> bool:
    """Ask the kernel to send `signum` to this process when its parent dies (Linux prctl
    PR_SET_PDEATHSIG). False where there is no such request (other platforms) or it failed."""
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
    if WINDOWS:
        import psutil

        psutil.Process().nice(psutil.BELOW_NORMAL_PRIORITY_CLASS)
        return
    os.nice(steps)


def own_process_group() -> dict[str, Any]:
    """subprocess.Popen options that start a child in its own process group (so a terminal's Ctrl-C
    reaches the launcher alone, which then drains its shards once)."""
    if WINDOWS:
        import subprocess

        return {"creationflags": subprocess.CREATE_NEW_PROCESS_GROUP}
    return {"process_group": 0}


def suspend(pid: int) -> None:
    """Stop a process from running until `resume` (SIGSTOP; on Windows, psutil suspends its threads)."""
    if WINDOWS:
        import psutil

        psutil.Process(pid).suspend()
        return
    os.kill(pid, signal.SIGSTOP)


def resume(pid: int) -> None:
    if WINDOWS:
        import psutil

        psutil.Process(pid).resume()
        return
    os.kill(pid, signal.SIGCONT)
