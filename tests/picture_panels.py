"""Panels of summary.png that fail on purpose, as module-level functions: merge hands them to the
picture's own process (results/picture_process.py), which imports them from here by name."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path


def no_font(axes) -> None:
    raise ValueError("no font")


def killed(axes) -> None:
    os.kill(os.getpid(), signal.SIGKILL)  # as the OOM killer ends a process


def slow(axes, marker: Path, seconds: float = 0.5) -> None:
    """Draws nothing for `seconds`, then leaves `marker` with the pid of the process that drew."""
    time.sleep(seconds)
    Path(marker).write_text(str(os.getpid()))
