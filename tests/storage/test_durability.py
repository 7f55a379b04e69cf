"""The storage guard: transient errors are retried with jittered backoff (sleeps recorded), only in steps
that are safe to repeat; a failed fsync is never retried; the rest stop clearly, with each command's fix.

The commit cases inject the kernel's answer into one step of a real group commit on real files (a table,
in the style of a crash table: the fault, where it lands, what must hold after). The answers are
stand-ins, named as such: this machine cannot make a dir fsync fail with EIO, nor a file server lose the
reply to a link that was made. Everything else is real: the files, the links, the scan of a resume.
"""

import errno
import json
import logging
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from shardrun.cli.common import command_parser, guarded
from shardrun.errors import AlreadyCommitted, StorageError
from shardrun.shard.loop import ShardLogFile
from shardrun.storage.atomic import FsyncFailed
from shardrun.storage.commits import GroupCommitter, append_line_once, error_line, scan_committed
from shardrun.storage.durability import SHARD, IoRetryPolicy, Remedy, durable_write, storage_error
from shardrun.storage.paths import ShardPaths, ensure_identity


def flaky(failures: list[int], kind: type = OSError):
    """A write that raises the given errnos one after another, then succeeds."""
    calls = []

    def write():
        calls.append(1)
        if failures:
            code = failures.pop(0)
            raise kind(code, errno.errorcode[code])
        return "written"

    return write, calls


def test_transient_errors_are_retried_in_growing_jittered_windows():
    write, calls = flaky([errno.EIO, errno.EAGAIN, errno.ESTALE])
    sleeps = []
    policy = IoRetryPolicy(attempts=5, first_wait=0.5)
    assert durable_write("x", Path("d"), write, policy, sleeps.append) == "written"
    assert len(calls) == 4 and len(sleeps) == 3
    for retry, wait in enumerate(sleeps):  # the n-th wait is drawn from [first / 4, first * 2^n]
        assert policy.first_wait / 4 <= wait <= policy.first_wait * 2 ** retry


def test_shards_that_fail_together_do_not_retry_together():
    """K shards that met the same hiccup of one file server draw different waits (full jitter)."""
    first_waits = []
    for _ in range(20):
        write, _ = flaky([errno.EIO])
        sleeps = []
        durable_write("x", Path("d"), write, IoRetryPolicy(), sleeps.append)
        first_waits.extend(sleeps)
    assert len(set(first_waits)) > 10


@pytest.mark.parametrize("code,fix", [
    (errno.ENOSPC, "the disk is full"),
    (errno.EDQUOT, "quota"),
    (errno.EROFS, "read-only"),
    (errno.EACCES, "permission denied"),
    (errno.EFBIG, "file size limit"),
    (errno.ENOENT, "moved, renamed or removed while the command ran"),
    (errno.ENOTDIR, "a part of the path is a file, not a dir"),
    (errno.EEXIST, "a file of that name is in the way"),
])
def test_permanent_errors_stop_at_once_with_the_fix(code, fix):
    write, calls = flaky([code])
    sleeps = []
    with pytest.raises(StorageError) as error:
        durable_write("the result of user 'u1'", Path("shard-0-of-1/results"), write, IoRetryPolicy(), sleeps.append,
                      remedy=SHARD)
    assert calls == [1] and sleeps == []
    assert fix in str(error.value) and "shard-0-of-1/results" in str(error.value) and "'u1'" in str(error.value)
    assert "resume the shard" in str(error.value)
    assert error.value.exit_code == 6


def test_a_transient_error_that_persists_ends_as_storage_error():
    write, calls = flaky([errno.EIO] * 10)
    sleeps = []
    with pytest.raises(StorageError, match="still failing after retries"):
        durable_write("status.json", Path("d"), write, IoRetryPolicy(attempts=3), sleeps.append)
    assert len(calls) == 3 and len(sleeps) == 2


@pytest.mark.parametrize("code", [errno.EIO, errno.EAGAIN, errno.ENOSPC])
def test_a_failed_fsync_is_never_retried(code):
    """Whatever its errno: after a failed fsync the kernel may have dropped the pages, a second one would lie."""
    write, calls = flaky([code], kind=FsyncFailed)
    sleeps = []
    with pytest.raises(StorageError) as error:
        durable_write("status.json", Path("d"), write, IoRetryPolicy(), sleeps.append, remedy=SHARD)
    assert calls == [1] and sleeps == []
    assert "cannot make status.json durable in d" in str(error.value)
    assert "may not survive a crash" in str(error.value) and "still failing" not in str(error.value)


