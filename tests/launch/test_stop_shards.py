"""stop_shards RUN: drains the run's live shards on this host (started by hand or by the launcher), and never
signals a process that is not one of them (a pid reused by another program)."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import psutil
import pytest

from shardrun.launch.stop import LAUNCHER_WORDS, stop_run, verify

from e2e_support import read_status, shardrun, wait_for

pytestmark = pytest.mark.e2e


def start_shard(workspace, run: Path, shard: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "shardrun", "run", "--config", str(workspace["config"]), "--full", "--shard", shard,
         "--out", str(run), "--cooldown", "30"],
        cwd=workspace["root"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )


def test_stop_shards_drains_shards_started_by_hand(workspace, tmp_path):
    run = tmp_path / "run"
    shards = [start_shard(workspace, run, f"{i}/2") for i in range(2)]
    try:
        for i, process in enumerate(shards):
            wait_for(lambda i=i: read_status(run / f"shard-{i}-of-2").get("users_done", 0) >= 1, process=process)
        result = shardrun("stop", str(run), cwd=tmp_path)
        assert result.stdout.count("to drain") == 2, result.stdout
        for process in shards:
            assert process.wait(timeout=120) == 3
        for i in range(2):
            assert read_status(run / f"shard-{i}-of-2")["state"] == "interrupted"
        again = shardrun("stop", str(run), cwd=tmp_path)
        assert "no live shard" in again.stdout
    finally:
        for process in shards:
            if process.poll() is None:
                process.kill()
                process.wait()


def test_stop_shards_drains_a_launched_run_through_its_launcher(workspace):
    root = workspace["root"]
    earlier = set((root / "out").glob("*_full_*"))
    launcher = subprocess.Popen(
        [sys.executable, "-m", "shardrun", "launch", "--config", str(workspace["config"]), "--shards", "2",
         "--cooldown", "30", "--no-merge"],
        cwd=root, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        def run_with_users():
            for run in set((root / "out").glob("*_full_*")) - earlier:
                if all(read_status(run / f"shard-{i}-of-2").get("users_done", 0) >= 1 for i in range(2)):
                    return run
            return None
        run = wait_for(run_with_users, process=launcher)
        result = shardrun("stop", str(run), cwd=root)
        assert "asked launcher" in result.stdout and result.stdout.count("the launcher passes") == 2, result.stdout
        assert launcher.wait(timeout=120) == 3
        for i in range(2):
            assert read_status(run / f"shard-{i}-of-2")["state"] == "interrupted"
    finally:
        if launcher.poll() is None:
            launcher.kill()
            launcher.wait()


def test_a_pid_that_belongs_to_another_program_is_not_signalled(tmp_path):
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        run = tmp_path / "run"
        shard_dir = run / "shard-0-of-1"
        shard_dir.mkdir(parents=True)
        (run / "run.json").write_text(json.dumps({"shards": 1, "created_at": "2026-01-01T00:00:00+00:00"}))
        now = datetime.now(UTC).isoformat(timespec="seconds")
        (shard_dir / "status.json").write_text(json.dumps(
            {"shard": "0/1", "state": "running", "pid": sleeper.pid, "host": socket.gethostname(), "started_at": now}))
        sent = []
        report = stop_run(run, send=lambda pid, signum: sent.append(pid) or True)
        assert sent == [] and "not a shardrun process" in report.skipped[0]
        result = shardrun("stop", str(run), cwd=tmp_path)
        assert "not signalled" in result.stdout
        assert sleeper.poll() is None
    finally:
        sleeper.kill()
        sleeper.wait()


def stand_in(place: Path) -> subprocess.Popen:
    """A process whose command line looks like a shard of `place`, returned once it has that command
    line (right after the fork it still shows pytest's)."""
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "shardrun", str(place)])
    wait_for(lambda: "shardrun" in psutil.Process(process.pid).cmdline(), timeout=30, process=process)
    return process


