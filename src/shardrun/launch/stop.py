"""`stop_shards RUN`: drain a run's live shards on this host from another terminal, as Ctrl-C does.

A recorded pid is only a claim (reused, or on another host): a process is signalled only when verified
as the one the file names. A live launcher is signalled instead of its shards (it forwards the signal).
"""

from __future__ import annotations

import os
import signal
import socket
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from itertools import pairwise
from pathlib import Path
from typing import Any

import psutil

from shardrun import platforms
from shardrun.states import ShardPhase, ShardState
from shardrun.storage.atomic import write_json_atomic
from shardrun.storage.paths import RunPaths
from shardrun.storage.status import read_status, status_document

COMMAND_WORDS = ("shardrun", "run_production", "launch_shards")
LAUNCHER_WORDS = ("launch_shards", "shardrun launch", "shardrun run_parallel")  # with `-m shardrun SUB`
CLOCK_SLACK_SECONDS = 1.0  # the files' times are whole seconds
LIVE_STATES = (ShardState.STARTING, ShardState.RUNNING)
REQUESTS = "stop_requests.json"  # in the run dir: the processes already asked to drain (pid -> create time)


@dataclass(frozen=True)
class Target:
    what: str  # "shard 0/2" or "launcher"
    pid: int


@dataclass(frozen=True)
class StopReport:
    signalled: list[Target]
    via_launcher: list[str]  # shards the launcher will stop
    skipped: list[str]  # one line each: why a recorded process was not signalled


def _mentions(process: psutil.Process, command: list[str], places: Iterable[Path]) -> bool:
    """The command line names one of `places` (relative arguments resolved against the process's cwd)."""
    try:
        cwd: Path | None = Path(process.cwd())
    except (psutil.Error, OSError):
        cwd = None
    wanted = {place.resolve() for place in places}
    for word in command:
        for part in {word, word.split("=", 1)[-1]}:
            if not part or part.startswith("-"):
                continue
            path = Path(part)
            if not path.is_absolute():
                if cwd is None:
                    continue
                path = cwd / path
            try:
                if path.resolve() in wanted:
                    return True
            except (OSError, ValueError):
                continue
    return False


def _holds(process: psutil.Process, path: Path) -> bool:
    try:
        return any(Path(f.path) == path.resolve() for f in process.open_files())
    except (psutil.Error, OSError):
        return False


def verify(pid: Any, host: Any, started: Any, places: Iterable[Path] | None, lock: Path | None = None,
           words: tuple[str, ...] = COMMAND_WORDS) -> str | None:
    """None when pid is verifiably this run's shardrun process on this host (started by `started`); else why not."""
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
        return "no pid recorded"
    if host != socket.gethostname():
        return f"runs on host {host!r}, not this one"
    if pid == os.getpid():
        return "that pid is this command"
    try:
        process = psutil.Process(pid)
        command = process.cmdline()
        created = process.create_time()
    except psutil.NoSuchProcess:
        return f"pid {pid} is gone"
    except psutil.Error as exc:
        return f"pid {pid} cannot be inspected ({exc.__class__.__name__})"
    pairs = [f"{Path(first).stem} {then}" for first, then in pairwise(command)]  # `shardrun SUB`
    if not any(word in part for part in (*command, *pairs) for word in words):
        return f"pid {pid} is not a shardrun process now (pid reused?)"
    try:
        began = datetime.fromisoformat(started).timestamp()
    except (TypeError, ValueError):
        return f"pid {pid}: no start time recorded to check it against"
    if created > began + CLOCK_SLACK_SECONDS:
        return f"pid {pid} started after the recorded start (pid reused)"
    if places is not None and not (_mentions(process, command, places) or (lock is not None and _holds(process, lock))):
        return f"pid {pid} is a shardrun process of another run"
    return None


def _signal(pid: int, signum: int) -> bool:
    try:
        os.kill(pid, signum)
        if psutil.Process(pid).status() == psutil.STATUS_STOPPED:
            platforms.resume(pid)  # suspended (--cpu-limit): let it see the stop and drain
    except (ProcessLookupError, psutil.NoSuchProcess):
        return False
    except psutil.Error:
        pass
    return True


def stop_run(run_dir: Path, now: bool = False, signum: int = signal.SIGTERM,
             send: Callable[[int, int], bool] = _signal) -> StopReport:
    """Signal the run's live launcher and the live shards it did not start; `now` re-signals (stop at once)."""
    run = RunPaths(run_dir)
    report = StopReport([], [], [])
    asked = status_document(run.dir / REQUESTS)

    def signal_once(what: str, pid: int) -> bool:
        try:
            created: float | None = psutil.Process(pid).create_time()
        except psutil.Error:
            created = None
        if not now and created is not None and asked.get(str(pid)) == created:
            report.skipped.append(f"{what}: pid {pid} was already asked to drain; --now stops it at once")
            return True
        if send(pid, signum):
            report.signalled.append(Target(what, pid))
            asked[str(pid)] = created
            return True
        return False

    launched = _stop_launcher(status_document(run.launcher_json), report, signal_once)
    for shard_dir in sorted(run.dir.glob("shard-*-of-*")):
        _stop_shard(run, shard_dir, launched, report, signal_once)
    if report.signalled:
        try:
            write_json_atomic(run.dir / REQUESTS, asked)
        except OSError:
            pass  # only the memory of this request is lost: a second request without --now signals again
    return report


def _stop_launcher(launcher: dict[str, Any], report: StopReport,
                   signal_once: Callable[[str, int], bool]) -> dict[str, int] | None:
    """Signal a live launcher; the pids of the shards it will stop (None when it is not alive)."""
    if not launcher:
        return None
    # A launcher need not name its run dir: one on this host older than launcher.json is evidence.
    why = verify(launcher.get("pid"), launcher.get("host"), launcher.get("updated_at"), None, words=LAUNCHER_WORDS)
    if why is not None:
        if not why.endswith("is gone"):
            report.skipped.append(f"launcher: {why}")
        return None
    if not signal_once("launcher", launcher["pid"]):
        return None
    entries = launcher.get("shards")
    return {entry["shard"]: entry["pid"] for entry in (entries if isinstance(entries, list) else [])
            if isinstance(entry, dict) and isinstance(entry.get("shard"), str)
            and isinstance(entry.get("pid"), int) and entry.get("phase") != ShardPhase.DONE}


def _stop_shard(run: RunPaths, shard_dir: Path, launched: dict[str, int] | None, report: StopReport,
                signal_once: Callable[[str, int], bool]) -> None:
    """Signal a live shard, or leave it to its launcher, or say why not."""
    try:
        status = read_status(shard_dir / "status.json")
    except ValueError as exc:
        report.skipped.append(f"{shard_dir.name}: {exc}")
        return
    if status is None or status.get("state") not in LIVE_STATES:
        return
    shard = status.get("shard") or shard_dir.name
    pid = status.get("pid")
    if launched is not None and launched.get(shard) == pid:
        report.via_launcher.append(f"shard {shard} (pid {pid})")
        return
    why = verify(pid, status.get("host"), status.get("started_at"), [shard_dir, run.dir], shard_dir / "lock")
    if why is None and isinstance(pid, int):
        signal_once(f"shard {shard}", pid)
    else:
        report.skipped.append(f"shard {shard}: {why}")