def test_each_command_names_its_own_next_step():
    merge = Remedy("run the same merge_shard_results command again", "--output dir")
    error = storage_error("the result set", Path("out"), OSError(errno.EROFS, "Read-only file system"), merge)
    assert "choose a writable --output dir, then run the same merge_shard_results command again" in str(error)
    assert "resume" not in str(error)
    assert "output.root or --out" in str(storage_error("x", Path("d"), OSError(errno.EACCES, "denied"), SHARD))
    # a run under way lives where it is: no other place is offered
    running = Remedy("continue the run: launch_shards --out RUN", None)
    error = str(storage_error("launcher.json", Path("RUN"), OSError(errno.EROFS, "Read-only file system"), running))
    assert "read-only: make it writable, then continue the run: launch_shards --out RUN." in error
    new_run = storage_error("a new run dir", Path("out"), OSError(errno.ENOSPC, "full"))
    assert "run the same command again" in str(new_run)


# --- faults in one step of a group commit ------------------------------------------------------


class Kernel:
    """Stand-in answers of the kernel for one step of a commit (see the module doc): the `on_call`-th call
    of `step` and the `times - 1` after it fail with `errno_`; `landed`: each failed call did its work
    first (a file server whose reply was lost)."""

    def __init__(self, monkeypatch, step: str, errno_: int, on_call: int = 1, times: int = 1, landed: bool = False):
        self.calls = {"file fsync": 0, "dir fsync": 0, "publish": 0}
        self.step, self.errno, self.on_call, self.times, self.landed = step, errno_, on_call, times, landed
        real_fsync, real_link = os.fsync, os.link

        def fsync(fd):
            step = "dir fsync" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file fsync"
            self._maybe_fail(step, lambda: real_fsync(fd))

        def link(src, dst, *args, **kwargs):
            self._maybe_fail("publish", lambda: real_link(src, dst, *args, **kwargs))

        monkeypatch.setattr(os, "fsync", fsync)
        monkeypatch.setattr(os, "link", link)

    def _maybe_fail(self, step: str, call: Callable[[], None]) -> None:
        self.calls[step] += 1
        n = self.calls[step]
        if step == self.step and self.on_call <= n < self.on_call + self.times:
            if self.landed:
                call()
            raise OSError(self.errno, os.strerror(self.errno))
        call()


@dataclass(frozen=True)
class CommitFault:
    name: str
    step: str  # "file fsync" (the batch's temporary file), "publish" (its link into results/), "dir fsync"
    errno: int
    times: int = 1
    landed: bool = False  # the failed call did its work before failing
    committed: bool = True  # the batch is in results/ afterwards
    raises: str | None = None  # a fragment of the StorageError, or None: the commit succeeds
    calls: dict = None  # how often each step ran (a failed fsync: once)


COMMIT_FAULTS = [
    CommitFault("eio-on-dir-fsync-after-publish", "dir fsync", errno.EIO, committed=True,
                raises="the filesystem could not confirm", calls={"dir fsync": 1, "publish": 1, "file fsync": 1}),
    CommitFault("enospc-on-dir-fsync-after-publish", "dir fsync", errno.ENOSPC, committed=True,
                raises="the filesystem could not confirm", calls={"dir fsync": 1, "publish": 1}),
    CommitFault("eio-on-batch-fsync", "file fsync", errno.EIO, committed=False,
                raises="cannot make the results of 2 users (b-000001.jsonl) durable",
                calls={"file fsync": 1, "publish": 0, "dir fsync": 0}),
    CommitFault("eio-on-publish-that-landed", "publish", errno.EIO, landed=True, committed=True,
                calls={"publish": 1, "file fsync": 1, "dir fsync": 1}),
    CommitFault("eio-on-publish-that-did-not-land", "publish", errno.EIO, times=2, committed=True,
                calls={"publish": 3, "file fsync": 1, "dir fsync": 1}),
    CommitFault("estale-on-publish-that-persists", "publish", errno.ESTALE, times=99, committed=False,
                raises="still failing after retries", calls={"publish": 3, "dir fsync": 0}),
    CommitFault("enospc-on-publish", "publish", errno.ENOSPC, committed=False, raises="the disk is full",
                calls={"publish": 1, "dir fsync": 0}),
]


def guard_without_waiting(what, where, write):
    return durable_write(what, where, write, IoRetryPolicy(attempts=3), sleep=lambda seconds: None, remedy=SHARD)


