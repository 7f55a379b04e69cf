"""What a person or a script sees of a run's shards: views from status.json and launcher.json, and the
table rich lays out from them (fitted to a terminal and redrawn in place; plain lines in a pipe, a file
or TERM=dumb). Shared by the launcher and `monitor_progress` (and its --json), so all say the same thing.
"""

from __future__ import annotations

import socket
import sys
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import IO, Any

import psutil
from rich.cells import cell_len
from rich.console import Console, Group, RenderableType
from rich.table import Table
from rich.text import Text

from shardrun.states import ShardPhase, ShardState
from shardrun.storage.status import read_status

ACTIVE_STATES = (ShardState.STARTING, ShardState.RUNNING)
ENDED_WELL = (ShardState.COMPLETED, ShardState.COMPLETED_WITH_FAILURES)
UNREADABLE = "unreadable status.json"


@dataclass(frozen=True)
class ShardView:
    """One shard as shown; its fields, by name, are a shard of `monitor_progress --json` (docs/MONITOR.md)."""
    shard: str
    state: str  # what its row says: the liveness verdict, status.json's state, or the launcher's phase
    done: int
    total: int
    ok: int = 0
    skipped: int = 0
    failed: int = 0
    current_user: str | None = None
    rate_per_hour: float | None = None
    eta_seconds: float | None = None
    scheduler: str | None = None  # the cluster scheduler's view of the shard's job (SLURM), when it has one
    recorded_state: str | None = None  # status.json's own state (None: not written yet, or unreadable)
    liveness: str | None = None  # of a shard recorded active: alive | suspended | gone | stale
    heartbeat_age_seconds: float | None = None
    pid: int | None = None
    host: str | None = None
    suspended: bool = False  # by --cpu-limit
    preempted: bool = False
    requeues: int = 0

    @property
    def active(self) -> bool:
        return self.state in ACTIVE_STATES or self.state in (ShardPhase.SUSPENDED, ShardPhase.WAITING)


def pulse(doc: Mapping[str, Any], now: datetime, stale_after: float,
          launcher_phase: str | None = None) -> tuple[str | None, float | None]:
    """(liveness, heartbeat age): None for a shard not recorded active; else suspended, gone, stale or alive."""
    updated = doc.get("updated_at")
    age = (now - datetime.fromisoformat(updated)).total_seconds() if updated else None
    pid = doc.get("pid")
    if doc.get("state") not in ACTIVE_STATES:
        return None, age
    if launcher_phase == ShardPhase.SUSPENDED:
        return "suspended", age
    if doc.get("host") == socket.gethostname() and isinstance(pid, int) and not psutil.pid_exists(pid):
        return "gone", age
    return ("stale" if age is not None and age > stale_after else "alive"), age


def shard_view(shard: str, doc: Mapping[str, Any] | None, now: datetime, stale_after: float,
               launcher_phase: str | None = None, expected_total: int | None = None,
               scheduler: str | None = None) -> ShardView:
    """One shard's row from its status.json; `expected_total` counts a shard that has not written one yet."""
    if doc is None:
        return ShardView(shard, launcher_phase or ShardPhase.WAITING.value, 0, expected_total or 0, scheduler=scheduler)
    word, age = pulse(doc, now, stale_after, launcher_phase)
    shown = {"suspended": ShardPhase.SUSPENDED.value, "gone": "dead (process gone)",
             "stale": f"dead? (no heartbeat for {age or 0:.0f} s)"}.get(word or "", doc.get("state", "unknown"))
    return ShardView(
        shard=shard, state=shown,
        done=doc.get("users_done") or 0, total=doc.get("users_total") or 0, ok=doc.get("users_ok") or 0,
        skipped=doc.get("users_skipped") or 0, failed=doc.get("users_failed") or 0,
        current_user=doc.get("current_user"), rate_per_hour=doc.get("rate_users_per_hour"),
        # a suspended shard's ETA in its status.json was written before it was stopped: not true now
        eta_seconds=doc.get("eta_seconds") if word not in (None, "suspended") else None,
        scheduler=scheduler, recorded_state=doc.get("state"), liveness=word,
        heartbeat_age_seconds=None if age is None else round(age, 1), pid=doc.get("pid"), host=doc.get("host"),
        suspended=word == "suspended", preempted=doc.get("state") == ShardState.PREEMPTED,
        requeues=doc.get("requeues") or 0,
    )


