"""The process port: the only place where the launcher touches its shards' processes (tests pass a fake)."""

from __future__ import annotations

import os
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from shardrun import platforms
from shardrun.early_signals import signals_held
from shardrun.shard.lifecycle import LAUNCHER_PID_ENV
from shardrun.storage.atomic import utc_now


@dataclass(frozen=True)
class Exited:
    """A shard's process ended with `code` (negative: killed by that signal); `pid` was its process id."""

    index: int
    code: int
    pid: int


class LocalProcesses:
    """Shards as child processes of the launcher, each in its own process group. Signals go to a live
    shard only; `pid` is its latest process's (also after it ended); `cpu_seconds` is by (pid, create time)."""

    def __init__(self) -> None:
        self._processes: dict[int, subprocess.Popen] = {}
        self._logs: dict[int, IO[bytes]] = {}  # of the live shards: closed when the shard's exit is polled

    def start(self, index: int, command: list[str], log_path: Path) -> int:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        log_handle = open(log_path, "ab")  # noqa: SIM115 (the child's log: closed when it exits)
        log_handle.write(f"\n=== {utc_now()} {' '.join(command)}\n".encode())
        log_handle.flush()
        env = {**os.environ, LAUNCHER_PID_ENV: str(os.getpid())}
        # Its own process group, in the launcher's session: a terminal's Ctrl-C reaches the launcher
        # alone, and if the launcher dies while this shard is suspended (--cpu-limit), the group
        # becomes orphaned and the kernel sends it SIGHUP and SIGCONT, so it drains instead of
        # staying stopped forever (a stopped process cannot act on its parent-death signal).
        # With the stop signals held: one that comes in the shard's first milliseconds (a Ctrl-C passed on,
        # the launcher's death) waits for its handlers instead of killing it (signals_held).
        try:
            with signals_held():
                process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log_handle,
                                           stderr=subprocess.STDOUT, env=env, **platforms.own_process_group())
        except BaseException:
            log_handle.close()
            raise
        self._processes[index] = process
        self._logs[index] = log_handle
        return process.pid

    def poll(self) -> list[Exited]:
        exits = []
        for index in sorted(self._logs):
            process = self._processes[index]
            if process.poll() is not None:
                self._logs.pop(index).close()
                exits.append(Exited(index, process.returncode, process.pid))
        return exits

    def suspend(self, index: int) -> None:
        if index in self._logs:
            platforms.suspend(self._processes[index].pid)

    def resume(self, index: int) -> None:
        if index in self._logs:
            platforms.resume(self._processes[index].pid)

    def terminate(self, index: int) -> None:
        if index in self._logs:
            self._processes[index].send_signal(signal.SIGTERM)

    def kill(self, index: int) -> None:
        if index in self._logs:
            self._processes[index].kill()

    def pid(self, index: int) -> int | None:
        process = self._processes.get(index)
        return process.pid if process else None

    def cpu_seconds(self) -> dict[tuple[int, float], float]:
        import psutil

        seconds: dict[tuple[int, float], float] = {}
        for index in sorted(self._logs):
            try:
                shard = psutil.Process(self._processes[index].pid)
                family = [shard, *shard.children(recursive=True)]
            except psutil.Error:
                continue  # it just ended: the next poll reports its exit
            for process in family:
                try:
                    with process.oneshot():
                        times = process.cpu_times()
                        seconds[(process.pid, process.create_time())] = times.user + times.system
                except psutil.Error:
                    continue  # ended between the listing and the reading
        return seconds
