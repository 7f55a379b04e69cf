"""The live view on a real pseudo-terminal: monitor_progress (and --watch) at 60 and 200 columns, 64 shards in
24 lines, TERM=dumb, NO_COLOR, a user id holding escape sequences; the launcher's table redrawn in place; --json."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import re
import signal
import socket
import struct
import subprocess
import sys
import termios
from datetime import UTC, datetime
from pathlib import Path

import pytest
from rich.cells import cell_len

from shardrun.observe.progress import LiveTable, shard_view

EVIL = "evil\x1b[2J\x1b]0;pwned\x07"  # clears the screen and sets the window title, if sent raw
SHOWN = "evil\\x1b[2J\\x1b]0;pwned\\x07"
ESCAPE = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07")
COLOURS = re.compile(r"\x1b\[(?:[0-9;]*;)?(?:3[0-9]|9[0-7])[;m]")


def make_run(path: Path, shards: int, pid: int) -> Path:
    """A run of `shards` shards, each recorded by `pid` (alive: a fresh heartbeat), shard 0 on user EVIL."""
    now = datetime.now(UTC).isoformat(timespec="seconds")
    path.mkdir(parents=True)
    (path / "run.json").write_text(json.dumps({"shards": shards, "created_at": now}))
    for i in range(shards):
        (path / f"shard-{i}-of-{shards}").mkdir()
        (path / f"shard-{i}-of-{shards}" / "status.json").write_text(json.dumps({
            "shard": f"{i}/{shards}", "state": "running" if i % 4 else "completed", "pid": pid,
            "host": socket.gethostname(), "updated_at": now, "started_at": now, "users_done": 3, "users_total": 10,
            "users_ok": 3, "users_failed": 0, "users_skipped": 0, "rate_users_per_hour": 100.0, "eta_seconds": 252.0,
            "current_user": EVIL if i == 1 else f"user-{i:04d}", "requeues": i % 2}))
    return path


def terminal_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("COLUMNS", "LINES", "NO_COLOR", "FORCE_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE")}
    return {**env, "TERM": "xterm-256color", **extra}


def on_a_terminal(args: list[str], columns: int, rows: int = 24, draws: int | None = None, **env: str) -> str:
    """monitor_progress's output on a pseudo-terminal of `columns` x `rows`; with `draws`, interrupted
    (Ctrl-C) once that many tables were drawn."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, columns, 0, 0))
    process = subprocess.Popen([sys.executable, "-m", "shardrun", "monitor", *args], stdin=slave, stdout=slave,
                               stderr=slave, env=terminal_env(**env))
    os.close(slave)

    def interrupt(output: bytes) -> None:
        nonlocal draws
        if draws is not None and output.count(b"overall: ") >= draws:
            process.send_signal(signal.SIGINT)
            draws = None
    try:
        output = read_all(master, interrupt)
        assert process.wait(timeout=120) == 0, output.decode(errors="replace")
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    return output.decode().replace("\r\n", "\n")


def read_all(master: int, each=lambda output: None) -> bytes:
    """All a pseudo-terminal's programs wrote, until the last closed it (EIO); `each` sees it as it grows."""
    output = b""
    try:
        while chunk := os.read(master, 65536):
            output += chunk
            each(output)
    except OSError:
        pass
    os.close(master)
    return output


def visible(text: str) -> list[str]:
    return ESCAPE.sub("", text).splitlines()


@pytest.mark.parametrize("columns", [60, 200])
def test_no_row_is_wider_than_the_terminal_and_user_ids_are_shown_spelled_out(tmp_path, columns):
    run = make_run(tmp_path / "run", 4, os.getpid())
    output = on_a_terminal([str(run)], columns)
    lines = visible(output)
    assert all(cell_len(line) <= columns for line in lines), lines
    assert [line.split()[0] for line in lines if re.match(r"\d+/4 ", line)] == ["0/4", "1/4", "2/4", "3/4"], lines
    assert "\x1b[2J" not in output and "\x1b]0;" not in output  # the id's escape sequences never reach the terminal
    assert ("evil\\x1b[" if columns == 60 else SHOWN) in output
    assert ("current user" in output) == (columns == 200) or columns == 60
    assert COLOURS.search(output)  # a terminal that has colours gets them


