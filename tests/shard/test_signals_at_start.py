"""A stop or warning signal in a shard's first second, while it still imports: the shard drains like at any
other moment (exit 3, or 7 for the warning), never dies by the signal's default action (which its launcher
would report as a crash), and the same command then runs it. The signal is sent the moment the process
has its handlers (the SigCgt mask in /proc), which is long before its imports end."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from shardrun.early_signals import signals_held
from shardrun.errors import EXIT_INTERRUPTED, EXIT_OK, EXIT_PREEMPTED
from shardrun.launch.processes import LocalProcesses

from e2e_support import read_status


def catches(pid: int, sig: signal.Signals) -> bool:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("SigCgt:"):
            return bool(int(line.split()[1], 16) >> (sig - 1) & 1)
    return False


@pytest.mark.jvm
@pytest.mark.parametrize("sig, flags, code", [
    (signal.SIGTERM, [], EXIT_INTERRUPTED),
    (signal.SIGINT, [], EXIT_INTERRUPTED),
    (signal.SIGUSR1, ["--preempt-signal", "USR1", "--preempt-lead", "30"], EXIT_PREEMPTED),
], ids=["TERM", "INT", "USR1-warning"])
def test_a_signal_while_the_shard_imports_drains_it_and_the_same_command_runs_it(workspace, tmp_path, sig, flags,
                                                                                  code):
    command = [sys.executable, "-m", "shardrun", "run", "--config", str(workspace["config"]), "--full", "--shard",
               "0/2", "--out", str(tmp_path / "run"), *flags]
    shard = subprocess.Popen(command, cwd=workspace["root"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             text=True)
    deadline = time.monotonic() + 120
    # SIGUSR2: the last one EarlySignals takes (SIGINT has Python's from the start)
    while not catches(shard.pid, signal.SIGUSR2):
        assert shard.poll() is None and time.monotonic() < deadline
        time.sleep(0.001)
    shard.send_signal(sig)
    output, _ = shard.communicate(timeout=300)
    assert shard.returncode == code, output
    assert "Traceback" not in output and f"{sig.name} received" in output, output

    again = subprocess.run(command, cwd=workspace["root"], capture_output=True, text=True, timeout=600)
    assert again.returncode == EXIT_OK, again.stdout + again.stderr
    assert read_status(tmp_path / "run" / "shard-0-of-2")["state"] == "completed"


@pytest.mark.parametrize("program", [["-m", "shardrun", "run"], ["run_production"]], ids=["shardrun-run", "old-name"])
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP], ids=["TERM", "HUP"])
def test_a_signal_the_moment_the_launcher_started_a_shard_drains_it(workspace, tmp_path, sig, program):
    """Before Python has run a line of the shard (its interpreter's own start-up, before EarlySignals):
    the launcher starts shards with the stop signals held, so the signal waits for the handlers. The
    chaos campaign's finding: a SIGTERM there killed the shard by the default action, and its launcher
    exited 70 ("shard 0/4 killed by SIGTERM"). The shard as the launcher starts it, and by its old name."""
    start = [sys.executable, *program] if program[0] == "-m" else [str(Path(sys.executable).parent / program[0])]
    command = [*start, "--config", str(workspace["config"]), "--full", "--shard", "0/2", "--out", str(tmp_path / "run")]
    shards = LocalProcesses()
    pid = shards.start(0, command, tmp_path / "shard0.log")
    os.kill(pid, sig)  # at once: the shard's interpreter is still starting
    deadline = time.monotonic() + 300
    while not (exits := shards.poll()):
        assert time.monotonic() < deadline
        time.sleep(0.01)
    log = (tmp_path / "shard0.log").read_text()
    assert exits[0].code == EXIT_INTERRUPTED, log
    assert "Traceback" not in log and f"{sig.name} received" in log, log
    # the launcher's own thread has the signals back
    assert not set(signal.pthread_sigmask(signal.SIG_BLOCK, [])) & {signal.SIGTERM, signal.SIGINT, signal.SIGHUP}


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP], ids=["TERM", "INT", "HUP"])
@pytest.mark.parametrize("command", ["merge", "validate", "monitor", "launch", "stop", "shardrun-script", "old-name"])
def test_a_stop_signal_before_a_command_has_imported_anything_interrupts_it_cleanly(workspace, tmp_path, command, sig):
    """Every command, not only the shard: a stop signal while its interpreter starts or its modules import
    (pandas, Arrow: a tenth of a second or more, when a user's Ctrl-C or a scheduler's TERM may come) gets
    the documented exit 3 with the interrupted message, never the default action (exit 143) nor a
    KeyboardInterrupt traceback from inside an import, and the command has done nothing. The signal is
    sent while the process is held from taking it (as a launcher starts its shards), so it is pending at
    the process's very first instruction: the earliest instant there is."""
    reference = workspace["root"] / "reference"
    out = tmp_path / "out"
    args = {
        "merge": ["merge", "--run", str(reference), "--output", str(out)],
        "validate": ["validate", "--dir", str(reference / "merged"), "--config", str(workspace["config"])],
        "monitor": ["monitor", str(reference)],
        "launch": ["launch", "--config", str(workspace["config"]), "--shards", "2", "--out", str(out)],
        "stop": ["stop", str(reference)],
        "shardrun-script": ["shardrun", "merge", "--run", str(reference), "--output", str(out)],
        "old-name": ["merge_shard_results", "--run", str(reference), "--output", str(out)],
    }[command]
    program = ([str(Path(sys.executable).parent / args.pop(0))] if command in ("shardrun-script", "old-name")
               else [sys.executable, "-m", "shardrun"])
    merged_before = {f: f.read_bytes() for f in (reference / "merged").rglob("*") if f.is_file()}
    with signals_held():
        process = subprocess.Popen([*program, *args], cwd=workspace["root"], stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, text=True)
        process.send_signal(sig)
    stdout, stderr = process.communicate(timeout=300)
    assert process.returncode == EXIT_INTERRUPTED, stdout + stderr
    assert f"interrupted by {sig.name}" in stderr and "Traceback" not in stdout + stderr, stdout + stderr
    assert not out.exists() and stdout == ""
    assert {f: f.read_bytes() for f in (reference / "merged").rglob("*") if f.is_file()} == merged_before