@pytest.mark.parametrize("fault", COMMIT_FAULTS, ids=[f.name for f in COMMIT_FAULTS])
def test_commit_fault(fault: CommitFault, tmp_path, monkeypatch):
    shard = ShardPaths(tmp_path / "shard-0-of-1")
    shard.make()
    committed_at_start = []
    committer = GroupCommitter(shard, {}, interval_seconds=0, guard=guard_without_waiting,
                               on_commit=committed_at_start.extend)
    committer.add("alice", [{"v": 1}])
    committer.add("bob", [{"v": 2}])
    kernel = Kernel(monkeypatch, fault.step, fault.errno, times=fault.times, landed=fault.landed)
    if fault.raises is None:
        committer.flush()
    else:
        with pytest.raises(StorageError) as error:
            committer.flush()
        assert fault.raises in str(error.value) and error.value.exit_code == 6
        assert not isinstance(error.value, AlreadyCommitted)
    for step, count in (fault.calls or {}).items():
        assert kernel.calls[step] == count, (step, kernel.calls)
    batches = shard.batch_files()
    assert [p.name for p in batches] == (["b-000001.jsonl"] if fault.committed else [])
    assert committed_at_start == (["alice", "bob"] if fault.committed else [])
    assert list(shard.tmp.iterdir()) == []  # no scratch file left, whatever failed
    # The shard's way out (the drain, once the disk lets it) commits what is still queued and nothing twice,
    # raising no AlreadyCommitted; the resume then finds each user exactly once.
    monkeypatch.undo()
    assert committer.try_flush() is True
    assert [p.name for p in shard.batch_files()] == ["b-000001.jsonl"]
    assert sorted(scan_committed(shard)) == ["alice", "bob"]
    assert not (shard.results / "quarantine").exists()


def test_a_retried_shard_json_whose_link_landed_is_not_taken_for_an_earlier_run(tmp_path, monkeypatch):
    """shard.json's link lands but answers EIO (a lost reply): the retry finds its own bytes and goes on,
    instead of refusing the dir as one that 'already holds a shard of an earlier run'."""
    shard = ShardPaths(tmp_path / "shard-0-of-1")
    shard.make()
    identity = {"shard": "0/1", "config_hash": "abc", "data_fingerprint": "d", "pilot": None}
    kernel = Kernel(monkeypatch, "publish", errno.EIO, landed=True)
    assert ensure_identity(shard, identity, resuming=False, guard=lambda write: guard_without_waiting(
        "shard.json", shard.dir, write)) == identity
    # the retry links again, finds the name taken by its own bytes, and says it created the file
    assert kernel.calls["publish"] == 2 and json.loads(shard.identity.read_text()) == identity
    monkeypatch.undo()
    assert ensure_identity(shard, identity, resuming=True) == identity


def test_a_batch_name_taken_by_another_file_is_still_refused(tmp_path):
    """publish_once repeats only its own landing: a different file under the batch's name is a bug, not a retry."""
    shard = ShardPaths(tmp_path / "shard-0-of-1")
    shard.make()
    (shard.results / "b-000001.jsonl").write_bytes(b"someone else's bytes\n")
    committer = GroupCommitter(shard, {}, interval_seconds=0)
    committer._next_number = 1  # as if the listing had missed the file
    committer.add("alice", [{"v": 1}])
    with pytest.raises(AlreadyCommitted):
        committer.flush()


def test_an_error_line_is_appended_once_when_an_earlier_attempt_landed(tmp_path):
    """errors.jsonl: the retry of an append whose write landed before its error (a lost reply) finds the
    line at the end and does not append it twice; the next line is appended."""
    path = tmp_path / "errors.jsonl"
    first, second = error_line({"user_id": "a"}), error_line({"user_id": "b"})
    append_line_once(path, first)
    append_line_once(path, first)  # the retry
    append_line_once(path, second)
    assert path.read_bytes() == first + second


@pytest.mark.parametrize("failure", [
    OSError(errno.ENOSPC, "No space left on device", "/data/out/run/merged/results.csv"),
    OSError(errno.EROFS, "Read-only file system", "/data/out/run/merged/results.csv"),
    FsyncFailed(errno.EIO, "Input/output error", "/data/out/run/merged/results.csv"),
])
def test_a_write_without_a_guard_still_ends_as_a_storage_error(failure, capsys):
    """The net of every command (cli/common.guarded): exit 6 with the file and the fix, no traceback."""
    def command(args):
        raise failure

    code = guarded(command, command_parser("some_command", "a command"), [])
    err = capsys.readouterr().err
    assert code == 6 and "Traceback" not in err and "please report" not in err
    assert err.startswith("error: cannot ") and "results.csv" in err and " in /data/out/run/merged: " in err
    assert "run the same command again" in err


def test_other_errors_are_still_reported_as_bugs(capsys):
    def command(args):
        raise OSError(errno.EINVAL, "Invalid argument")

    assert guarded(command, command_parser("some_command", "a command"), []) == 70


def test_a_shard_log_on_a_full_disk_says_so_once_without_a_traceback(capsys):
    """/dev/full: a real device whose every write fails with ENOSPC."""
    handler = ShardLogFile(Path("/dev/full"))
    logger = logging.getLogger("test_durability.full_disk")
    logger.addHandler(handler)
    try:
        for number in range(3):
            logger.warning("line %d", number)
    finally:
        logger.removeHandler(handler)
        handler.close()
    err = capsys.readouterr().err
    assert err.count("warning: cannot write the shard's log /dev/full (No space left on device)") == 1
    assert "Traceback" not in err and "Logging error" not in err
