"""Durable shard state on real files: atomic writes, exactly-once commits, identity, lock."""

import json
import os
import subprocess
import sys
import textwrap

import pytest

from shardrun.storage.atomic import create_json_once, read_json, write_json_atomic
from shardrun.storage.commits import append_error, commit_user, read_errors, scan_committed
from shardrun.storage.identity import ensure_identity
from shardrun.storage.lock import ShardLock
from shardrun.errors import AlreadyCommitted, ResumeMismatch, ShardLocked
from shardrun.storage.paths import ShardPaths, user_file_stem

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
    assert path.parent == shard.results
    assert path.name == f"{user_file_stem(user_id)}.json"
    assert scan_committed(shard)[user_id].user_id == user_id


def test_torn_result_file_is_quarantined_and_recomputed(shard):
    commit_user(shard, "good", [{"a": 1}], {})
    torn = shard.result("torn")
    torn.write_text('{"user_id": "torn", "rows": [')
    misnamed = shard.result("other")
    misnamed.write_text(json.dumps({"user_id": "not-other", "rows": []}))
    committed = scan_committed(shard)
    assert list(committed) == ["good"]
    assert not torn.exists() and not misnamed.exists()
    assert len(list((shard.results / "quarantine").iterdir())) == 2


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
