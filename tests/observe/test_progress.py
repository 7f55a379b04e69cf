"""What the live view and monitor_progress show, from status documents: no processes but one dead pid."""

import json
import os
import signal
import socket
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from rich.console import Console

from shardrun.observe.monitor import newest_run, run_views
from shardrun.observe.progress import overall, overall_eta, plain_line, printable, render, shard_view

NOW = datetime(2026, 11, 23, 12, 0, 0, tzinfo=UTC)


def status(**fields):
    doc = {"state": "running", "host": socket.gethostname(), "pid": 1, "updated_at": NOW.isoformat(),
           "users_done": 5, "users_total": 10, "users_ok": 5, "users_failed": 0, "users_skipped": 0,
           "rate_users_per_hour": 360.0, "eta_seconds": 50.0, "current_user": "u7"}
    doc.update(fields)
    return doc


def dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def liveness(doc, now, stale_after, launcher_phase=None):
    return shard_view("0/1", doc, now, stale_after, launcher_phase).state


def test_a_running_shard_whose_process_is_gone_is_dead():
    assert liveness(status(pid=dead_pid()), NOW, 120) == "dead (process gone)"


def test_a_stale_heartbeat_is_suspicious():
    old = (NOW - timedelta(seconds=600)).isoformat()
    assert liveness(status(updated_at=old, host="elsewhere"), NOW, 120).startswith("dead? (no heartbeat for 600 s)")


def test_a_suspended_shard_is_not_dead_and_ended_states_stand():
    old = (NOW - timedelta(seconds=600)).isoformat()
    assert liveness(status(updated_at=old), NOW, 120, launcher_phase="suspended") == "suspended"
    assert liveness(status(state="completed", pid=dead_pid()), NOW, 120) == "completed"
    assert liveness(status(state="killed"), NOW, 120) == "killed"


def test_overall_eta_pools_rates_and_counts_waiting_shards():
    running = [shard_view(f"{i}/3", status(), NOW, 120) for i in range(2)]
    waiting = shard_view("2/3", {**status(users_done=0, eta_seconds=None, rate_users_per_hour=None,
                                          state="starting")}, NOW, 120)
    # 5 + 5 + 10 users left at 10 s each over 2 lanes
    assert overall_eta(running + [waiting], parallel=2) == 100.0
    assert overall_eta(running) == 50.0
    assert overall_eta([shard_view("0/1", status(users_done=10), NOW, 120)]) == 0.0
    assert overall_eta([shard_view("0/1", status(state="interrupted"), NOW, 120)]) is None


def render_table(views, cpu=None, width=1000, height=None):
    """The table's lines as a plain console of `width` x `height` shows them."""
    out = Console(width=width, height=height or 25, force_terminal=False, color_system=None)
    with out.capture() as captured:
        out.print(render(views, cpu=cpu, out=out, height=height))
    return [line.rstrip() for line in captured.get().splitlines()]


def test_table_and_line_show_every_shard():
    views = [shard_view("0/2", status(), NOW, 120), shard_view("1/2", None, NOW, 120, "waiting", expected_total=8)]
    table = render_table(views)
    assert "0/2" in table[1] and "5/10" in table[1] and "u7" in table[1] and "50s" in table[1]
    assert "waiting" in table[2]
    assert table[-1].startswith("overall: 5/18 users, ETA")  # the waiting shard's users count
    assert plain_line(views).startswith("progress: 0/2 running 5/10; 1/2 waiting 0/8")


def test_what_a_file_says_is_shown_spelled_out_and_long_ids_shortened():
    assert printable("a\x1b[2Jb\u200b\n") == "a\\x1b[2Jb\\u200b\\n"  # never sent to a terminal raw
    short = printable("u" * 30 + "-tail", 20)
    assert len(short) == 20 and short.startswith("uuu") and short.endswith("-tail") and "…" in short
    views = [shard_view("0/1", status(current_user="x\x1b]0;title\x07", state="running\x1b[2J"), NOW, 120)]
    assert "x\\x1b]0;title\\x07" in "\n".join(render_table(views)) and "\x1b" not in "\n".join(render_table(views))
    assert "\x1b" not in plain_line(views)


def test_instead_of_an_eta_the_line_says_what_cpu_limit_suspended_and_why():
    views = [shard_view("0/3", status(), NOW, 120, "running"),
             shard_view("1/3", status(), NOW, 120, "suspended"), shard_view("2/3", status(), NOW, 120, "suspended")]
    assert views[1].eta_seconds is None  # its status.json's ETA was written before it was stopped
    busy = {"limit": 60, "cpus_percent": 97.2, "run_percent": 48.4}
    assert plain_line(views, cpu=busy) == (
        "progress: 0/3 running 5/10; 1/3 suspended 5/10; 2/3 suspended 5/10; overall no ETA, shards 1/3, 2/3"
        " suspended by --cpu-limit 60% (the CPUs are 97% busy: this run 48%, other programs 49%)")
    no_room = {"limit": 60, "cpus_percent": 50.0, "run_percent": 50.0}
    assert overall(views[:2], cpu=no_room) == (
        "overall: 10/20 users, no ETA, shard 1/3 suspended by --cpu-limit 60% (the CPUs are 50% busy: this run 50%,"
        " other programs 0%; one more shard would take them above 60%)")
    assert plain_line(views[:2], cpu=None).endswith("overall no ETA, shard 1/3 suspended by --cpu-limit")
    assert plain_line(views[:1], cpu=busy).endswith("overall ETA 50s")  # nothing suspended: the ETA


# --- monitor_progress on files: runs, run.json's K, newest by start time, files of the wrong shape -------------

REPO = Path(__file__).resolve().parents[2]


