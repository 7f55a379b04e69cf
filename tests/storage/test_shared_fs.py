"""Shared filesystems (docs/SHARED_FILESYSTEMS.md): the lease that stands in for file locks, how the
shard lock chooses it, and commits on a filesystem without hard links.

Real where this machine allows: the lease is contended by real processes on a real directory, and
the commits run on a real vfat image (tests/fs_support.py). Two things are stand-ins, named where
they are used: flock failing (this machine's filesystems all lock, and no NFS client is available)
and, for one case, a link refused where renameat2 RENAME_NOREPLACE works (no such filesystem here).
"""

from __future__ import annotations

import errno
import json
import logging
import os
import socket
import subprocess
import sys
import textwrap
import time
from dataclasses import replace
from pathlib import Path

import pytest

from shardrun import platforms
from shardrun.errors import AlreadyCommitted, EnvironmentProblem, LocksUnsupported, ShardLocked
from shardrun.storage.atomic import (
    CHECKED_RENAME,
    HARD_LINK,
    RENAME_NOREPLACE,
    create_json_once,
    publish_new,
    publish_way,
    read_json,
    write_temp_file,
)
from shardrun.storage.commits import clean_tmp, scan_committed
from shardrun.storage.lock import (
    LOCK_ENV,
    Holder,
    Judgement,
    Lease,
    LeaseState,
    ShardLock,
    lease_stale_seconds,
    lock_mechanism,
    process_started,
    read_lease,
    staleness,
)
from shardrun.storage.paths import ShardPaths, ensure_identity

from fs_support import vfat_mount
from store_support import commit_user


@pytest.fixture
def shard(tmp_path):
    paths = ShardPaths(tmp_path / "run" / "shard-0-of-1")
    paths.make()
    return paths


def flock_without_lock_support(code: int):
    """Stands in for flock on an NFS mount without lock support (or a Lustre mount without flock)."""

    def lock(handle) -> None:
        raise OSError(code, os.strerror(code))

    return lock


# --- processes that hold a shard -------------------------------------------------------------------


def start_holder(shard: ShardPaths, mechanism: str, without_flock: bool = False) -> subprocess.Popen:
    """A real process that takes the shard lock with `mechanism` and keeps it until killed; with
    `without_flock`, its flock fails with ENOLCK (a stand-in for a filesystem without locks)."""
    code = textwrap.dedent(f"""
        import errno, os, sys, time
        from pathlib import Path
        from shardrun.storage.lock import ShardLock
        from shardrun.storage.paths import ShardPaths

        def flock_without_lock_support(handle):
            raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))

        os_lock = flock_without_lock_support if {without_flock!r} else None
        lock = ShardLock(ShardPaths(Path({str(shard.dir)!r})), mechanism={mechanism!r}, os_lock=os_lock)
        lock.acquire()
        print("locked", flush=True)
        time.sleep(120)
    """)
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    return holder


def kill(process: subprocess.Popen) -> None:
    process.kill()
    process.wait()


def test_a_live_lease_refuses_a_second_process_and_a_dead_holders_lease_is_taken_over(shard):
    without_locks = flock_without_lock_support(errno.ENOLCK)
    holder = start_holder(shard, "lease", without_flock=True)
    try:
        record = json.loads(shard.lease.read_text())
        assert (record["pid"], record["host"]) == (holder.pid, socket.gethostname())
        with pytest.raises(ShardLocked, match=rf'"pid": {holder.pid}.*heartbeat \d+ s ago') as refused:
            ShardLock(shard, mechanism="lease", os_lock=without_locks).acquire()
        assert "SHARDRUN_LEASE_STALE_SECONDS" in str(refused.value)
    finally:
        kill(holder)
    # The SIGKILLed holder left its lease; on the same host its gone pid makes it stale at once.
    assert json.loads(shard.lease.read_text())["pid"] == holder.pid
    lock = ShardLock(shard, mechanism="lease", os_lock=without_locks)
    lock.acquire()
    try:
        assert json.loads(shard.lease.read_text())["pid"] == os.getpid()
        assert lock._lease.took_over == f"its process {holder.pid} on this host is gone"
    finally:
        lock.release()
    assert not shard.lease.exists()


