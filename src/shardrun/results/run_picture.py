"""run.png: where a run's time went, shard by shard (waiting, start-up, users by outcome, slow users),
drawn from timeline.py's pure tables on an Agg canvas; matplotlib is imported only when drawing."""

from __future__ import annotations

import io
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

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
from shardrun.results.summary import DPI, STATUS_COLOURS, plural
from shardrun.results.timeline import (
    PREDICTED,
    SLOW_PER_SHARD,
    STATUS_SEVERITY,
    first_users,
    relative_starts,
    shard_phases,
    shard_sort_key,
    shard_summary,
    slow_users,
    timeline_bars,
    timeline_table,
)

FIGURE_INCHES = (16, 10)
TIMELINE_TITLE = "Per-shard timeline: waiting for a core, start-up, then each user from its start to its commit"
ESTIMATE_TITLE = "Each user's time against the task's estimate"
BREAKDOWN_TITLE = "Where each shard's time went"
SECONDS_TITLE = "Each user's time (the task gives no estimate)"
WAITING_COLOUR = "#e6e6e6"
STARTUP_COLOUR = "#f2c14e"
SLOW_EDGE = "black"
WARM_UP_COLOUR = "#e07b00"
BAR_HEIGHT = 0.7  # of a shard's row
# where a timeline runs longer than this many seconds, its axis counts minutes, then hours
UNITS = ((2 * 3600.0, 3600.0, "hours"), (180.0, 60.0, "minutes"), (0.0, 1.0, "seconds"))


@dataclass(frozen=True)
class RunPicture:
    """All run.png is drawn from: the span table (with the task's estimates) and the process start table."""

    spans: pd.DataFrame | Sequence[Sequence[Any]]  # as timeline.timeline_table takes them
    starts: pd.DataFrame | None = None  # timeline.start_table
    title: str | None = None

    def png(self) -> bytes:
        """The picture (see draw_run) as PNG bytes."""
        buffer = io.BytesIO()
        draw_run(self.spans, self.starts, self.title).savefig(buffer, format="png", dpi=DPI)
        return buffer.getvalue()


def time_unit(end_s: float) -> tuple[float, str]:
    """Seconds per unit and the unit's name for a timeline of `end_s` seconds."""
    for longer_than, seconds, name in UNITS:
        if end_s > longer_than:
            return seconds, name
    return 1.0, "seconds"


def duration(seconds: float) -> str:
    """A span of time as a person reads it: 2.5 s, 15.2 min, 3.1 h."""
    per, _ = time_unit(seconds * 0.999)  # 180 s stays "180.0 s"; longer ones in minutes, then hours
    return f"{seconds:,.1f} s" if per == 1.0 else f"{seconds / per:,.1f} {'min' if per == 60.0 else 'h'}"


