"""The I/O policy: transient errors are retried with backoff (sleeps recorded), the rest stop clearly."""

import errno
from pathlib import Path

import pytest

from shardrun.errors import StorageError
from shardrun.storage.durability import IoRetryPolicy, durable_write


def flaky(failures: list[int]):
    """A write that raises the given errnos one after another, then succeeds."""
    calls = []

    def write():
        calls.append(1)
        if failures:
            code = failures.pop(0)
            raise OSError(code, errno.errorcode[code])
        return "written"

    return write, calls


def test_transient_errors_are_retried_with_growing_waits():
    write, calls = flaky([errno.EIO, errno.EAGAIN, errno.ESTALE])
    sleeps = []
    assert durable_write("x", Path("d"), write, IoRetryPolicy(attempts=5, first_wait=0.5), sleeps.append) == "written"
    assert len(calls) == 4
    assert sleeps == sorted(sleeps) and len(sleeps) == 3 and sleeps[0] > 0


@pytest.mark.parametrize("code,fix", [
    (errno.ENOSPC, "the disk is full"),
    (errno.EROFS, "read-only"),
    (errno.EACCES, "permission denied"),
    (errno.EFBIG, "file size limit"),
])
def test_permanent_errors_stop_at_once_with_the_fix(code, fix):
    write, calls = flaky([code])
    sleeps = []
    with pytest.raises(StorageError) as error:
        durable_write("the result of user 'u1'", Path("shard-0-of-1/results"), write, IoRetryPolicy(), sleeps.append)
    assert calls == [1] and sleeps == []
    assert fix in str(error.value) and "shard-0-of-1/results" in str(error.value) and "'u1'" in str(error.value)
    assert error.value.exit_code == 6


def test_a_transient_error_that_persists_ends_as_storage_error():
    write, calls = flaky([errno.EIO] * 10)
    sleeps = []
    with pytest.raises(StorageError, match="still failing after retries"):
        durable_write("status.json", Path("d"), write, IoRetryPolicy(attempts=3), sleeps.append)
    assert len(calls) == 3 and len(sleeps) == 2
