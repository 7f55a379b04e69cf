"""At most one live process per shard dir: an OS file lock, or a lease where locks do not work.

SHARDRUN_LOCK picks auto, flock or lease; each refuses a dir the other holds (docs/SHARED_FILESYSTEMS.md).
"""

from __future__ import annotations

import errno
import json
import logging
import os
import signal
import socket
import time
from collections.abc import Callable
from typing import IO, Any

from shardrun import platforms
from shardrun.errors import EnvironmentProblem, LocksUnsupported, ShardLocked
from shardrun.storage.atomic import utc_now
from shardrun.storage.lease import (
    DEFAULT_STALE_SECONDS,
    LEASE_STALE_ENV,
    Holder,
    JobAsker,
    Lease,
    LeaseHeld,
    SchedulerJob,
    read_lease,
    staleness,
)
from shardrun.storage.paths import ShardPaths

log = logging.getLogger(__name__)

LOCK_ENV = "SHARDRUN_LOCK"
LOCK_MECHANISMS = ("auto", "flock", "lease")


def lock_mechanism(value: str | None) -> str:
    """SHARDRUN_LOCK's value (unset or empty: auto)."""
    chosen = (value or "auto").strip().lower()
    if chosen not in LOCK_MECHANISMS:
        raise EnvironmentProblem(f"{LOCK_ENV}={value!r} is not a lock mechanism; set it to auto (the default),"
                                 " flock or lease, or unset it (docs/SHARED_FILESYSTEMS.md).")
    return chosen


def lease_stale_seconds(value: str | None) -> float:
    """SHARDRUN_LEASE_STALE_SECONDS's value (unset or empty: the default)."""
    if not value or not value.strip():
        return DEFAULT_STALE_SECONDS
    try:
        seconds = float(value)
    except ValueError:
        seconds = float("nan")
    if not seconds > 0 or seconds == float("inf"):
        raise EnvironmentProblem(f"{LEASE_STALE_ENV}={value!r} is not a number of seconds above 0; set it to, for"
                                 f" example, {DEFAULT_STALE_SECONDS:g}, or unset it.")
    return seconds


def stop_this_process() -> None:
    """On a lost lease, SIGTERM: the shard drains and is resumed later."""
    signal.raise_signal(signal.SIGTERM)


