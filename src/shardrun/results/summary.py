"""summary.png of a merged result set: the task's panels (if it draws any) above the core's
per-shard timeline.

The core draws what it knows about every run: the timeline of each shard's users (timeline.py
prepares the tables) and, for a task without panels of its own, the result rows by status. A task
adds its panels through the optional `summary_panels` hook (shardrun.task.DrawsSummary); a panel may
also say in plain words what the picture shows, as the figure's title (`axes.figure.suptitle`), and
the core puts its own part in front: how many users and shards, never the analysis's name.

Everything is drawn on an explicit Agg canvas: pyplot's global state is never touched, so merging
inside another program (a notebook, a GUI) neither opens windows nor changes its figures. matplotlib
is imported inside the drawing functions only, so importing merge does not pay for it.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import pandas as pd

from shardrun.panel_style import (
    LEGEND_SIZE,
    NOTE_SIZE,
    TITLE_SIZE,
    empty_panel,
    style_axes,
    thousands,
)
from shardrun.results.timeline import (
    SLOW_FACTOR,
    STATUS_SEVERITY,
    shard_sort_key,
    shard_summary,
    slow_users,
    timeline_bars,
    timeline_table,
)
from shardrun.states import UserStatus
from shardrun.task import SummaryPanel, Task

FIGURE_INCHES = (14, 10)
DPI = 110
STATUS_COLOURS = {UserStatus.OK.value: "#4c72b0", UserStatus.SKIPPED.value: "#b0b0b0", UserStatus.FAILED.value: "#d62728"}
STATUS_PANEL_TITLE = "Result rows by status"
TIMELINE_TITLE = "Per-shard timeline: each user from its start to its commit"


# --- what goes into the picture ---------------------------------------------------------------


def task_panels(task: Task, frame: pd.DataFrame, settings: Any | None) -> list[SummaryPanel]:
    """The task's own panels (Task hook `summary_panels`); none for a task without the hook."""
    hook = getattr(task, "summary_panels", None)
    return [] if hook is None else list(hook(frame, settings))


def status_counts(frame: pd.DataFrame) -> dict[str, int]:
    """Rows per status, known statuses first (ok, skipped, failed), then any other value."""
    if "status" not in frame.columns:
        return {}
    counts = frame["status"].value_counts()
    counts.index = counts.index.map(str)
    ordered = [s for s in STATUS_SEVERITY if s in counts.index] + sorted(set(counts.index) - set(STATUS_SEVERITY))
    return {status: int(counts[status]) for status in ordered}


@dataclass(frozen=True)
class ResultCounts:
    """All the picture says of the result rows themselves: the frame stays with the merge."""

    rows: int
    users: int | None  # None: the rows have no user_id column
    statuses: dict[str, int] = field(default_factory=dict)  # status_counts; empty without a status column

    @classmethod
    def of(cls, frame: pd.DataFrame) -> "ResultCounts":
        users = int(frame["user_id"].nunique()) if "user_id" in frame.columns else None
        return cls(len(frame), users, status_counts(frame))


@dataclass(frozen=True)
class SummaryPicture:
    """Everything summary.png is drawn from, small enough to hand to another process (merge draws it
    in one, picture_process.py): the counts, the span table and the task's panels, never the frame."""

    counts: ResultCounts
    spans: pd.DataFrame | Sequence[Sequence[Any]]  # as timeline.timeline_table takes them
    title: str | None = None
    panels: tuple[SummaryPanel, ...] = ()

    def png(self) -> bytes:
        """The picture (see draw_summary) as PNG bytes."""
        buffer = io.BytesIO()
        draw_summary(self.counts, self.spans, self.panels, self.title).savefig(buffer, format="png", dpi=DPI)
        return buffer.getvalue()


def run_title(shard_dirs: Sequence[Path]) -> str:
    """The run dir's name for the picture's heading, or how many runs were combined."""
    runs = sorted({Path(d).parent.name for d in shard_dirs})
    return runs[0] if len(runs) == 1 else f"{len(runs)} runs"


def plain_title(counts: ResultCounts, timeline: pd.DataFrame, task_words: str | None) -> str:
    """The picture's first line: "60 users, 4 shards: <what the task's panels show>" (the core's part
    names no analysis; without the task's words, "results by status and the time each shard took")."""
    shards = timeline["shard"].nunique() if "shard" in timeline.columns else 0
    parts = ([_plural(counts.users, "user")] if counts.users is not None else [_plural(counts.rows, "row")])
    parts += [_plural(shards, "shard")] if shards else []
    words = task_words or "results by status and the time each shard took"
    return ", ".join(parts) + ": " + words


def heading(counts: ResultCounts, title: str | None) -> str:
    """The picture's second line: which run, and the result rows by status."""
    parts = [_plural(counts.rows, "result row")]
    if counts.statuses:
        parts.append(" / ".join(f"{status} {n:,}" for status, n in counts.statuses.items()))
    return (f"{title}: " if title else "") + ", ".join(parts)


# --- drawing -------------------------------------------------------------------------------


