"""The launcher's live view on a terminal (--live): the progress table redrawn in place.

Each redraw moves the cursor up over the previous table and clears to the end of the screen; a
message printed in between (`forget`) keeps the table below it instead of being overwritten.
"""

from __future__ import annotations

import sys
from typing import Any, Callable, Mapping, Sequence

from shardrun.observe import progress


class LiveTable:
    def __init__(self, write: Callable[[str], object] | None = None, flush: Callable[[], object] | None = None):
        self._write = write or (lambda text: sys.stdout.write(text))  # sys.stdout as it is at each draw
        self._flush = flush or (lambda: sys.stdout.flush())
        self._lines = 0

    def forget(self) -> None:
        """Something was printed below the table: draw the next one below that, not over it."""
        self._lines = 0

    def draw(self, views: Sequence[progress.ShardView], parallel: int | None = None,
             cpu: Mapping[str, Any] | None = None) -> None:
        lines = progress.render_table(views, parallel, cpu)
        clear = f"\x1b[{self._lines}F\x1b[J" if self._lines else ""
        self._write(clear + "\n".join(lines) + "\n")
        self._flush()
        self._lines = len(lines)