def test_the_lease_heartbeat_is_refreshed_and_release_removes_it(tmp_path):
    lease = Lease(tmp_path / "lease", stale_after=1.0, refresh_every=0.05)
    lease.acquire()
    try:
        first = read_lease(lease.path).heartbeat
        time.sleep(0.4)
        later = read_lease(lease.path).heartbeat
        assert later - first >= 0.2
        assert read_lease(lease.path).holder == lease.holder
    finally:
        lease.release()
    assert not lease.path.exists()


def other_host_lease(path: Path, age_seconds: float) -> None:
    """A lease as a process on another host leaves it (a stand-in: this test has one host)."""
    holder = Holder(host="another-host", pid=4242, boot_id="another-boot", started=1.0, token="f00d",
                    acquired_at="2026-01-01T00:00:00+00:00")
    path.write_text(holder.to_json())
    then = time.time() - age_seconds
    os.utime(path, (then, then))


def test_another_hosts_lease_counts_by_its_heartbeat(shard):
    other_host_lease(shard.lease, age_seconds=5)
    with pytest.raises(ShardLocked, match=r'"host": "another-host".*heartbeat 5 s ago'):
        ShardLock(shard, mechanism="lease", stale_after=30).acquire()
    other_host_lease(shard.lease, age_seconds=31)
    with ShardLock(shard, mechanism="lease", stale_after=30) as lock:
        assert "another-host) is 31 s old, older than 30 s" in lock._lease.took_over
        assert json.loads(shard.lease.read_text())["pid"] == os.getpid()


def test_an_unreadable_lease_counts_by_its_age(shard):
    shard.lease.write_bytes(b"")  # a writer that died between its O_EXCL create and its write
    with pytest.raises(ShardLocked, match="being written or left unreadable"):
        ShardLock(shard, mechanism="lease", stale_after=30).acquire()
    then = time.time() - 60
    os.utime(shard.lease, (then, then))
    with ShardLock(shard, mechanism="lease", stale_after=30) as lock:
        assert "(unreadable) is 60 s old" in lock._lease.took_over


def test_the_stale_rule():
    me = Holder.this_process()
    now = time.time()
    alive_pid = os.getppid()
    parent = Holder(host=me.host, pid=alive_pid, boot_id=me.boot_id, started=process_started(alive_pid),
                    token="a", acquired_at="")
    fresh, old = now - 1, now - 1000

    def state(holder, heartbeat):
        return LeaseState(holder=holder, heartbeat=heartbeat, inode=(0, 0))

    # Same machine: the process table decides, whatever the heartbeat (a suspended shard is alive).
    assert not staleness(state(parent, old), me, now, 120).stale
    reused = replace(parent, started=parent.started - 100)  # the pid now runs a later process
    assert (staleness(state(reused, fresh), me, now, 120)
            == Judgement(True, f"its process {alive_pid} on this host is gone"))
    # Same host name, another boot (a reboot, or another machine with the same name): the heartbeat decides.
    rebooted = replace(parent, boot_id="another boot")
    assert not staleness(state(rebooted, fresh), me, now, 120).stale
    assert staleness(state(rebooted, old), me, now, 120).why.startswith("its heartbeat")


def test_of_many_processes_taking_over_one_stale_lease_only_one_wins(shard):
    contender = textwrap.dedent(f"""
        import sys, time
        from pathlib import Path
        from shardrun.errors import ShardLocked
        from shardrun.storage.lock import ShardLock
        from shardrun.storage.paths import ShardPaths
        start = float(sys.argv[1])
        lock = ShardLock(ShardPaths(Path({str(shard.dir)!r})), mechanism="lease", stale_after=5)
        time.sleep(max(start - time.time(), 0))
        try:
            lock.acquire()
        except ShardLocked:
            print("refused", flush=True)
            sys.exit(0)
        print("won", flush=True)
        sys.stdin.read()  # hold the lease until every contender has answered
        lock.release()
    """)
    for round_ in range(3):
        other_host_lease(shard.lease, age_seconds=60)  # stale for everyone
        start = time.time() + 1.0  # every contender is past its start-up by then, and they go at once
        contenders = [subprocess.Popen([sys.executable, "-c", contender, str(start)], stdin=subprocess.PIPE,
                                       stdout=subprocess.PIPE, text=True) for _ in range(6)]
        answers = sorted(p.stdout.readline().strip() for p in contenders)
        for p in contenders:
            p.stdin.close()
            assert p.wait(timeout=60) == 0
        assert answers == ["refused"] * 5 + ["won"], (round_, answers)
        assert not shard.lease.exists() and not list(shard.dir.glob("lease.taken-*"))