def draw_run(spans: pd.DataFrame | Iterable[Sequence[Any]], starts: pd.DataFrame | None = None,
             title: str | None = None):
    """run.png as a Figure: the timeline above; the users against their estimates and the shards' time below."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=FIGURE_INCHES, dpi=DPI, layout="constrained")
    FigureCanvasAgg(figure)
    timeline = timeline_table(spans, starts)
    started = relative_starts(starts, timeline)
    first = first_users(timeline, started)
    phases = shard_phases(timeline, started)
    slow = slow_users(timeline, first)
    grid = figure.add_gridspec(2, 2, height_ratios=[1.45, 1], width_ratios=[1.6, 1])
    has_starts = len(started) > 0
    draw_timeline_panel(figure.add_subplot(grid[0, :]), timeline, phases, slow, has_starts)
    draw_estimate_panel(figure.add_subplot(grid[1, 0]), timeline, first, slow)
    draw_breakdown_panel(figure.add_subplot(grid[1, 1]), shard_summary(timeline, phases), has_starts)
    users = len(timeline)
    counts = f"{plural(users, 'user')}, {plural(timeline['shard'].nunique(), 'shard')}: " if users else ""
    first_line = counts + "where the run's time went"
    second = title or ""
    if timeline.attrs.get("run_start") is not None:
        second += f"{': ' if second else ''}run start {datetime.fromtimestamp(timeline.attrs['run_start'], UTC):%Y-%m-%d %H:%M:%S} UTC"
    figure.suptitle(f"{first_line}\n{second}" if second else first_line, fontsize=TITLE_SIZE + 1, fontweight="bold")
    return figure


def draw_timeline_panel(axes, timeline: pd.DataFrame, phases: pd.DataFrame, slow: pd.DataFrame,
                        has_starts: bool = True) -> None:
    end = float(max(timeline["end_s"].max(), 0.0)) if len(timeline) else 0.0
    per, unit = time_unit(end)
    style_axes(axes, TIMELINE_TITLE, f"{unit} since the run's start", "shard")
    axes.xaxis.set_major_formatter(thousands())
    axes.grid(False, axis="y")
    if timeline.empty:
        empty_panel(axes, "no committed users with a commit time")
        return
    shards = sorted(timeline["shard"].unique(), key=shard_sort_key)
    row = {label: i for i, label in enumerate(shards)}
    sliver = 0.002 * max(end, 1e-3)  # a user of (almost) no time still gets a sliver, so that it is seen
    bars = _draw_spans(axes, timeline, phases, slow, row, per, sliver)
    annotate = len(shards) <= 40
    if annotate:
        _draw_shard_notes(axes, shard_summary(timeline, phases).set_index("shard"), row, per)
    axes.set_yticks(range(len(shards)))
    step = max(1, math.ceil(len(shards) / 40))  # at most ~40 shard labels stay legible
    axes.set_yticklabels([label if i % step == 0 else "" for i, label in enumerate(shards)])
    axes.set_ylim(len(shards) - 0.5, -0.5 - 0.15)  # first shard on top, room for the slow markers
    axes.set_xlim(0, max(end, 1e-3) / per * (1.32 if annotate else 1.02))  # room for the notes
    _timeline_legend(axes, set(timeline["status"].unique()), phases, slow, int(bars["users"].max()), has_starts)


def _bars(axes, y: float, starts: pd.Series, widths: Any, per: float, **style: Any) -> None:
    axes.broken_barh(list(zip(starts / per, widths / per)), (y - BAR_HEIGHT / 2, BAR_HEIGHT), **style)


def _draw_spans(axes, timeline: pd.DataFrame, phases: pd.DataFrame, slow: pd.DataFrame, row: dict[Any, int],
                per: float, sliver: float) -> pd.DataFrame:
    """The shards' phases, their users coloured by outcome and the slow ones outlined; returns the bars."""
    for phase, colour, hatch in (("waiting", WAITING_COLOUR, "//"), ("start-up", STARTUP_COLOUR, None)):
        for label, group in phases[phases["phase"] == phase].groupby("shard", sort=False):
            _bars(axes, row[label], group["start_s"], np.maximum(group["end_s"] - group["start_s"], sliver), per,
                  facecolors=colour, edgecolors="#9a9a9a" if hatch else "none", hatch=hatch, linewidth=0.4)
    bars = timeline_bars(timeline)
    bars = bars.assign(width=np.maximum(bars["end_s"] - bars["start_s"], sliver))
    edge = "white" if len(bars) <= 60 * len(row) else "none"  # white between users while bars are wide
    for (shard, status), group in bars.groupby(["shard", "status"], sort=False):
        _bars(axes, row[shard], group["start_s"], group["width"], per,
              facecolors=STATUS_COLOURS.get(str(status), "black"), edgecolors=edge, linewidth=0.6)
    for label, group in slow.groupby("shard", sort=False):
        _bars(axes, row[label], group["start_s"], np.maximum(group["seconds"], sliver), per,
              facecolors="none", edgecolors=SLOW_EDGE, linewidth=1.8)
        # a marker above the user: at 10^5 users its box is narrower than a pixel
        axes.plot((group["start_s"] + group["seconds"] / 2) / per, [row[label] - BAR_HEIGHT / 2 - 0.08] * len(group),
                  linestyle="none", marker="v", color=SLOW_EDGE, markersize=6, clip_on=False)
    return bars


def _draw_shard_notes(axes, summary: pd.DataFrame, row: dict[str, int], per: float) -> None:
    """After each shard's last user: its users, failures, wait and start-up."""
    for label, y in row.items():
        info = summary.loc[label].to_dict()
        note = " " + plural(int(info["users"]), "user")
        if info["failed"]:
            note += f", {int(info['failed']):,} failed"
        if info["waited_s"] > 0:
            note += f" · waited {duration(info['waited_s'])}"
        if info["startup_s"] > 0:
            note += f" · start-up {duration(info['startup_s'])}"
        axes.text(info["finish_s"] / per, y, note, va="center", ha="left", fontsize=NOTE_SIZE, clip_on=False)


