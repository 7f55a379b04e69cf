"""summary.png of a merged result set: the task's panels (Task.summary_panels) under a plain-words title.

Drawn on an explicit Agg canvas (pyplot's global state is never touched); matplotlib is imported lazily.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from shardrun.panel_style import (
    NOTE_SIZE,
    TITLE_SIZE,
    common_reasons,
    empty_panel,
    style_axes,
    thousands,
    why_nothing_is_drawn,
)
from shardrun.results.timeline import STATUS_SEVERITY
from shardrun.states import UserStatus
from shardrun.task import SummaryPanel, Task

FIGURE_INCHES = (16, 11)
DPI = 110
STATUS_COLOURS = {UserStatus.OK.value: "#4c72b0", UserStatus.SKIPPED.value: "#b0b0b0", UserStatus.FAILED.value: "#d62728"}
STATUS_PANEL_TITLE = "Result rows by status"
REASONS_PANEL_TITLE = "Why rows were skipped or failed"
MAX_REASONS = 12  # the most common kinds of reason drawn; the rest counted in one line


# --- what goes into the picture ---------------------------------------------------------------


def task_panels(task: Task, frame: pd.DataFrame, settings: Any | None) -> list[SummaryPanel]:
    """The task's own panels (Task.summary_panels)."""
    return list(task.summary_panels(frame, settings))


def status_counts(frame: pd.DataFrame) -> dict[str, int]:
    """Rows per status, known statuses first (ok, skipped, failed), then any other value."""
    if "status" not in frame.columns:
        return {}
    counts = frame["status"].value_counts()
    counts.index = counts.index.map(str)
    ordered = [s for s in STATUS_SEVERITY if s in counts.index] + sorted(set(counts.index) - set(STATUS_SEVERITY))
    return {status: int(counts[status]) for status in ordered}


def why_no_ok_rows(frame: pd.DataFrame) -> str | None:
    """Why no row of the set is ok, in plain words (panel_style.why_nothing_is_drawn over its rows),
    or None when some row is ok or the rows have no status."""
    if "status" not in frame.columns or (frame["status"] == UserStatus.OK.value).any():
        return None
    reasons = frame["reason"] if "reason" in frame.columns else None
    return why_nothing_is_drawn(frame["status"], reasons, what="row")


def reason_counts(frame: pd.DataFrame) -> tuple[tuple[str, str, int], ...]:
    """(status, kind of reason, rows) of the skipped and failed rows, most common first
    (panel_style.common_reasons: numbers masked, so one cause counts once)."""
    if "status" not in frame.columns or "reason" not in frame.columns:
        return ()
    counted = []
    for status in (UserStatus.SKIPPED.value, UserStatus.FAILED.value):
        mine = (frame["status"] == status).to_numpy(dtype=bool, na_value=False)
        if mine.any():
            counted += [(status, kind, n) for kind, n in common_reasons(frame["reason"][mine])]
    return tuple(sorted(counted, key=lambda item: (-item[2], item[0], item[1])))


@dataclass(frozen=True)
class ResultCounts:
    """All the picture says of the result rows themselves: the frame stays with the merge."""

    rows: int
    users: int | None  # None: the rows have no user_id column
    statuses: dict[str, int] = field(default_factory=dict)  # status_counts; empty without a status column
    why_empty: str | None = None  # why_no_ok_rows
    reasons: tuple[tuple[str, str, int], ...] = ()  # reason_counts

    @classmethod
    def of(cls, frame: pd.DataFrame) -> ResultCounts:
        users = int(frame["user_id"].nunique()) if "user_id" in frame.columns else None
        return cls(len(frame), users, status_counts(frame), why_no_ok_rows(frame), reason_counts(frame))


@dataclass(frozen=True)
class SummaryPicture:
    """Everything summary.png is drawn from: the counts and the task's panels, never the frame."""

    counts: ResultCounts
    title: str | None = None
    panels: tuple[SummaryPanel, ...] = ()

    def png(self) -> bytes:
        """The picture (see draw_summary) as PNG bytes."""
        buffer = io.BytesIO()
        draw_summary(self.counts, self.panels, self.title).savefig(buffer, format="png", dpi=DPI)
        return buffer.getvalue()


def run_title(shard_dirs: Sequence[Path]) -> str:
    """The run dir's name for the picture's heading, or how many runs were combined."""
    runs = sorted({Path(d).parent.name for d in shard_dirs})
    return runs[0] if len(runs) == 1 else f"{len(runs)} runs"


def plain_title(counts: ResultCounts, task_words: str | None) -> str:
    """The picture's first line: "60 users: <what the task's panels show>" (the core's part names no
    analysis; without the task's words, "result rows by status")."""
    part = plural(counts.users, "user") if counts.users is not None else plural(counts.rows, "row")
    return f"{part}: {task_words or 'result rows by status'}"