def test_a_holder_notices_that_its_lease_was_taken_over(tmp_path):
    lost = []
    lease = Lease(tmp_path / "lease", stale_after=1.0, refresh_every=0.05, on_lost=lambda: lost.append(True))
    lease.acquire()
    # what a taker on another host does after this holder's heartbeat went stale: move it aside, make its own
    os.rename(lease.path, tmp_path / "lease.taken-0123")
    other_host_lease(lease.path, age_seconds=0)
    deadline = time.monotonic() + 5
    while not lost and time.monotonic() < deadline:
        time.sleep(0.02)
    assert lost == [True]
    lease.release()
    assert json.loads(lease.path.read_text())["host"] == "another-host"  # the new holder's lease is left alone


def test_a_takeover_that_crashed_after_moving_the_lease_aside_leaves_nothing_in_the_way(shard):
    leftover = shard.dir / "lease.taken-0123456789abcdef"
    leftover.write_text("{}")
    with ShardLock(shard, mechanism="lease"):
        assert not leftover.exists()


# --- how the shard lock chooses --------------------------------------------------------------------


@pytest.mark.parametrize("code", [errno.ENOLCK, errno.ENOSYS, errno.EOPNOTSUPP])
def test_a_filesystem_without_locks_gets_the_lease_with_a_warning(shard, caplog, code):
    caplog.set_level(logging.WARNING)
    lock = ShardLock(shard, mechanism="auto", os_lock=flock_without_lock_support(code))
    lock.acquire()
    try:
        assert lock.uses_lease and json.loads(shard.lease.read_text())["pid"] == os.getpid()
        assert json.loads(shard.lock.read_text())["pid"] == os.getpid()  # still names the holder (stop_shards)
        warning = caplog.text
        assert f"file locks are not supported in {shard.dir}" in warning
        assert platforms.describe_filesystem(shard.dir) in warning and errno.errorcode[code] in warning
        assert "using a lease file (lease) instead" in warning and "another host" in warning
        # a second process on the same filesystem is refused by the lease, not let in
        with pytest.raises(ShardLocked, match=f'"pid": {os.getpid()}'):
            ShardLock(shard, os_lock=flock_without_lock_support(code)).acquire()
    finally:
        lock.release()


def test_forcing_flock_on_a_filesystem_without_locks_is_an_error_with_the_fix(shard):
    with pytest.raises(LocksUnsupported) as refused:
        ShardLock(shard, mechanism="flock", os_lock=flock_without_lock_support(errno.ENOLCK)).acquire()
    message = str(refused.value)
    assert f"file locks are not supported in shard dir {shard.dir}" in message
    assert "ENOLCK" in message and "SHARDRUN_LOCK=flock" in message and "Unset SHARDRUN_LOCK" in message
    assert refused.value.exit_code == 2
    assert not shard.lease.exists()


def test_a_held_lock_is_still_in_use_and_other_lock_errors_are_not(shard):
    with pytest.raises(ShardLocked, match="in use by another process"):
        ShardLock(shard, os_lock=flock_without_lock_support(errno.EWOULDBLOCK)).acquire()
    with pytest.raises(OSError) as failed:
        ShardLock(shard, os_lock=flock_without_lock_support(errno.EIO)).acquire()
    assert failed.type is OSError and failed.value.errno == errno.EIO  # durable_write retries or reports it