def draw_summary(counts: ResultCounts, spans: pd.DataFrame | Iterable[Sequence[Any]],
                 panels: Sequence[SummaryPanel] = (), title: str | None = None):
    """The whole picture as a matplotlib Figure (on an Agg canvas): the task's panels side by side
    in the top row (the core's status panel when there are none), the timeline below. `spans` as
    timeline.timeline_table takes them: a span table, or spans one by one."""
    # Imported here: merging must not pay for (or depend on) matplotlib until it draws.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=FIGURE_INCHES, dpi=DPI, layout="constrained")
    FigureCanvasAgg(figure)  # explicit Agg canvas: no GUI backend, no pyplot
    top = list(panels) or [SummaryPanel(draw=lambda axes: draw_status_panel(axes, counts.statuses))]
    grid = figure.add_gridspec(2, len(top), height_ratios=[1, 1.05], width_ratios=[p.width for p in top])
    for column, panel in enumerate(top):
        panel.draw(figure.add_subplot(grid[0, column]))
    timeline = timeline_table(spans)
    draw_timeline_panel(figure.add_subplot(grid[1, :]), timeline)
    task_words = figure.get_suptitle() or None  # what the task's panels said the picture shows
    figure.suptitle(f"{plain_title(counts, timeline, task_words)}\n{heading(counts, title)}",
                    fontsize=TITLE_SIZE + 1, fontweight="bold")
    return figure


def panel_titles(figure) -> list[str]:
    """The titles of a drawn figure's panels, top row first (what a reader sees above each panel)."""
    return [axes.get_title(loc="left") for axes in figure.axes]


def draw_status_panel(axes, counts: dict[str, int]) -> None:
    """The core's own top panel for a task that draws none: how many result rows have each status."""
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


def draw_timeline_panel(axes, timeline: pd.DataFrame) -> None:
    from matplotlib.patches import Patch

    run_start = timeline.attrs.get("run_start")
    when = ""
    if run_start is not None:
        when = f" (run start {datetime.fromtimestamp(run_start, timezone.utc):%Y-%m-%d %H:%M:%S} UTC)"
    style_axes(axes, TIMELINE_TITLE, f"seconds since run start{when}", "shard")
    axes.xaxis.set_major_formatter(thousands())
    axes.grid(False, axis="y")
    if timeline.empty:
        empty_panel(axes, "no committed users with a commit time")
        return
    # unique() rather than set(): iterating a text column value by value costs a second per million
    shards = sorted(timeline["shard"].unique(), key=shard_sort_key)
    row = {label: i for i, label in enumerate(shards)}
    bars = timeline_bars(timeline)
    end = float(timeline["end_s"].max())
    # a user of (almost) no seconds still gets a sliver, so that it is seen at all
    drawn_width = np.maximum(bars["end_s"] - bars["start_s"], 0.002 * max(end, 1e-3))
    bars = bars.assign(width=drawn_width)
    height = 0.7
    # a white edge separates neighbouring users while bars are wide enough to show it
    edge = "white" if len(bars) <= 60 * len(shards) else "none"
    for (label, status), group in bars.groupby(["shard", "status"], sort=False):
        axes.broken_barh(
            list(zip(group["start_s"], group["width"])),
            (row[label] - height / 2, height),
            facecolors=STATUS_COLOURS.get(status, "black"),
            edgecolors=edge,
            linewidth=0.6,
        )
    slow = slow_users(timeline)
    for label, group in slow.groupby("shard", sort=False):
        axes.broken_barh(
            list(zip(group["start_s"], group["seconds"])),
            (row[label] - height / 2, height),
            facecolors="none",
            edgecolors="black",
            linewidth=1.8,
        )

    summary = shard_summary(timeline).set_index("shard")
    first_finish = float(summary["finish_s"].min())
    if end > first_finish:
        # the straggler tail: time between the first shard to finish and the last
        axes.axvspan(first_finish, end, color="#f2c14e", alpha=0.18, linewidth=0, zorder=0)
        axes.axvline(end, color="#8a6d00", linestyle=":", linewidth=1.2)
    annotate = len(shards) <= 40
    for label in shards if annotate else []:
        info = summary.loc[label]
        note = " " + _plural(int(info["users"]), "user")
        if info["failed"]:
            note += f", {int(info['failed']):,} failed"
        if info["lag_s"] > 0:
            note += f", +{info['lag_s']:,.1f} s"
        axes.text(info["finish_s"], row[label], note, va="center", ha="left", fontsize=NOTE_SIZE, clip_on=False)

    axes.set_yticks(range(len(shards)))
    step = max(1, math.ceil(len(shards) / 40))  # at most ~40 shard labels stay legible
    axes.set_yticklabels([label if i % step == 0 else "" for i, label in enumerate(shards)])
    axes.set_ylim(len(shards) - 0.5, -0.5)  # first shard on top
    # room on the right for the per-shard notes
    axes.set_xlim(0, max(end, 1e-3) * (1.28 if annotate else 1.02))

    per_bar = int(bars["users"].max())
    statuses = set(timeline["status"].unique())
    handles = [Patch(facecolor=STATUS_COLOURS[s], label=f"user {s}") for s in STATUS_SEVERITY if s in statuses]
    if not slow.empty:
        handles.append(Patch(facecolor="none", edgecolor="black", linewidth=1.8,
                             label=f"slow user (≥ {SLOW_FACTOR:g}× median {slow.attrs['threshold_s'] / SLOW_FACTOR:,.2f} s)"))
    if end > first_finish:
        handles.append(Patch(facecolor="#f2c14e", alpha=0.35,
                             label=f"straggler tail: the last shard finished {end - first_finish:,.1f} s after the"
                                   " first (+s: per shard)"))
    title = None
    if per_bar > 1:
        title = f"one bar = up to {per_bar:,} consecutive users, coloured by their most common status"
    # below the panel: inside it would cover bars or the shard notes
    axes.legend(handles=handles, fontsize=LEGEND_SIZE, loc="upper center", bbox_to_anchor=(0.5, -0.14),
                ncol=len(handles), framealpha=0.9, title=title, title_fontsize=LEGEND_SIZE)


def _plural(n: int, word: str) -> str:
    return f"{n:,} {word}" if n == 1 else f"{n:,} {word}s"