def _timeline_legend(axes, statuses: set[str], phases: pd.DataFrame, slow: pd.DataFrame, per_bar: int,
                     has_starts: bool) -> None:
    from matplotlib.artist import Artist
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    handles: list[Artist] = []
    if (phases["phase"] == "waiting").any():
        handles.append(Patch(facecolor=WAITING_COLOUR, edgecolor="#9a9a9a", hatch="//",
                             label="waiting to start: no free core yet (on a cluster: in the queue)"))
    if (phases["phase"] == "start-up").any():
        handles.append(Patch(facecolor=STARTUP_COLOUR, label="start-up: process start to first user (data, JVM)"))
    handles += [Patch(facecolor=STATUS_COLOURS[s], label=f"user {s}") for s in STATUS_SEVERITY if s in statuses]
    if not slow.empty:
        basis = "its estimate (scaled to the run's median)" if slow.attrs["basis"] == "estimate" else "the median user"
        handles.append(Line2D([], [], color=SLOW_EDGE, marker="v", linestyle="none", markersize=6,
                              label=f"slow: ≥ {slow.attrs['factor']:g}× {basis}"))
    notes = [f"one bar = up to {per_bar:,} consecutive users, coloured by their most common status"] if per_bar > 1 else []
    if not has_starts:
        notes.append("no process start times in this run: waiting and start-up not shown")
    axes.legend(handles=handles, fontsize=LEGEND_SIZE, loc="upper center", bbox_to_anchor=(0.5, -0.13),
                ncol=min(len(handles), 4) or 1, framealpha=0.9, title="; ".join(notes) or None,
                title_fontsize=LEGEND_SIZE)


def draw_estimate_panel(axes, timeline: pd.DataFrame, first: np.ndarray, slow: pd.DataFrame) -> None:
    """Each user's seconds against the task's estimate (log-log), the run's median rate and the slow
    line; without estimates, how the users' seconds are spread, with the slow line."""
    scale, factor = slow.attrs.get("scale", math.nan), slow.attrs.get("factor", 3.0)
    if slow.attrs.get("basis") != "estimate":
        _draw_seconds_spread(axes, timeline, scale, factor)
        return
    predicted = timeline[PREDICTED].to_numpy(dtype=float)
    seconds = timeline["seconds"].to_numpy(dtype=float)
    estimated = np.isfinite(predicted) & (predicted > 0)
    shown = estimated & (seconds > 0)  # a log scale has no place for a user of no measurable time
    title = f"{ESTIMATE_TITLE}, n = {plural(int(estimated.sum()), 'user')} with an estimate"
    if (estimated & ~shown).any():
        title += f"\n({int((estimated & ~shown).sum()):,} of them took no measurable time: not drawn)"
    style_axes(axes, title, "estimated seconds (the task's prediction)", "seconds taken")
    axes.set_xscale("log")
    axes.set_yscale("log")
    if not shown.any():
        empty_panel(axes, "no user has both an estimate and a measured time")
        return
    _draw_estimate_points(axes, predicted, seconds, shown, first, slow)
    if math.isfinite(scale) and scale > 0:
        x = np.geomspace(float(predicted[shown].min()) / 1.1, float(predicted[shown].max()) * 1.1, 50)
        axes.plot(x, scale * x, color="#555555", linewidth=1.2,
                  label=f"the run's median: {scale:,.3g} s taken per estimated second")
        axes.plot(x, factor * scale * x, color=SLOW_EDGE, linestyle="--", linewidth=1.2,
                  label=f"slow: ≥ {factor:g}× that")
    axes.autoscale_view()
    _label_log_ticks(axes)
    # outside, to the right: inside it would hide the slow and the warm-up users, which sit high
    axes.legend(fontsize=LEGEND_SIZE, loc="upper left", bbox_to_anchor=(1.01, 1.0), framealpha=0.9)