def test_the_flock_and_the_lease_see_each_other(shard):
    """A process on the lease (on a host whose mount has no locks) keeps out one on the OS lock, and
    one on the lease (SHARDRUN_LOCK=lease) keeps out of a shard whose OS lock is held."""
    lease_holder = start_holder(shard, "lease", without_flock=True)
    try:
        with pytest.raises(ShardLocked, match=f'"pid": {lease_holder.pid}.*heartbeat'):
            ShardLock(shard, mechanism="flock").acquire()
    finally:
        kill(lease_holder)
    flock_holder = start_holder(shard, "flock")
    try:
        with pytest.raises(ShardLocked, match=f'"pid": {flock_holder.pid}'):
            ShardLock(shard, mechanism="lease").acquire()
        assert json.loads(shard.lease.read_text())["pid"] == lease_holder.pid  # untouched: not taken over
    finally:
        kill(flock_holder)
    with ShardLock(shard, mechanism="flock"):  # both holders are gone: the dead lease does not block
        pass


def test_lock_settings_from_the_environment():
    assert lock_mechanism(None) == lock_mechanism("") == "auto"
    assert lock_mechanism(" Lease ") == "lease" and lock_mechanism("flock") == "flock"
    with pytest.raises(EnvironmentProblem, match=f"{LOCK_ENV}='fcntl' is not a lock mechanism"):
        lock_mechanism("fcntl")
    assert lease_stale_seconds(None) == 120.0 and lease_stale_seconds("30") == 30.0
    for bad in ("0", "-5", "soon", "inf", "nan"):
        with pytest.raises(EnvironmentProblem, match="SHARDRUN_LEASE_STALE_SECONDS"):
            lease_stale_seconds(bad)


MOUNTINFO = textwrap.dedent("""\
    22 1 254:1 / / rw,relatime shared:1 - ext4 /dev/vda1 rw
    40 22 0:35 / /scratch rw,relatime shared:20 - nfs4 fileserver:/export/scratch rw,vers=4.2,local_lock=none
    41 22 0:36 / /home rw,relatime - nfs fileserver:/home rw,vers=3,nolock,local_lock=all
    42 22 0:37 / /mnt/my\\040disk rw - fuse.fusefat /dev/loop3 rw,user_id=0
""")


def test_the_filesystem_of_a_path_and_host_local_flock():
    scratch = platforms.filesystem_of(Path("/scratch/run/shard-0-of-4"), MOUNTINFO)
    assert scratch.describe() == "nfs4 filesystem fileserver:/export/scratch mounted at /scratch"
    assert not platforms.flock_is_host_local(scratch)
    home = platforms.filesystem_of(Path("/home/me/run"), MOUNTINFO)
    assert home.type == "nfs" and platforms.flock_is_host_local(home)
    assert platforms.filesystem_of(Path("/mnt/my disk/x"), MOUNTINFO).type == "fuse.fusefat"
    assert platforms.filesystem_of(Path("/scratchpad"), MOUNTINFO).type == "ext4"  # a prefix is not a parent
    assert platforms.filesystem_of(Path("/"), "") is None


# --- commits without hard links -------------------------------------------------------------------


@pytest.fixture
def vfat(tmp_path):
    """A real vfat filesystem (tests/fs_support.py): hard links and RENAME_NOREPLACE refused for real."""
    with vfat_mount(tmp_path / "disk" / "vfat.img", tmp_path / "vfat") as mount_point:
        yield mount_point


def test_commits_on_vfat_are_exactly_once_through_the_checked_rename(vfat, caplog):
    caplog.set_level(logging.INFO)
    shard = ShardPaths(vfat / "run" / "shard-0-of-1")
    shard.make()
    probe = write_temp_file(shard.tmp, b"probe")
    with pytest.raises(PermissionError):
        os.link(probe, shard.dir / "probe")  # the premise: this filesystem has no hard links
    probe.unlink()
    with ShardLock(shard):
        ensure_identity(shard, {"shard": "0/1", "config_hash": "abc", "data_fingerprint": "d", "pilot": None},
                        resuming=False)
        for user in ("alice", "bob", "../carol"):
            commit_user(shard, user, [{"user_id": user, "v": 1.0}], {"shard": "0/1"})
        with pytest.raises(AlreadyCommitted):
            commit_user(shard, "bob", [{"user_id": "bob", "v": 2.0}], {"shard": "0/1"})
    assert publish_way(shard.results) == CHECKED_RENAME
    warnings = [r for r in caplog.records if "hard links are refused" in r.getMessage()]
    assert [r.levelno for r in warnings] == [logging.WARNING, logging.INFO]  # once per dir, loud once per filesystem
    assert "fuse.fusefat" in warnings[0].getMessage() and "EPERM" in warnings[0].getMessage()
    committed = scan_committed(shard)
    assert sorted(committed) == ["../carol", "alice", "bob"]
    assert committed["bob"].rows == [{"user_id": "bob", "v": 1.0}]
    assert list(shard.tmp.iterdir()) == [] and read_json(shard.identity)["config_hash"] == "abc"


