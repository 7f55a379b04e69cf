"""The storage guard of every command: retry transient errors with jitter, stop clearly on the rest.

Jitter keeps K shards from hitting a recovering file server at once; a failed fsync is never
retried (PostgreSQL's 2018 lesson). Only steps safe to repeat may be guarded. See docs/RELIABILITY.md.
"""

from __future__ import annotations

import errno
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from shardrun.errors import StorageError
from shardrun.storage.atomic import FsyncFailed

if TYPE_CHECKING:
    import tenacity

log = logging.getLogger(__name__)

T = TypeVar("T")

TRANSIENT_ERRNOS = frozenset({errno.EIO, errno.EAGAIN, errno.EBUSY, errno.ESTALE, errno.EINTR, errno.ETIMEDOUT})


@dataclass(frozen=True)
class Remedy:
    """What to run once the storage is fixed (`then`), and where output could go instead (`elsewhere`)."""

    then: str
    elsewhere: str | None


# Before anything is committed (a new run dir, its set-up) repeating the command is the whole fix.
SAME_COMMAND = Remedy("run the same command again", "output.root or --out")
SHARD = Remedy("resume the shard (run_production --resume SHARD_DIR, or launch_shards again with --out RUN): what is"
               " committed is kept, checked, and not computed again", "output.root or --out")

# the problem and its fix, by errno (`{elsewhere}`: the command's own output flag or key)
_PROBLEMS: dict[int | None, tuple[str, str | None]] = {
    errno.ENOSPC: ("the disk is full: free space", None),
    errno.EDQUOT: ("the disk quota is exhausted: free space or raise the quota", None),
    errno.EFBIG: ("a file size limit was hit (ulimit -f): raise it", None),
    errno.EROFS: ("the filesystem is read-only: make it writable", "choose a writable {elsewhere}"),
    errno.EACCES: ("permission denied: make the dir writable for this user", "choose another {elsewhere}"),
    errno.EPERM: ("operation not permitted: make the dir writable for this user", "choose another {elsewhere}"),
    errno.ENOENT: ("a dir was moved, renamed or removed while the command ran: put it back where it was", None),
    errno.ENOTDIR: ("a part of the path is a file, not a dir (if a dir was replaced while the command ran, put it"
                    " back)", "choose another {elsewhere}"),
    errno.EEXIST: ("a file of that name is in the way where a dir is needed", "choose another {elsewhere}"),
    errno.EBUSY: ("it is busy (a mount point, or in use by another program): free it", "choose another {elsewhere}"),
}
_FSYNC_PROBLEM = ("the filesystem could not confirm that the data reached the disk, so it may not survive a crash"
                  " of the machine (a failed fsync is not retried: after one, a second fsync can succeed without"
                  " writing the data): check the disk or the file server (dmesg)")
_OTHER_PROBLEM = ("check the dir and the disk", None)


def is_transient(exc: BaseException) -> bool:
    """A failure that may heal by waiting, in a step that may be repeated: never a failed fsync."""
    return isinstance(exc, OSError) and not isinstance(exc, FsyncFailed) and exc.errno in TRANSIENT_ERRNOS


def storage_error(what: str, where: Path, exc: OSError, remedy: Remedy = SAME_COMMAND) -> StorageError:
    """The exit-6 error for a write that failed with `exc`: the file, the dir, the system's words, the fix."""
    if isinstance(exc, FsyncFailed):
        (fix, alternative), failed = (_FSYNC_PROBLEM, None), f"cannot make {what} durable in {where}"
    else:
        (fix, alternative), failed = _PROBLEMS.get(exc.errno, _OTHER_PROBLEM), f"cannot write {what} in {where}"
    if alternative and remedy.elsewhere:
        fix += ", or " + alternative.format(elsewhere=remedy.elsewhere)
    still = " (still failing after retries)" if is_transient(exc) else ""
    return StorageError(f"{failed}{still}: {exc.strerror or exc}; {fix}, then {remedy.then}.")


# write-only errnos: one reaching the top level escaped a guard, and is a storage failure, not a bug
WRITE_ONLY_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG})


def escaped_storage_failure(exc: BaseException) -> StorageError | None:
    """The StorageError of a failed write that reached a command's top level without a guard, or None."""
    if not isinstance(exc, OSError) or not (isinstance(exc, FsyncFailed) or exc.errno in WRITE_ONLY_ERRNOS):
        return None
    path = Path(exc.filename) if exc.filename else None
    what, where = (path.name, path.parent) if path is not None else ("a file", Path("the output dir"))
    return storage_error(what, where, exc, SAME_COMMAND)


@dataclass(frozen=True)
class IoRetryPolicy:
    attempts: int = 6
    first_wait: float = 0.5  # the first wait is drawn from [first_wait / 4, first_wait], each next window doubles
    max_wait: float = 30.0

    def retrying(self, sleep: Callable[[float], None] = time.sleep) -> tenacity.Retrying:
        # imported at the first guarded write: merge, validate and monitor load this module for its error
        # mapping and start without tenacity (tests/test_architecture.py)
        import tenacity

        return tenacity.Retrying(
            sleep=sleep,
            stop=tenacity.stop_after_attempt(self.attempts),
            wait=tenacity.wait_random_exponential(multiplier=self.first_wait, min=self.first_wait / 4,
                                                  max=self.max_wait),
            retry=tenacity.retry_if_exception(is_transient),
            before_sleep=lambda state: log.warning(
                "transient I/O error (%s); retry %d of %d", state.outcome and state.outcome.exception(),
                state.attempt_number, self.attempts - 1,
            ),
            reraise=True,
        )


def durable_write(
    what: str, where: Path, write: Callable[[], T], policy: IoRetryPolicy = IoRetryPolicy(),
    sleep: Callable[[float], None] = time.sleep, remedy: Remedy = SAME_COMMAND,
) -> T:
    """Run `write` (safe to repeat), retrying transient errors; other OSErrors become a StorageError."""
    try:
        return policy.retrying(sleep)(write)
    except OSError as exc:
        raise storage_error(what, where, exc, remedy) from exc