class ShardLock:
    """At most one live process per shard dir (the module's rule).

    The kernel drops the OS lock however the process dies, so a SIGKILL never blocks a resume.
    """

    def __init__(self, paths: ShardPaths, mechanism: str | None = None, stale_after: float | None = None,
                 os_lock: Callable[[IO[Any]], None] | None = None, on_lease_lost: Callable[[], None] | None = None,
                 job: SchedulerJob | None = None, ask_scheduler: JobAsker | None = None):
        self._paths = paths
        self._path = paths.lock
        self.mechanism = lock_mechanism(mechanism if mechanism is not None else os.environ.get(LOCK_ENV))
        self.stale_after = (stale_after if stale_after is not None
                            else lease_stale_seconds(os.environ.get(LEASE_STALE_ENV)))
        # resolved at call time, so a test can fake a filesystem without locks
        self._os_lock = os_lock
        self._on_lease_lost = on_lease_lost or stop_this_process
        self._job = job
        self._ask_scheduler = ask_scheduler
        self._handle: IO[Any] | None = None
        self._lease: Lease | None = None

    @property
    def uses_lease(self) -> bool:
        return self._lease is not None

    def acquire(self) -> None:
        handle, unsupported = self._take_os_lock()
        try:
            use_lease = self._lease_needed(unsupported)
            if use_lease:
                lease = Lease(self._paths.lease, stale_after=self.stale_after, on_lost=self._on_lease_lost,
                              job=self._job, ask_scheduler=self._ask_scheduler)
                try:
                    lease.acquire()
                except LeaseHeld as held:
                    raise self._locked(held.state, held.why) from None
                self._lease = lease
            else:
                self._refuse_a_live_lease()
        except BaseException:
            handle.close()
            raise
        handle.seek(0)
        handle.truncate()
        handle.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": utc_now()}))
        handle.flush()
        self._handle = handle

    def _take_os_lock(self) -> tuple[IO[Any], OSError | None]:
        """The lock file, open and locked (or open, with the error, where there are no locks); ShardLocked if held."""
        handle = open(self._path, "a+", encoding="utf-8")  # noqa: SIM115 (held with the lock)
        try:
            (self._os_lock or platforms.lock_exclusive)(handle)
        except OSError as exc:
            if platforms.locks_unsupported(exc):
                return handle, exc
            if platforms.lock_is_held(exc):
                handle.seek(0)
                holder = handle.read().strip() or "unknown process"
                handle.close()
                raise ShardLocked(
                    f"shard dir {self._path.parent} is in use by another process ({holder}); wait for it to end,"
                    " or stop it, then resume. Two processes must never run one shard."
                ) from None
            handle.close()
            raise
        return handle, None

    def _lease_needed(self, unsupported: OSError | None) -> bool:
        shard_dir = self._path.parent
        if self.mechanism == "lease":
            return True
        if unsupported is not None:
            where = platforms.describe_filesystem(shard_dir)
            if self.mechanism == "flock":
                raise LocksUnsupported(
                    f"file locks are not supported in shard dir {shard_dir} ({where}): flock failed with"
                    f" {errno.errorcode.get(unsupported.errno or 0, unsupported.errno)} ({unsupported.strerror}), and"
                    f" {LOCK_ENV}=flock asks for them. Unset {LOCK_ENV} (or set it to lease) to use a lease file"
                    " instead (docs/SHARED_FILESYSTEMS.md), or mount the filesystem with locking (NFS: without"
                    " nolock, with the lock manager running), then resume."
                )
            log.warning(
                "file locks are not supported in %s (%s: flock failed with %s, %s); using a lease file (%s) instead."
                " A shard killed on this host is taken over at once; one killed on another host at once when SLURM says"
                " its job no longer runs there, else once its heartbeat is %g s old (%s). Set %s=lease for every process of the run to choose it"
                " on purpose (docs/SHARED_FILESYSTEMS.md).",
                shard_dir, where, errno.errorcode.get(unsupported.errno or 0, unsupported.errno), unsupported.strerror,
                self._paths.lease.name, self.stale_after, LEASE_STALE_ENV, LOCK_ENV)
            return True
        fs = platforms.filesystem_of(shard_dir)
        if self.mechanism == "auto" and fs is not None and platforms.flock_is_host_local(fs):
            log.warning(
                "%s is on %s, whose flock locks only this host (local_lock=%s): another host would get the same"
                " lock at once. Using a lease file (%s) as well. Set %s=lease for every process of the run to"
                " choose it on purpose (docs/SHARED_FILESYSTEMS.md).",
                shard_dir, fs.describe(), fs.option("local_lock"), self._paths.lease.name, LOCK_ENV)
            return True
        return False

    def _refuse_a_live_lease(self) -> None:
        """A lease holder does not show in the OS lock: refuse the shard unless its lease is stale or absent."""
        try:
            state = read_lease(self._paths.lease)
        except FileNotFoundError:
            return
        judgement = staleness(state, Holder.this_process(self._job), time.time(), self.stale_after,
                              ask_scheduler=self._ask_scheduler)
        if not judgement.stale:
            raise self._locked(state, judgement.why)

    def _locked(self, state: Any, why: str | None = None) -> ShardLocked:
        held = state.describe(time.time()) if state is not None else "a lease"
        alive = f"; {why}" if why else ""
        return ShardLocked(
            f"shard dir {self._path.parent} is in use by another process ({held}{alive}); wait for it to end, or stop"
            " it, then resume. Two processes must never run one shard. A lease is taken over when its process is"
            " gone (on the same host), at once when its scheduler says the holder's job no longer runs on the"
            f" holder's node, or else when its heartbeat is older than {self.stale_after:g} s ({LEASE_STALE_ENV})."
        )

    def release(self) -> None:
        if self._lease is not None:
            self._lease.release()
            self._lease = None
        if self._handle is not None:
            self._handle.close()
            self._handle = None

    def __enter__(self) -> ShardLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