def test_a_crash_between_the_check_and_the_rename_leaves_the_user_uncommitted(vfat):
    """What the checked rename leaves if the process dies between its check and its rename (the
    crash itself, in a real shard process, is the fault table's crash-between-check-and-rename)."""
    shard = ShardPaths(vfat / "run" / "shard-0-of-1")
    shard.make()
    commit_user(shard, "alice", [{"user_id": "alice"}], {})
    orphan = write_temp_file(shard.tmp, b'{"user_id": "bob", "rows": []}')  # written and checked, never renamed
    assert len(shard.batch_files()) == 1
    assert clean_tmp(shard) == 1 and not orphan.exists()
    assert sorted(scan_committed(shard)) == ["alice"]
    commit_user(shard, "bob", [{"user_id": "bob"}], {})
    assert sorted(scan_committed(shard)) == ["alice", "bob"]


def test_run_json_on_vfat_is_created_once_and_read_back(vfat):
    run = vfat / "run"
    run.mkdir()
    assert create_json_once(run / "run.json", {"n": 1})
    assert not create_json_once(run / "run.json", {"n": 2})
    assert read_json(run / "run.json") == {"n": 1}
    assert [p.name for p in run.iterdir()] == ["run.json"]


def test_run_json_whose_checked_rename_was_overtaken_says_it_did_not_create_it(vfat, monkeypatch):
    """Two shards of a run both found the name free and both renamed: the one whose file was replaced
    must compare with what is there, not believe it wrote it."""
    run = vfat / "run"
    run.mkdir()
    create_json_once(run / "first.json", {})  # the way for this dir is now the checked rename
    real_rename = os.rename

    def rename_then_overtaken(src, dst):  # stands in for another shard's rename landing right after ours
        real_rename(src, dst)
        Path(dst).write_text('{"n": "the other shard"}\n')

    monkeypatch.setattr(os, "rename", rename_then_overtaken)
    assert not create_json_once(run / "run.json", {"n": 1})
    assert create_json_once(run / "shard.json", {"n": 1}, sole_writer=True)  # under the shard lock: no read-back


def test_a_link_refused_where_rename_noreplace_works(shard, monkeypatch, caplog):
    """renameat2 RENAME_NOREPLACE runs for real on this machine's filesystem; the refused link is a
    stand-in for BeeGFS, which refuses links across dirs."""
    caplog.set_level(logging.WARNING)

    def link_refused_across_dirs(src, dst):
        raise PermissionError(errno.EPERM, os.strerror(errno.EPERM))

    monkeypatch.setattr(os, "link", link_refused_across_dirs)
    commit_user(shard, "alice", [{"user_id": "alice"}], {})
    assert publish_way(shard.results) == RENAME_NOREPLACE
    with pytest.raises(AlreadyCommitted):
        commit_user(shard, "alice", [{"user_id": "alice", "v": 2}], {})
    assert "still one atomic step that fails if the name exists" in caplog.text
    assert list(shard.tmp.iterdir()) == [] and list(scan_committed(shard)) == ["alice"]


def test_other_link_errors_are_not_taken_for_a_filesystem_without_links(shard, monkeypatch):
    def link_on_a_full_disk(src, dst):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "link", link_on_a_full_disk)
    tmp = write_temp_file(shard.tmp, b"x")
    with pytest.raises(OSError) as failed:
        publish_new(tmp, shard.results / "x.json")
    assert failed.value.errno == errno.ENOSPC and publish_way(shard.results) == HARD_LINK
