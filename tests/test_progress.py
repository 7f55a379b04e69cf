"""What the live view and monitor_progress show, from status documents: no processes but one dead pid."""

import socket
import subprocess
import sys
from datetime import datetime, timedelta, timezone

from shardrun.observe.progress import liveness, overall_eta, plain_line, render_table, shard_view

NOW = datetime(2026, 11, 23, 12, 0, 0, tzinfo=timezone.utc)


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


def test_table_and_line_show_every_shard():
    views = [shard_view("0/2", status(), NOW, 120), shard_view("1/2", None, NOW, 120, "waiting", expected_total=8)]
    table = render_table(views)
    assert "0/2" in table[1] and "5/10" in table[1] and "u7" in table[1] and "50s" in table[1]
    assert "waiting" in table[2]
    assert table[-1].startswith("overall: 5/18 users, ETA")  # the waiting shard's users count
    assert plain_line(views).startswith("progress: 0/2 running 5/10; 1/2 waiting 0/8")
