"""The progress table, laid out by rich: fitted to a terminal and redrawn in place, plain lines elsewhere.

A row never wraps on a terminal; a pipe, a file or TERM=dumb gets plain lines without escape codes.
"""

from __future__ import annotations

import sys
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import IO, Any

from rich.cells import cell_len
from rich.console import Console, Group, RenderableType
from rich.table import Table
from rich.text import Text

from shardrun.observe.progress import ShardView, format_seconds, overall, printable

USER_CHARS = 40  # a longer user id is shortened in the middle
PLAIN_WIDTH = 1000  # a log or a pipe: no width to fit
DROPPED_FIRST = ("users/h", "failed", "ETA", "current user", "slurm")
NARROWEST = {"state": 12, "slurm": 12, "current user": 10}  # the wide columns, truncated down to this
STYLES = {"running": "green", "starting": "green", "completed": "green", "completed_with_failures": "yellow",
          "suspended": "yellow", "waiting": "dim", "preempted": "yellow", "interrupted": "yellow"}  # else red
SHOWN_FIRST = ("running", "starting", "suspended", "preempted", "interrupted", "waiting", "completed_with_failures",
               "completed")  # a state not here (dead, failed, killed, unreadable) comes before them all


def console(file: IO[str] | None = None) -> Console:
    """A console on `file` (sys.stdout as it is now): rich's own on a tty (TERM, NO_COLOR, the size), else plain."""
    file = file or sys.stdout
    if file.isatty():
        return Console(file=file, highlight=False)
    return Console(file=file, highlight=False, force_terminal=False, force_interactive=False, width=PLAIN_WIDTH)


def _cell(text: str, style: str = "") -> Text:
    return Text(text, style=style, no_wrap=True, overflow="ellipsis")


def _columns(views: Sequence[ShardView], width: int) -> list[tuple[str, str, int, list[Text]]]:
    """(header, justify, narrowest, cells) of each column that fits in `width`, DROPPED_FIRST's left out first."""
    columns = [
        ("shard", "left", [_cell(v.shard) for v in views]),
        ("state", "left", [_cell(printable(v.state), STYLES.get(v.state, "red")) for v in views]),
        ("slurm", "left", [_cell(printable(v.scheduler or "-")) for v in views]),
        ("done/total", "right", [_cell(f"{v.done}/{v.total}") for v in views]),
        ("failed", "right", [_cell(str(v.failed), "red" if v.failed else "") for v in views]),
        ("users/h", "right", [_cell(f"{v.rate_per_hour:.0f}" if v.rate_per_hour else "-") for v in views]),
        ("ETA", "right", [_cell(format_seconds(v.eta_seconds)) for v in views]),
        ("current user", "left", [_cell(printable(v.current_user or "", USER_CHARS)) for v in views]),
    ]
    sized = [(name, justify, min(max(cell_len(text.plain) for text in [_cell(name), *cells]), NARROWEST.get(name, width)),
              cells) for name, justify, cells in columns if name != "slurm" or any(v.scheduler for v in views)]
    for dropped in DROPPED_FIRST:
        if sum(narrowest + 2 for _, _, narrowest, _ in sized) - 2 <= width:
            break
        sized = [column for column in sized if column[0] != dropped]
    return sized


def _fit(views: Sequence[ShardView], rows: int | None) -> tuple[list[ShardView], list[ShardView]]:
    """(shown, hidden): at most `rows` shards, the most telling (trouble, then running ...) in shard order."""
    if rows is None or len(views) <= rows:
        return list(views), []
    rank = {state: n for n, state in enumerate(SHOWN_FIRST, start=1)}
    chosen = set(sorted(range(len(views)), key=lambda i: (rank.get(views[i].state, 0), i))[:max(rows, 1)])
    return [v for i, v in enumerate(views) if i in chosen], [v for i, v in enumerate(views) if i not in chosen]


def render(views: Sequence[ShardView], parallel: int | None = None, cpu: Mapping[str, Any] | None = None,
           out: Console | None = None, height: int | None = None) -> Group:
    """The table of `views` in `out`'s width (and in `height` lines, when given), then the overall line."""
    out = out or console()
    total = Text(overall(views, parallel, cpu))
    room = None if height is None else height - len(total.wrap(out, out.width)) - 3  # header, the hidden, the cursor
    shown, hidden = _fit(views, room)
    table = Table(box=None, pad_edge=False, show_edge=False, header_style="bold")
    columns = _columns(shown, out.width)
    for name, justify, narrowest, _ in columns:
        table.add_column(_cell(name), justify=justify, no_wrap=name not in NARROWEST,  # type: ignore[arg-type]
                         min_width=narrowest if name in NARROWEST else None)
    for cells in zip(*(cells for *_, cells in columns)):
        table.add_row(*cells)
    lines: list[RenderableType] = [table]
    if hidden:
        counts = ", ".join(f"{n} {printable(state)}" for state, n in Counter(v.state for v in hidden).most_common())
        lines.append(_cell(f"… {len(hidden)} more shards: {counts}"))
    return Group(*lines, total)


class LiveTable:
    """The launcher's and `monitor_progress --watch`'s table: redrawn in place where the terminal can."""

    def __init__(self, file: IO[str] | None = None):
        self._file = file
        self._lines = 0  # lines of the last draw, to go back over

    def forget(self) -> None:
        """Something was printed below the table: draw the next one below that, not over it."""
        self._lines = 0

    def draw(self, views: Sequence[ShardView], parallel: int | None = None,
             cpu: Mapping[str, Any] | None = None) -> None:
        out = console(self._file)
        self.show(out, [render(views, parallel, cpu, out, out.height if out.is_interactive else None)])

    def show(self, out: Console, renderables: Sequence[RenderableType]) -> None:
        with out.capture() as captured:
            for renderable in renderables:
                out.print(renderable)
        text = "".join(f"{line.rstrip()}\n" for line in captured.get().splitlines())
        back = f"\x1b[{self._lines}F\x1b[J" if out.is_interactive and self._lines else ""
        out.file.write(back + text)
        out.file.flush()
        self._lines = text.count("\n") if out.is_interactive else 0