def make_run(path: Path, shards: int, created_at: str, statuses: dict) -> Path:
    path.mkdir(parents=True)
    (path / "run.json").write_text(json.dumps({"shards": shards, "created_at": created_at}))
    for index, doc in statuses.items():
        shard_dir = path / f"shard-{index}-of-{shards}"
        shard_dir.mkdir()
        (shard_dir / "status.json").write_text(doc if isinstance(doc, str) else json.dumps(doc))
    return path


def monitor(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "shardrun", "monitor", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=120, check=False)


def test_shards_that_have_not_started_are_shown_from_run_json(tmp_path):
    run = make_run(tmp_path / "run", 3, NOW.isoformat(), {1: status(state="completed", users_done=10)})
    views = run_views(run, NOW, 120)
    assert [(v.shard, v.state) for v in views] == [("0/3", "waiting"), ("1/3", "completed"), ("2/3", "waiting")]


@pytest.mark.parametrize("content", [
    "[1, 2, 3]", '"running"', "null", "{not json",
    json.dumps(status(users_done="five")), json.dumps(status(updated_at=12)), json.dumps(status(state=["running"])),
    json.dumps(status(current_user=7)), json.dumps(status(rate_users_per_hour="fast")), json.dumps(status(pid="1")),
    json.dumps(status(updated_at="yesterday")), json.dumps(status(updated_at="2026-11-23T12:00:00")),
])
def test_a_status_json_of_the_wrong_shape_is_shown_unreadable(tmp_path, content):
    run = make_run(tmp_path / "run", 2, NOW.isoformat(), {0: content, 1: status()})
    views = run_views(run, NOW, 120)
    assert views[0].state == "unreadable status.json"
    assert render_table(views)[1].startswith("0/2")  # and the table renders
    result = monitor(str(run), cwd=tmp_path)
    assert result.returncode == 0 and "unreadable status.json" in result.stdout, result.stderr


def test_a_launcher_json_of_the_wrong_shape_does_not_crash(tmp_path):
    run = make_run(tmp_path / "run", 1, NOW.isoformat(), {0: status()})
    (run / "launcher.json").write_text(json.dumps({"shards": [1, {"shard": 5}, {"shard": "9/x", "phase": 3}]}))
    assert [v.shard for v in run_views(run, NOW, 120)] == ["0/1"]


def test_the_newest_run_is_the_one_started_last_not_the_last_touched(tmp_path):
    root = tmp_path / "out"
    newer = make_run(root / "b", 1, "2026-11-23T12:00:00+00:00", {})
    make_run(root / "a", 1, "2026-11-22T12:00:00+00:00", {})  # made (touched) after, started before
    assert newest_run(root) == [newer]
    assert "b" in monitor(str(root), cwd=tmp_path).stdout.splitlines()[0]


def test_a_dir_without_a_run_is_an_error(tmp_path):
    (tmp_path / "empty").mkdir()
    result = monitor(str(tmp_path / "empty"), cwd=tmp_path)
    assert result.returncode == 2 and "holds no run" in result.stderr and result.stdout == ""  # errors to stderr
    assert monitor(cwd=tmp_path).returncode == 2  # no analysis/out here


def test_a_missing_path_and_a_file_are_said_to_be_what_they_are(tmp_path):
    (tmp_path / "a_file").write_text("x")
    for name, words in (("nowhere", "does not exist"), ("a_file", "is a file, not a dir")):
        result = monitor(str(tmp_path / name), cwd=tmp_path)
        assert result.returncode == 2 and result.stdout == ""
        assert (f"error: {tmp_path / name} {words}; pass a run dir" in result.stderr
                and "holds no run" not in result.stderr)


def test_config_gives_the_output_root(tmp_path):
    import yaml

    config = yaml.safe_load((REPO / "config" / "small.yaml").read_text())
    config["data"]["path"] = str(REPO / "data" / "sample_users.csv")
    config["output"] = {"root": str(tmp_path / "elsewhere")}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    make_run(tmp_path / "elsewhere" / "r1", 2, NOW.isoformat(), {0: status(state="completed")})
    result = monitor("--config", str(tmp_path / "c.yaml"), cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "r1" in result.stdout and "1/2" in result.stdout


def test_a_reader_that_left_ends_the_monitor_quietly_with_sigpipes_status(tmp_path):
    """`monitor_progress RUN | head -n 1`: the reader closes the pipe; the monitor ends with 141, as a
    program stopped by SIGPIPE, and prints no traceback. Here the pipe's reader is closed before the
    monitor writes anything, so the write fails whatever the timing."""
    run = make_run(tmp_path / "run", 2, NOW.isoformat(), {0: status(), 1: status()})
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        result = subprocess.run([sys.executable, "-m", "shardrun", "monitor", str(run)], cwd=tmp_path, stdout=write_end,
                                stderr=subprocess.PIPE, text=True, timeout=120, check=False)
    finally:
        os.close(write_end)
    assert result.returncode == 141 and result.stderr == "", result.stderr



def test_ctrl_c_ends_a_watch_quietly(tmp_path):
    """--watch refreshes until every shard has ended, or until its user stops it: Ctrl-C then is no error
    (exit 0, nothing on stderr)."""
    alive = status(pid=os.getpid(), updated_at=datetime.now(UTC).isoformat())  # a live pid, a fresh heartbeat
    run = make_run(tmp_path / "run", 1, NOW.isoformat(), {0: alive})
    watching = subprocess.Popen([sys.executable, "-m", "shardrun", "monitor", str(run), "--watch", "--every", "0.2"],
                                cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert str(run) in watching.stdout.readline()  # its first refresh is out: it is watching
    watching.send_signal(signal.SIGINT)
    _, stderr = watching.communicate(timeout=120)
    assert watching.returncode == 0 and stderr == "", stderr
