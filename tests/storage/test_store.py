"""Durable shard state on real files: atomic writes, exactly-once commits, identity, lock."""

import json
import os
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from shardrun.errors import AlreadyCommitted, ResumeMismatch, ShardLocked
from shardrun.storage.atomic import create_json_once, read_json, write_json_atomic
from shardrun.storage.commits import (
    GroupCommitter,
    next_batch_number,
    read_errors,
    scan_committed,
)
from shardrun.storage.lock import ShardLock
from shardrun.storage.paths import ShardPaths, ensure_identity

from store_support import append_error, commit_user

HOSTILE_IDS = ["../../escape", "/etc/passwd", "a/b\\c", "nul\x00byte", "x" * 5000, "..", "ünïcødé", ""]


@pytest.fixture
def shard(tmp_path):
    paths = ShardPaths(tmp_path / "run" / "shard-0-of-1")
    paths.make()
    return paths


def test_commit_is_exactly_once(shard):
    commit_user(shard, "alice", [{"user_id": "alice", "v": 1.0}], {"shard": "0/1"})
    with pytest.raises(AlreadyCommitted):
        commit_user(shard, "alice", [{"user_id": "alice", "v": 2.0}], {"shard": "0/1"})
    committed = scan_committed(shard)
    assert list(committed) == ["alice"]
    assert committed["alice"].rows == [{"user_id": "alice", "v": 1.0}]
    assert list(shard.tmp.iterdir()) == []


def test_nan_is_stored_as_null(shard):
    commit_user(shard, "bob", [{"x": float("nan"), "y": float("inf")}], {})
    assert scan_committed(shard)["bob"].rows == [{"x": None, "y": None}]


@pytest.mark.parametrize("user_id", HOSTILE_IDS)
def test_hostile_user_ids_stay_inside_the_shard_dir(shard, user_id):
    path = commit_user(shard, user_id, [{"user_id": user_id}], {})
    assert path.parent == shard.results and path.name == "b-000001.jsonl"
    assert [p.name for p in shard.results.rglob("*")] == ["b-000001.jsonl"]
    assert scan_committed(shard)[user_id].user_id == user_id


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_users_that_end_within_the_interval_share_one_batch(shard):
    clock = Clock()
    committer = GroupCommitter(shard, {"config_hash": None}, interval_seconds=1.0, clock=clock)
    for n in range(5):
        clock.now += 0.1
        committer.add(f"u{n}", [{"user_id": f"u{n}", "v": n}])
        assert committer.flush_if_due() is None
    assert scan_committed(shard) == {} and committer.queued == 5  # queued is not committed
    clock.now += 0.6
    committer.add("u5", [{"user_id": "u5", "v": 5}])
    assert committer.flush_if_due() == shard.batch(1)
    clock.now += 5.0  # a long user: it is committed as soon as it ends
    committer.add("u6", [{"user_id": "u6", "v": 6}])
    assert committer.flush_if_due() == shard.batch(2)
    committed = scan_committed(shard)
    assert sorted(committed) == [f"u{n}" for n in range(7)]
    assert {committed[f"u{n}"].path for n in range(6)} == {shard.batch(1)}
    assert committed["u6"].rows == [{"user_id": "u6", "v": 6}]
    with pytest.raises(AlreadyCommitted):
        committer.add("u3", [])


def test_the_background_flusher_commits_a_queue_left_behind_a_long_user(shard):
    committer = GroupCommitter(shard, {}, interval_seconds=0.05)
    committer.start_flusher()
    try:
        committer.add("quick", [{"user_id": "quick"}])
        deadline = time.monotonic() + 10
        while not shard.batch_files() and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        committer.stop_flusher()
    assert list(scan_committed(shard)) == ["quick"] and committer.queued == 0


def test_a_retry_replaces_the_earlier_record_and_a_plain_duplicate_does_not(shard):
    commit_user(shard, "a", [{"user_id": "a", "status": "failed"}])
    commit_user(shard, "a", [{"user_id": "a", "status": "ok"}], replaces=True)
    assert scan_committed(shard)["a"].rows == [{"user_id": "a", "status": "ok"}]
    copy = shard.batch(3)
    copy.write_bytes(shard.batch(1).read_bytes())  # the failed record again, not marked as a replacement
    assert scan_committed(shard)["a"].rows == [{"user_id": "a", "status": "ok"}]