def test_on_a_dumb_terminal_and_with_no_color(tmp_path):
    run = make_run(tmp_path / "run", 4, os.getpid())
    dumb = on_a_terminal([str(run)], 120, TERM="dumb")  # rich takes a dumb terminal to be 80 columns wide
    assert "\x1b" not in dumb and "evil\\x1b[2J" in dumb and "overall: 12/40 users" in dumb
    plain = on_a_terminal([str(run)], 120, NO_COLOR="1")
    assert not COLOURS.search(plain) and SHOWN in plain


def test_watch_fits_64_shards_in_24_lines_and_redraws_in_place(tmp_path):
    run = make_run(tmp_path / "run", 64, os.getpid())
    output = on_a_terminal([str(run), "--watch", "--every", "0.2"], 100, rows=24, draws=3)
    draws = re.split(r"\x1b\[\d+F\x1b\[J", output)
    assert len(draws) >= 3, output  # each refresh goes back over the last
    for draw in draws[:-1]:
        lines = visible(draw)
        assert len(lines) < 24 and all(cell_len(line) <= 100 for line in lines), lines
        assert re.search(r"… \d+ more shards: \d+ running, \d+ completed", draw), lines
    on_dumb = on_a_terminal([str(run), "--watch", "--every", "0.2"], 100, rows=24, draws=2, TERM="dumb")
    assert "\x1b" not in on_dumb and "63/64" in on_dumb  # plain: every shard, nothing redrawn


def test_the_launchers_table_is_redrawn_in_place_on_a_terminal_only(monkeypatch):
    now = datetime.now(UTC)
    views = [shard_view(f"{i}/2", None, now, 120, "waiting", expected_total=5) for i in range(2)]
    for term, redrawn in (("xterm", True), ("dumb", False)):
        monkeypatch.setenv("TERM", term)
        master, slave = pty.openpty()
        with open(slave, "w", closefd=True) as terminal:
            table = LiveTable(terminal)
            table.draw(views)
            table.draw(views)
        output = read_all(master).decode()
        assert ("\x1b[4F\x1b[J" in output) == redrawn and ("\x1b" in output) == redrawn, repr(output)
        assert output.count("overall: 0/10 users") == 2


def test_json_gives_each_shard_and_the_totals_one_line_per_refresh(tmp_path):
    run = make_run(tmp_path / "run", 4, os.getpid())
    result = subprocess.run([sys.executable, "-m", "shardrun", "monitor", str(run), "--json"], check=False,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and len(result.stdout.splitlines()) == 1, result.stderr
    document = json.loads(result.stdout)
    assert document["format"] == 1 and [r["run"] for r in document["runs"]] == [str(run.resolve())]
    shards, totals = document["runs"][0]["shards"], document["runs"][0]["totals"]
    assert shards[1]["current_user"] == EVIL  # the id as it is: JSON escapes it
    assert shards[1] | {"heartbeat_age_seconds": None} == {
        "shard": "1/4", "state": "running", "done": 3, "total": 10, "ok": 3, "skipped": 0, "failed": 0,
        "current_user": EVIL, "rate_per_hour": 100.0, "eta_seconds": 252.0, "scheduler": None,
        "recorded_state": "running", "liveness": "alive", "heartbeat_age_seconds": None, "pid": os.getpid(),
        "host": socket.gethostname(), "suspended": False, "preempted": False, "requeues": 1}
    assert totals == {"shards": 4, "active": 3, "done": 12, "total": 40, "ok": 12, "skipped": 0, "failed": 0,
                      "requeues": 2, "eta_seconds": 252.0, "suspension": None,
                      "states": {"completed": 1, "running": 3}}
    watching = subprocess.Popen([sys.executable, "-m", "shardrun", "monitor", str(run), "--json", "--watch", "--every",
                                 "0.2"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    ticks = [json.loads(watching.stdout.readline()) for _ in range(2)]
    watching.send_signal(signal.SIGINT)
    _, stderr = watching.communicate(timeout=120)
    assert watching.returncode == 0 and stderr == "", stderr
    assert all(tick["runs"][0]["totals"]["active"] == 3 for tick in ticks)