def heading(counts: ResultCounts, title: str | None) -> str:
    """The picture's second line: which run, and the result rows by status."""
    parts = [plural(counts.rows, "result row")]
    if counts.statuses:
        parts.append(" / ".join(f"{status} {n:,}" for status, n in counts.statuses.items()))
    return (f"{title}: " if title else "") + ", ".join(parts)


# --- drawing -------------------------------------------------------------------------------


def draw_summary(counts: ResultCounts, panels: Sequence[SummaryPanel] = (), title: str | None = None):
    """The whole picture as a matplotlib Figure (on an Agg canvas): the task's panels, row by row
    (SummaryPanel.row; each row's panels share its width by their widths), or the core's status
    panel when the task draws none."""
    # Imported here: merging must not pay for (or depend on) matplotlib until it draws.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=FIGURE_INCHES, dpi=DPI, layout="constrained")
    FigureCanvasAgg(figure)  # explicit Agg canvas: no GUI backend, no pyplot
    drawn = list(panels) or [
        SummaryPanel(draw=lambda axes: draw_status_panel(axes, counts.statuses, counts.why_empty)),
        SummaryPanel(draw=lambda axes: draw_reasons_panel(axes, counts.reasons), width=1.6),
    ]
    rows = sorted({panel.row for panel in drawn})
    outer = figure.add_gridspec(len(rows), 1)
    for place, row in enumerate(rows):
        mine = [panel for panel in drawn if panel.row == row]
        grid = outer[place].subgridspec(1, len(mine), width_ratios=[panel.width for panel in mine])
        for column, panel in enumerate(mine):
            panel.draw(figure.add_subplot(grid[0, column]))
    task_words = figure.get_suptitle() or None  # what the task's panels said the picture shows
    figure.suptitle(f"{plain_title(counts, task_words)}\n{heading(counts, title)}",
                    fontsize=TITLE_SIZE + 1, fontweight="bold")
    return figure


def draw_status_panel(axes, counts: dict[str, int], why_empty: str | None = None) -> None:
    """The core's own panel for a task that draws none: how many result rows have each status, and
    why none is ok when none is."""
    style_axes(axes, STATUS_PANEL_TITLE, "status", "rows")
    axes.grid(False, axis="x")
    if not counts:
        empty_panel(axes, "no status column")
        return
    statuses = list(counts)
    bars = axes.bar(range(len(statuses)), [counts[s] for s in statuses],
                    color=[STATUS_COLOURS.get(s, "black") for s in statuses], width=0.6)
    axes.bar_label(bars, labels=[f"{counts[s]:,}" for s in statuses], fontsize=NOTE_SIZE, padding=2)
    axes.set_xticks(range(len(statuses)))
    axes.set_xticklabels(statuses)
    axes.set_ylim(0, max(counts.values()) * 1.15)
    axes.yaxis.get_major_locator().set_params(integer=True)
    axes.yaxis.set_major_formatter(thousands())
    if why_empty:
        axes.text(0.5, 0.97, why_empty, transform=axes.transAxes, ha="center", va="top", fontsize=NOTE_SIZE + 1,
                  color="#333333", bbox=dict(facecolor="white", edgecolor="#999999", alpha=0.9))


def draw_reasons_panel(axes, reasons: Sequence[tuple[str, str, int]]) -> None:
    """The core's second panel for a task that draws none: the skipped and failed rows by their
    reason's kind, most common first."""
    import textwrap

    style_axes(axes, REASONS_PANEL_TITLE, "rows", "")
    axes.grid(False, axis="y")
    if not reasons:
        empty_panel(axes, "no row was skipped or failed")
        return
    shown = list(reasons[:MAX_REASONS])
    rest = sum(n for _, _, n in reasons[MAX_REASONS:])
    labels = [textwrap.shorten(f"{status}: {kind}", 60, placeholder="…") for status, kind, _ in shown]
    values = [n for _, _, n in shown]
    colours = [STATUS_COLOURS.get(status, "black") for status, _, _ in shown]
    if rest:
        labels.append(f"{len(reasons) - MAX_REASONS:,} other reasons")
        values.append(rest)
        colours.append("#dddddd")
    y = range(len(values))
    bars = axes.barh(y, values, color=colours, height=0.6)
    axes.bar_label(bars, labels=[f"{n:,}" for n in values], fontsize=NOTE_SIZE, padding=2)
    axes.set_yticks(list(y))
    axes.set_yticklabels(labels)
    axes.set_ylim(max(len(values), 8) - 0.5, -0.5)  # a bar keeps its height however few reasons there are
    axes.set_xlim(0, max(values) * 1.15)
    axes.xaxis.get_major_locator().set_params(integer=True)
    axes.xaxis.set_major_formatter(thousands())


def plural(n: int, word: str) -> str:
    return f"{n:,} {word}" if n == 1 else f"{n:,} {word}s"
