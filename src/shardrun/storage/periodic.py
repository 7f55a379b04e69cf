"""One background thread that repeats an action (flusher, heartbeats, abandon timer)."""

from __future__ import annotations

import threading
from collections.abc import Callable


class Periodic:
    """Runs `action` every `interval` seconds on a daemon thread until stop() or it returns False."""

    def __init__(self, name: str, interval: float, action: Callable[[], object]):
        self.name = name
        self.interval = interval
        self._action = action
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._repeat, name=self.name, daemon=True)
        self._thread.start()

    def _repeat(self) -> None:
        while not self._stop.wait(self.interval):
            if self._action() is False:
                return

    def stop(self, timeout: float = 5.0) -> None:
        """No more runs; waits up to `timeout` for one under way (unless called by the action itself)."""
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