def test_torn_and_edited_batches_are_quarantined_whole_and_their_users_recomputed(shard, caplog):
    commit_user(shard, "good", [{"a": 1}])
    committer = GroupCommitter(shard, {})
    committer.add("b1", [{"a": 2}])
    committer.add("b2", [{"a": 3}])
    edited = committer.flush()
    edited.write_bytes(edited.read_bytes().replace(b'"a":3', b'"a":4'))
    torn = shard.batch(3)
    torn.write_bytes(shard.batch(1).read_bytes()[:-7])
    committed = scan_committed(shard)
    assert list(committed) == ["good"]
    problems = {record.args[0]: record.args[1] for record in caplog.records if "cannot be trusted" in record.msg}
    assert set(problems) == {edited, torn} and "records_sha256" in problems[edited]
    assert not edited.exists() and not torn.exists()
    assert len(list((shard.results / "quarantine").iterdir())) == 2
    assert GroupCommitter(shard, {}).flush() is None and next_batch_number(shard) == 4  # never a number again


def test_a_batch_of_another_config_is_not_trusted(shard, caplog):
    write_json_atomic(shard.identity, {"config_hash": "mine"})
    commit_user(shard, "a", [{"user_id": "a", "config_hash": "mine"}])
    commit_user(shard, "b", [{"user_id": "b", "config_hash": "theirs"}], {"config_hash": "mine"})
    assert list(scan_committed(shard)) == ["a"]
    [problem] = [record.args[1] for record in caplog.records if "cannot be trusted" in record.msg]
    assert "'theirs'" in problem and "another config" in problem


def test_a_resume_refuses_a_shard_dir_of_per_user_files_and_moves_nothing(shard):
    """Runs made before batch files committed one u-<hash>.json per user; they are not read, so the
    resume stops with what to do instead of computing those users again beside them."""
    commit_user(shard, "new", [{"user_id": "new"}])
    older = shard.results / ("u-" + "1" * 40 + ".json")
    older.write_text(json.dumps({"format": 1, "user_id": "old", "rows": []}))
    with pytest.raises(ResumeMismatch, match="run made before batch files .*--out NEW_DIR"):
        scan_committed(shard)
    assert older.is_file() and shard.batch(1).is_file() and not shard.quarantine.exists()


def test_write_json_atomic_replaces_whole(shard):
    target = shard.status
    write_json_atomic(target, {"a": 1})
    write_json_atomic(target, {"b": 2})
    assert json.loads(target.read_text()) == {"b": 2}
    assert [p.name for p in shard.dir.iterdir() if p.is_file() and p.name.endswith(".tmp")] == []


def test_create_json_once_keeps_the_first(shard):
    assert create_json_once(shard.dir / "run.json", {"n": 1})
    assert not create_json_once(shard.dir / "run.json", {"n": 2})
    assert read_json(shard.dir / "run.json") == {"n": 1}


IDENTITY = {"shard": "0/1", "config_hash": "abc", "data_fingerprint": "d1", "pilot": None}


def test_identity_is_written_then_checked(shard):
    ensure_identity(shard, IDENTITY, resuming=False)
    assert ensure_identity(shard, IDENTITY, resuming=True)["config_hash"] == "abc"
    with pytest.raises(ResumeMismatch, match="config hash"):
        ensure_identity(shard, {**IDENTITY, "config_hash": "other"}, resuming=True)
    with pytest.raises(ResumeMismatch, match="input data"):
        ensure_identity(shard, {**IDENTITY, "data_fingerprint": "d2"}, resuming=True)
    with pytest.raises(ResumeMismatch, match="--resume"):
        ensure_identity(shard, IDENTITY, resuming=False)


def test_resuming_a_dir_without_identity_is_refused(shard):
    with pytest.raises(ResumeMismatch, match="not a shard dir"):
        ensure_identity(shard, IDENTITY, resuming=True)


def test_errors_jsonl_survives_a_torn_last_line(shard):
    append_error(shard, {"user_id": "a", "message": "boom"})
    with open(shard.errors, "a") as handle:
        handle.write('{"user_id": "b", "mess')
    assert [e["user_id"] for e in read_errors(shard)] == ["a"]


def test_lock_refuses_a_second_live_process_and_frees_on_death(shard):
    holder = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(f"""
            import sys, time
            from shardrun.storage.paths import ShardPaths
            from shardrun.storage.lock import ShardLock
            from pathlib import Path
            lock = ShardLock(ShardPaths(Path({str(shard.dir)!r})))
            lock.acquire()
            print("locked", flush=True)
            time.sleep(60)
        """)],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(ShardLocked, match=str(holder.pid)):
            ShardLock(shard).acquire()
    finally:
        holder.kill()
        holder.wait()
    # The dead holder's lock file is still there, but the OS lock died with it.
    assert shard.lock.exists()
    with ShardLock(shard):
        assert json.loads(shard.lock.read_text())["pid"] == os.getpid()


def test_no_background_flusher_when_every_user_is_committed_as_it_ends(shard):
    committer = GroupCommitter(shard, {}, interval_seconds=0)
    committer.start_flusher()
    committer.add("a", [{"user_id": "a"}])
    assert committer.flush_if_due() == shard.batch(1)
    assert not any(thread.name == "group-commit" for thread in threading.enumerate())
