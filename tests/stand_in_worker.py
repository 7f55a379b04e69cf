"""run_production with stand-ins for what this machine cannot produce for real, each chosen by an
environment variable and each named for what it stands in for. Everything else is the real worker.

STAND_IN_NO_FLOCK=ENOLCK (or ENOSYS, EOPNOTSUPP)
    flock fails with that errno: stands in for an NFS mount without lock support (or a Lustre mount
    without flock). This machine's filesystems all have flock, and a real NFS client is not available.
STAND_IN_KILL_BEFORE_RENAME=N
    SIGKILL this process when its N-th rename into results/ is about to happen, after the existence
    check: stands in for a crash at exactly that instant (a kill from outside cannot aim at it).
STAND_IN_KILL_AT_BATCH_FSYNC=N
    SIGKILL this process when the fsync of its N-th batch file is about to happen, after the batch's
    bytes were written to its temporary file: stands in for a crash between a group commit's write and
    its fsync (a kill from outside cannot aim at it).
STAND_IN_FSYNC_EIO=DIR:N
    the N-th fsync of the dir named DIR or of a file in it fails with EIO, once (the fsync itself is not
    made): stands in for a disk or a file server that failed to write back, which this machine cannot
    produce on demand. `results:3` fails the dir fsync after the third batch was published; `.tmp:3`
    the fsync of the third batch's temporary file, before it is published.
STAND_IN_SLOW_EXIT=S
    at the process's exit (an atexit hook): put back the default action of every stop signal whose handler
    is not "ignore", as Python's finalization does (_PySignal_Fini), print "exiting", then sleep S seconds:
    stands in for the rest of a shard process's exit (the JVM's shutdown, the interpreter's teardown), the
    window in which a stop signal can still arrive.
STAND_IN_COMMIT_EVERY_USERS=N
    the group committer's clock counts the users that ended instead of seconds, and its interval is N of
    them: every batch holds N users (the last one the rest), whatever the machine's load. Stands in for
    a machine that ends N users within each commit interval, which a shared, busy machine does not
    guarantee (a time-based batch there may hold one user).
STAND_IN_KILL_AFTER_LEASE_ASIDE=1
    SIGKILL this process right after it renamed a stale lease aside, before it creates its own: stands
    in for a crash in the middle of a takeover.
"""

from __future__ import annotations

import errno
import os
import signal
import sys
from pathlib import Path


def install_stand_ins() -> None:
    slow_exit = float(os.environ.get("STAND_IN_SLOW_EXIT") or 0)
    if slow_exit:
        import atexit
        import time

        from shardrun.early_signals import STOP_SIGNALS

        def slow_shutdown() -> None:
            for sig in STOP_SIGNALS:
                if signal.getsignal(sig) is not signal.SIG_IGN:
                    signal.signal(sig, signal.SIG_DFL)
            print("exiting", flush=True)
            time.sleep(slow_exit)

        atexit.register(slow_shutdown)

    no_flock = os.environ.get("STAND_IN_NO_FLOCK")
    if no_flock:
        import shardrun.platforms

        code = getattr(errno, no_flock)

        def flock_on_a_filesystem_without_locks(handle) -> None:
            raise OSError(code, os.strerror(code))

        shardrun.platforms.lock_exclusive = flock_on_a_filesystem_without_locks

    commit_every = int(os.environ.get("STAND_IN_COMMIT_EVERY_USERS") or 0)
    if commit_every:
        from shardrun.storage.commits import GroupCommitter

        users_ended = 0
        real_init, real_add = GroupCommitter.__init__, GroupCommitter.add

        def init_counting_users(self, *args, **kwargs) -> None:
            real_init(self, *args, **{**kwargs, "interval_seconds": commit_every, "clock": lambda: users_ended})

        def add_counting_users(self, *args, **kwargs) -> None:
            nonlocal users_ended
            real_add(self, *args, **kwargs)
            users_ended += 1

        GroupCommitter.__init__ = init_counting_users
        GroupCommitter.add = add_counting_users

    kill_before = int(os.environ.get("STAND_IN_KILL_BEFORE_RENAME") or 0)
    kill_after_aside = os.environ.get("STAND_IN_KILL_AFTER_LEASE_ASIDE") == "1"
    if kill_before or kill_after_aside:
        real_rename = os.rename
        renames_into_results = 0

        def rename(src, dst, *args, **kwargs):
            nonlocal renames_into_results
            if kill_before and Path(dst).parent.name == "results":
                renames_into_results += 1
                if renames_into_results == kill_before:
                    os.kill(os.getpid(), signal.SIGKILL)
            real_rename(src, dst, *args, **kwargs)
            if kill_after_aside and Path(src).name == "lease" and ".taken-" in Path(dst).name:
                os.kill(os.getpid(), signal.SIGKILL)

        os.rename = rename

    kill_at_fsync = int(os.environ.get("STAND_IN_KILL_AT_BATCH_FSYNC") or 0)
    if kill_at_fsync:
        real_fsync = os.fsync
        batch_fsyncs = 0

        def fsync(fd):
            nonlocal batch_fsyncs
            # batch files are the only files written in the shard's scratch dir .tmp/
            if Path(os.readlink(f"/proc/self/fd/{fd}")).parent.name == ".tmp":
                batch_fsyncs += 1
                if batch_fsyncs == kill_at_fsync:
                    os.kill(os.getpid(), signal.SIGKILL)
            real_fsync(fd)

        os.fsync = fsync


    fsync_eio = os.environ.get("STAND_IN_FSYNC_EIO")
    if fsync_eio:
        failing_dir, _, nth = fsync_eio.rpartition(":")
        real_fsync_of = os.fsync
        fsyncs_there = 0

        def fsync_that_fails_once(fd):
            nonlocal fsyncs_there
            path = Path(os.readlink(f"/proc/self/fd/{fd}"))
            if failing_dir == (path.name if path.is_dir() else path.parent.name):
                fsyncs_there += 1
                if fsyncs_there == int(nth):
                    print(f"stand-in: fsync of {path} fails with EIO", flush=True)
                    raise OSError(errno.EIO, os.strerror(errno.EIO))
            real_fsync_of(fd)

        os.fsync = fsync_that_fails_once


if __name__ == "__main__":
    install_stand_ins()
    from shardrun.cli.run_production import main

    sys.argv[0] = "run_production"
    raise SystemExit(main())