def _draw_seconds_spread(axes, timeline: pd.DataFrame, scale: float, factor: float) -> None:
    """Without estimates: a histogram of the users' seconds and the slow line."""
    style_axes(axes, f"{SECONDS_TITLE}, n = {len(timeline):,}", "seconds of one user", "users")
    seconds = timeline["seconds"].to_numpy(dtype=float)
    seconds = seconds[np.isfinite(seconds)]
    if not seconds.size:
        empty_panel(axes, "no committed users with a commit time")
        return
    axes.hist(seconds, bins=min(60, max(10, int(math.sqrt(seconds.size)))), color="#8c8c8c")
    if math.isfinite(scale) and scale > 0:  # a median user of no measurable time judges nobody
        axes.axvline(factor * scale, color=SLOW_EDGE, linestyle="--", linewidth=1.2,
                     label=f"slow: ≥ {factor:g}× the median user ({scale:,.3g} s)")
        axes.legend(fontsize=LEGEND_SIZE, loc="upper right")
    axes.yaxis.set_major_formatter(thousands())


def _draw_estimate_points(axes, predicted: np.ndarray, seconds: np.ndarray, shown: np.ndarray, first: np.ndarray,
                          slow: pd.DataFrame) -> None:
    """The judged users, the JVMs' first users (warm-up) apart, and the slow ones circled."""
    judged = shown & ~first
    warm = shown & first
    if judged.any():
        axes.scatter(predicted[judged], seconds[judged], s=6 if judged.sum() > 2000 else 14, color="#4c72b0",
                     alpha=0.5, linewidths=0, rasterized=True, label="user")
    if warm.any():
        axes.scatter(predicted[warm], seconds[warm], s=30, marker="^", color=WARM_UP_COLOUR,
                     label="first user of a JVM (its warm-up: not judged)")
    if not slow.empty:
        axes.scatter(slow[PREDICTED], slow["seconds"], s=60, facecolors="none", edgecolors=SLOW_EDGE, linewidths=1.4,
                     label=f"slow (marked above; at most {SLOW_PER_SHARD} per shard)")


def _label_log_ticks(axes) -> None:
    """0.5 s, not 5 x 10^-1; every minor tick labelled within a decade, those at 2 and 5 beyond."""
    from matplotlib.ticker import FuncFormatter

    for axis in (axes.xaxis, axes.yaxis):
        axis.set_major_formatter(thousands())
        low, high = sorted(axis.get_view_interval())
        axis.set_minor_formatter(thousands() if low > 0 and high < 10 * low else
                                 FuncFormatter(lambda x, _: thousands()(x) if f"{x:.0e}"[0] in "25" else ""))


def draw_breakdown_panel(axes, summary: pd.DataFrame, has_starts: bool = True) -> None:
    """Per shard, its time from the run's start to its last user, stacked: waiting to start, start-up,
    its users' analysis, and the rest (commits and gaps between users, a restart's lost time)."""
    per, unit = time_unit(float(summary["finish_s"].max()) if len(summary) else 0.0)  # the timeline's unit
    style_axes(axes, f"{BREAKDOWN_TITLE}, {plural(len(summary), 'shard')}", f"{unit} from the run's start", "shard")
    axes.grid(False, axis="y")
    axes.xaxis.set_major_formatter(thousands())
    if summary.empty:
        empty_panel(axes, "no committed users with a commit time")
        return
    ordered = summary.assign(rank=summary["shard"].map(shard_sort_key)).sort_values("rank").reset_index(drop=True)
    rest = np.maximum(ordered["finish_s"] - ordered["waited_s"] - ordered["startup_s"] - ordered["busy_s"], 0.0)
    parts = [("waiting to start", ordered["waited_s"], WAITING_COLOUR, "//"),
             ("start-up", ordered["startup_s"], STARTUP_COLOUR, None),
             ("users' analysis", ordered["busy_s"], STATUS_COLOURS["ok"], None),
             ("the rest: commits, gaps, restarts", rest, "#9ecae1", None)]
    left = np.zeros(len(ordered))
    y = np.arange(len(ordered))
    for label, seconds, colour, hatch in parts:
        values = np.asarray(seconds, dtype=float) / per
        if values.any() or label == "users' analysis":
            axes.barh(y, values, left=left, height=0.7, color=colour, hatch=hatch,
                      edgecolor="#9a9a9a" if hatch else "none", linewidth=0.4, label=label)
        left += values
    step = max(1, math.ceil(len(ordered) / 25))
    axes.set_yticks(y)
    axes.set_yticklabels([label if i % step == 0 else "" for i, label in enumerate(ordered["shard"])])
    axes.set_ylim(len(ordered) - 0.5, -0.5)
    title = None if has_starts else "no process start times: waiting and start-up not known"
    axes.legend(fontsize=LEGEND_SIZE, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=2, framealpha=0.9,
                title=title, title_fontsize=LEGEND_SIZE)