def read_view(shard: str, path: Path, now: datetime, stale_after: float, launcher_phase: str | None = None,
              expected_total: int | None = None, scheduler: str | None = None) -> ShardView:
    """One shard's row from the status.json at `path`; one that is not a status.json says so in its row."""
    try:
        doc = read_status(path)
        return shard_view(shard, doc, now, stale_after, launcher_phase, expected_total, scheduler)
    except ValueError:
        return ShardView(shard, UNREADABLE, 0, 0, scheduler=scheduler)


def printable(text: str, limit: int | None = None) -> str:
    """Text from a file with its control characters spelled out (never sent raw), shortened to `limit`."""
    text = "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)
    if limit is None or len(text) <= limit:
        return text
    head = (limit - 1) // 2
    return f"{text[:head]}…{text[len(text) - (limit - 1 - head):]}"


def overall_eta(views: Sequence[ShardView], parallel: int | None = None) -> float | None:
    """Seconds until the whole run ends: remaining users at the pooled per-user time, over the parallelism."""
    remaining = sum(max(v.total - v.done, 0) for v in views if v.state not in ENDED_WELL)
    rates = [v.rate_per_hour for v in views if v.rate_per_hour]
    if remaining == 0:
        return 0.0
    if not rates or not any(v.active for v in views):
        return None  # nothing measured yet, or nothing running that could finish the rest
    seconds_per_user = 3600.0 / (sum(rates) / len(rates))
    lanes = min(parallel or len(views), len(views)) or 1
    slowest = max((v.eta_seconds or 0.0) for v in views)
    return max(remaining * seconds_per_user / lanes, slowest)


def format_seconds(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = round(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def suspension_note(views: Sequence[ShardView], cpu: Mapping[str, Any] | None = None) -> str | None:
    """What --cpu-limit holds suspended and why (launcher.json's `cpu`), or None. It stands where the ETA
    would: with shards held back for as long as the CPUs stay busy, no ETA is true."""
    suspended = [v.shard for v in views if v.state == ShardPhase.SUSPENDED]
    if not suspended:
        return None
    what = f"shard{'s' if len(suspended) > 1 else ''} {', '.join(suspended)} suspended by --cpu-limit"
    cpu = cpu if isinstance(cpu, Mapping) else {}
    reading = [cpu.get(key) for key in ("limit", "cpus_percent", "run_percent")]
    numbers = [float(value) for value in reading if isinstance(value, (int, float)) and not isinstance(value, bool)]
    if len(numbers) < len(reading):
        return what
    limit, busy, own = numbers
    use = f"the CPUs are {busy:.0f}% busy: this run {own:.0f}%, other programs {max(busy - own, 0):.0f}%"
    if busy > limit:
        return f"{what} {limit:g}% ({use})"
    return f"{what} {limit:g}% ({use}; one more shard would take them above {limit:g}%)"


def overall(views: Sequence[ShardView], parallel: int | None = None, cpu: Mapping[str, Any] | None = None) -> str:
    """The line under the table: every shard's users, and the run's ETA or what --cpu-limit holds back."""
    return (f"overall: {sum(v.done for v in views)}/{sum(v.total for v in views)} users,"
            f" {_eta_or_suspension(views, parallel, cpu)}")


def plain_line(views: Sequence[ShardView], parallel: int | None = None, cpu: Mapping[str, Any] | None = None) -> str:
    """One line for logs and CI, where a redrawn table would be noise."""
    parts = [f"{v.shard} {printable(v.state)} {v.done}/{v.total}" for v in views]
    return f"progress: {'; '.join(parts)}; overall {_eta_or_suspension(views, parallel, cpu)}"


def _eta_or_suspension(views: Sequence[ShardView], parallel: int | None, cpu: Mapping[str, Any] | None) -> str:
    note = suspension_note(views, cpu)
    return f"no ETA, {note}" if note else f"ETA {format_seconds(overall_eta(views, parallel))}"


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
    sized = [(name, justify,
              min(max(cell_len(text.plain) for text in [_cell(name), *cells]), NARROWEST.get(name, width)), cells)
             for name, justify, cells in columns if name != "slurm" or any(v.scheduler for v in views)]
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
