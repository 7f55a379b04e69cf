"""How a shard process lives and ends: the drain on signals, and dying with its launcher."""

from __future__ import annotations

import logging
import os
import signal
from typing import Any, Callable

from shardrun.errors import EXIT_INTERRUPTED
from shardrun.platforms import STOP_SIGNALS, signal_on_parent_death

log = logging.getLogger(__name__)

# Set by launch_shards in each shard's environment: the pid the shard must not outlive.
LAUNCHER_PID_ENV = "SHARDRUN_LAUNCHER_PID"


class StopFlag:
    """Set by SIGTERM/SIGINT/SIGHUP (platforms.STOP_SIGNALS): finish the user in flight, commit it, then stop taking users.

    Installed first thing in the worker, before the data is read or the JVM starts, so that a
    signal at any moment leads to a drain, never to the default action half-way through start-up.
    A second signal calls `on_second` (by default: leave at once).
    """

    def __init__(self) -> None:
        self.requested_by: str | None = None
        self.on_second: Callable[[str], None] = lambda _name: os._exit(EXIT_INTERRUPTED)

    def install(self) -> None:
        def handler(signum: int, _frame: Any) -> None:
            name = signal.Signals(signum).name
            if self.requested_by is not None:
                self.on_second(name)
                return
            self.requested_by = name
            log.warning("%s received: finishing the user in flight, then stopping", name)

        for sig in STOP_SIGNALS:
            signal.signal(sig, handler)


def die_with_launcher() -> None:
    """A shard started by launch_shards ends when the launcher ends, however the launcher ends.

    Linux delivers SIGTERM to this process when its parent dies (prctl PR_SET_PDEATHSIG), which
    the stop flag turns into a drain. If the launcher died before this call, stop at once.
    Elsewhere (no prctl), the launcher's own signal forwarding is the only guard.
    """
    launcher_pid = os.environ.get(LAUNCHER_PID_ENV)
    if not launcher_pid or not signal_on_parent_death(signal.SIGTERM):
        return
    if os.getppid() != int(launcher_pid):
        os.kill(os.getpid(), signal.SIGTERM)
