"""What to do when writing a shard's files fails: retry what is transient, stop clearly on the rest.

A network filesystem under load returns EIO, EAGAIN or ESTALE for a moment and then works again;
those writes are retried with backoff (tenacity). A full disk, a read-only or forbidden dir does
not heal by waiting: the shard stops at once with an error that names the dir and the fix, and
nothing already committed is touched. The policy is a small pure object; the sleep is injected so
tests record the waits instead of taking them.
"""

from __future__ import annotations

import errno
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, TypeVar

import tenacity

from shardrun.errors import StorageError

log = logging.getLogger(__name__)

T = TypeVar("T")

TRANSIENT_ERRNOS = frozenset({errno.EIO, errno.EAGAIN, errno.EBUSY, errno.ESTALE, errno.EINTR, errno.ETIMEDOUT})

_PERMANENT_FIXES = {
    errno.ENOSPC: "the disk is full: free space (or move output.root) and resume the shard",
    errno.EDQUOT: "the disk quota is exhausted: free space or raise the quota, then resume the shard",
    errno.EFBIG: "a file size limit was hit (ulimit -f): raise it, then resume the shard",
    errno.EROFS: "the filesystem is read-only: choose a writable output.root or --out, then resume",
    errno.EACCES: "permission denied: make the dir writable for this user, then resume",
    errno.EPERM: "operation not permitted: make the dir writable for this user, then resume",
}


def is_transient(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in TRANSIENT_ERRNOS


@dataclass(frozen=True)
class IoRetryPolicy:
    attempts: int = 6
    first_wait: float = 0.5
    max_wait: float = 30.0

    def retrying(self, sleep: Callable[[float], None] = time.sleep) -> tenacity.Retrying:
        return tenacity.Retrying(
            sleep=sleep,
            stop=tenacity.stop_after_attempt(self.attempts),
            wait=tenacity.wait_exponential(multiplier=self.first_wait, max=self.max_wait),
            retry=tenacity.retry_if_exception(is_transient),
            before_sleep=lambda state: log.warning(
                "transient I/O error (%s); retry %d of %d", state.outcome.exception(), state.attempt_number,
                self.attempts - 1,
            ),
            reraise=True,
        )


def durable_write(
    what: str, where: Path, write: Callable[[], T], policy: IoRetryPolicy = IoRetryPolicy(),
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """Run `write`, retrying transient errors; any other OSError becomes a StorageError with the fix."""
    try:
        return policy.retrying(sleep)(write)
    except OSError as exc:
        fix = _PERMANENT_FIXES.get(exc.errno, "check the dir and the disk, then resume the shard")
        transient = " (still failing after retries)" if is_transient(exc) else ""
        raise StorageError(f"cannot write {what} in {where}{transient}: {exc.strerror or exc}; {fix}.") from exc
