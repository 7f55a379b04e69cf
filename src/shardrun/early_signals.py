"""The signals shardrun's processes take, and every command's first act: noting them before anything
else is imported.

Importing a command's modules (pandas, Arrow, the task, JPype) takes up to a second. A stop signal then
would kill the command by its default action (exit 143, a crash to a launcher), and Ctrl-C would raise
KeyboardInterrupt inside an import. This module imports only `signal` and `contextlib`, so the window
left is the interpreter's start-up (docs/RELIABILITY.md), which a launcher closes too by starting its
shards with the signals held (`signals_held`)."""

from __future__ import annotations

import signal
from contextlib import contextmanager

TYPE_CHECKING = False  # typing itself is not imported: its import is a third of this module's
if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence
    from typing import Any

# Signals that ask a process to drain (finish the user in flight, then stop). SIGHUP: a lost terminal,
# or the kernel telling an orphaned, suspended shard that its launcher is gone. Windows has no SIGHUP;
# SIGBREAK is its Ctrl-Break.
STOP_SIGNALS: tuple[signal.Signals, ...] = tuple(
    getattr(signal, name) for name in ("SIGTERM", "SIGINT", "SIGHUP", "SIGBREAK") if hasattr(signal, name)
)

# The warning signals sbatch --signal may send besides the stop signals (run_production --preempt-signal).
WARNING_SIGNALS: tuple[signal.Signals, ...] = tuple(
    getattr(signal, name) for name in ("SIGUSR1", "SIGUSR2") if hasattr(signal, name)
)
SHARD_SIGNALS = (*STOP_SIGNALS, *WARNING_SIGNALS)


@contextmanager
def signals_held(signals: Sequence[int] = SHARD_SIGNALS) -> Iterator[None]:
    """Block `signals` in this thread while a process is started from it. The child inherits the mask
    through exec, so a signal before its EarlySignals.catch stays pending instead of killing it; catch
    unblocks and notes them. Where there are no signal masks, a no-op."""
    if not hasattr(signal, "pthread_sigmask"):
        yield
        return
    before = signal.pthread_sigmask(signal.SIG_BLOCK, signals)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, before)


class EarlySignals:
    """`signals` noted, not acted on, until the command takes them over: the shard's drain (StopFlag.install
    handles the noted ones in order), or cli.common.guarded (a noted stop signal: the interrupted exit)."""

    def __init__(self, signals: Sequence[int] = STOP_SIGNALS) -> None:
        self.signals = tuple(signals)
        self.caught: list[int] = []

    def catch(self) -> EarlySignals:
        for sig in self.signals:
            signal.signal(sig, self._note)
        if hasattr(signal, "pthread_sigmask"):  # held by a launcher that started this process (signals_held)
            signal.pthread_sigmask(signal.SIG_UNBLOCK, self.signals)
        return self

    def _note(self, signum: int, _frame: Any) -> None:
        self.caught.append(signum)

    def first_stop(self) -> signal.Signals | None:
        """The first stop signal noted, if any."""
        return next((signal.Signals(s) for s in self.caught if s in STOP_SIGNALS), None)

    def release(self) -> None:
        """The signals nobody took over get their default action back (KeyboardInterrupt for SIGINT)."""
        for sig in self.signals:
            if signal.getsignal(sig) == self._note:
                signal.signal(sig, signal.default_int_handler if sig == signal.SIGINT else signal.SIG_DFL)
