"""How a shard process lives and ends: the drain on signals, the scheduler's warning signal, and
dying with its launcher."""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from shardrun.early_signals import STOP_SIGNALS
from shardrun.errors import EXIT_INTERRUPTED
from shardrun.platforms import signal_on_parent_death

log = logging.getLogger(__name__)

# Set by launch_shards in each shard's environment: the pid the shard must not outlive.
LAUNCHER_PID_ENV = "SHARDRUN_LAUNCHER_PID"


# Signals a scheduler can be asked to send ahead of its stop (sbatch --signal): their names as flags take them.
PREEMPT_SIGNALS = ("TERM", "USR1", "USR2")


@dataclass(frozen=True)
class PreemptionNotice:
    """`signal` comes `lead_seconds` before the scheduler's stop; the user in flight is abandoned after
    `abandon_after`; `requeue_limit` bounds the shard's requeue requests (0: never)."""

    signal: signal.Signals
    lead_seconds: float
    requeue_limit: int = 3

    @property
    def abandon_after(self) -> float:
        margin = min(max(5.0, 0.1 * self.lead_seconds), self.lead_seconds / 2)
        return self.lead_seconds - margin

    @classmethod
    def named(cls, name: str, lead_seconds: float, requeue_limit: int) -> PreemptionNotice:
        return cls(signal.Signals[f"SIG{name.upper().removeprefix('SIG')}"], lead_seconds, requeue_limit)


class StopFlag:
    """Set by a stop signal: finish and commit the user in flight, then stop; a second calls `on_second`.

    A thread watches the wakeup fd for the preemption signal: Python's handlers wait out a long Java call.
    """

    def __init__(self, preemption: PreemptionNotice | None = None) -> None:
        self.preemption = preemption
        self.requested_by: str | None = None
        self.preempted_at: float | None = None  # time.monotonic() of the preemption signal
        self.on_second: Callable[[str], None] = lambda _name: os._exit(EXIT_INTERRUPTED)
        self.on_preempt: Callable[[], None] = lambda: None
        self._preempt_lock = threading.Lock()
        self._preemption_handled = False  # the handler has seen the preemption signal (the watcher may have first)

    @property
    def preempted(self) -> bool:
        return self.preempted_at is not None

    def install(self, caught_before: Sequence[int] = ()) -> None:
        """Take the stop (and warning) signals from now on; `caught_before`: the signals that came before,
        while the process was still importing (entry.py), handled now in their order."""
        for sig in {*STOP_SIGNALS, *([self.preemption.signal] if self.preemption else [])}:
            signal.signal(sig, self._handle)
        if self.preemption is not None:
            self._watch_wakeup_fd(self.preemption)
        for signum in caught_before:
            self._handle(signum, None)

    def _handle(self, signum: int, _frame: Any) -> None:
        name = signal.Signals(signum).name
        if self.preemption is not None and signum == self.preemption.signal and not self._preemption_handled:
            self._preemption_handled = True
            self._note_preemption(self.preemption)  # a no-op when the watcher thread noted it first
            return
        if self.requested_by is not None:
            self.on_second(name)
            return
        self.requested_by = name
        log.warning("%s received: finishing the user in flight, then stopping", name)

    def ignore_from_now(self) -> None:
        """Ignore stop signals once the end is recorded: during exit they would kill a finished shard."""
        for sig in {*STOP_SIGNALS, *([self.preemption.signal] if self.preemption else [])}:
            signal.signal(sig, signal.SIG_IGN)

    def _note_preemption(self, notice: PreemptionNotice) -> None:
        """Record the preemption signal once, from the watcher thread or the handler, whichever is first."""
        with self._preempt_lock:
            if self.preempted_at is not None:
                return
            self.preempted_at = time.monotonic()
            self.requested_by = self.requested_by or notice.signal.name
        log.warning("%s received: the scheduler stops this shard in %.0f s; the user in flight is kept if it ends"
                    " within %.0f s, then the shard stops", notice.signal.name, notice.lead_seconds, notice.abandon_after)
        self.on_preempt()

    def _watch_wakeup_fd(self, notice: PreemptionNotice) -> None:
        read_end, write_end = os.pipe()
        os.set_blocking(write_end, False)
        signal.set_wakeup_fd(write_end, warn_on_full_buffer=False)
        wanted = int(notice.signal)

        def watch() -> None:
            while True:
                for signum in os.read(read_end, 64):
                    if signum == wanted:
                        self._note_preemption(notice)

        threading.Thread(target=watch, name="preemption-watch", daemon=True).start()


def die_with_launcher() -> None:
    """A shard of launch_shards ends with its launcher (Linux PR_SET_PDEATHSIG; elsewhere only forwarding)."""
    launcher_pid = os.environ.get(LAUNCHER_PID_ENV)
    if not launcher_pid or not signal_on_parent_death(signal.SIGTERM):
        return
    if os.getppid() != int(launcher_pid):
        os.kill(os.getpid(), signal.SIGTERM)