def test_a_status_json_of_the_wrong_shape_is_said_and_not_acted_on(tmp_path):
    shard_dir = tmp_path / "run" / "shard-0-of-1"
    shard_dir.mkdir(parents=True)
    (shard_dir / "status.json").write_text(json.dumps({"state": "running", "pid": "12", "host": socket.gethostname()}))
    report = stop_run(tmp_path / "run", send=lambda pid, signum: pytest.fail("signalled"))
    assert report.signalled == [] and report.skipped == ["shard-0-of-1: status.json field 'pid' is str"]


def test_verify_refuses_other_hosts_gone_pids_and_processes_younger_than_the_record(tmp_path):
    here = socket.gethostname()
    me = stand_in(tmp_path)
    try:
        now = datetime.now(UTC).isoformat(timespec="seconds")
        assert "host" in verify(me.pid, "elsewhere", now, [tmp_path])
        assert verify(me.pid, here, now, [tmp_path]) is None
        assert "after the recorded start" in verify(me.pid, here, "2000-01-01T00:00:00+00:00", [tmp_path])
        assert "another run" in verify(me.pid, here, now, [tmp_path / "other"])
        assert "no pid" in verify("12", here, now, [tmp_path])
    finally:
        me.kill()
        me.wait()
    assert "gone" in verify(me.pid, here, now, [tmp_path])


@pytest.mark.parametrize("words, launcher", [
    (["shardrun", "launch"], True), (["launch_shards"], True), (["shardrun", "run_parallel"], True),
    (["shardrun", "run"], False), (["run_production"], False),
], ids=["shardrun-launch", "old-name", "the-script", "a-shard", "a-shard-by-its-old-name"])
def test_a_launcher_is_told_by_its_command_line_new_spelling_or_old(words, launcher):
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", *words])
    try:
        wait_for(lambda: words[-1] in psutil.Process(process.pid).cmdline(), timeout=30, process=process)
        now = datetime.now(UTC).isoformat(timespec="seconds")
        assert (verify(process.pid, socket.gethostname(), now, None, words=LAUNCHER_WORDS) is None) == launcher
        assert verify(process.pid, socket.gethostname(), now, None) is None  # every one is a shardrun process
    finally:
        process.kill()
        process.wait()


def test_a_second_request_signals_again_only_with_now(tmp_path):
    run = tmp_path / "run"
    shard_dir = run / "shard-0-of-1"
    shard_dir.mkdir(parents=True)
    # a stand-in shard: a shardrun command line naming the shard dir
    shard = stand_in(shard_dir)
    try:
        now = datetime.now(UTC).isoformat(timespec="seconds")
        (shard_dir / "status.json").write_text(json.dumps(
            {"shard": "0/1", "state": "running", "pid": shard.pid, "host": socket.gethostname(), "started_at": now}))
        sent = []

        def record(pid, signum):
            sent.append(pid)
            return True

        assert [t.pid for t in stop_run(run, send=record).signalled] == [shard.pid]
        again = stop_run(run, send=record)
        assert again.signalled == [] and "already asked" in again.skipped[0]
        assert [t.pid for t in stop_run(run, now=True, send=record).signalled] == [shard.pid]
        assert sent == [shard.pid, shard.pid]
    finally:
        shard.kill()
        shard.wait()


def test_a_missing_path_a_file_and_a_dir_of_no_run_are_refused_saying_which(tmp_path):
    (tmp_path / "a_file").write_text("x")
    (tmp_path / "empty").mkdir()
    for name, words in (("nowhere", "does not exist"), ("a_file", "is a file, not a dir"),
                        ("empty", "is not a run dir (no run.json, launcher.json or shard status)")):
        result = shardrun("stop", str(tmp_path / name), cwd=tmp_path, check=False)
        assert result.returncode == 2 and result.stdout == "" and "Traceback" not in result.stderr
        assert f"error: {tmp_path / name} {words}; pass the dir of a run" in result.stderr
