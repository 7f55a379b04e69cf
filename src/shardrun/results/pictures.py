"""The merge's two pictures, drawn in its own process (docs/dev/MERGE.md) on an explicit Agg canvas, never
pyplot's global state; matplotlib is imported only when drawing. summary.png: the task's panels under a
plain-words title. run.png: where the run's time went, shard by shard (timeline.py's tables).
A picture that fails is logged and the merge goes on without it; each picture fails alone.
"""

from __future__ import annotations

import io
import logging
import math
import textwrap
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pandas as pd

from shardrun.panel_style import (
    LEGEND_SIZE,
    NOTE_SIZE,
    TITLE_SIZE,
    common_reasons,
    empty_panel,
    style_axes,
    thousands,
    why_nothing_is_drawn,
)
from shardrun.results.read import ShardInput
from shardrun.results.timeline import (
    PREDICTED,
    SLOW_PER_SHARD,
    STATUS_SEVERITY,
    process_phases,
    relative_starts,
    shard_sort_key,
    shard_summary,
    slow_users,
    span_table,
    start_table,
    timeline_bars,
    timeline_table,
)
from shardrun.states import UserStatus
from shardrun.storage.paths import MergedPaths
from shardrun.task import SummaryPanel, Task

log = logging.getLogger(__name__)

DPI = 110
SUMMARY_INCHES = (16, 11)
RUN_INCHES = (16, 10)
STATUS_COLOURS = {UserStatus.OK.value: "#4c72b0", UserStatus.SKIPPED.value: "#b0b0b0",
                  UserStatus.FAILED.value: "#d62728"}
STATUS_PANEL_TITLE = "Result rows by status"
REASONS_PANEL_TITLE = "Why rows were skipped or failed"
MAX_REASONS = 12  # the most common kinds of reason drawn; the rest counted in one line
TIMELINE_TITLE = "Per-shard timeline: waiting for a core, start-up, then each user from its start to its commit"
WAITING_COLOUR = "#e6e6e6"
STARTUP_COLOUR = "#f2c14e"
SLOW_EDGE = "black"
BAR_HEIGHT = 0.7  # of a shard's row
# where a timeline runs longer than this many seconds, its axis counts minutes, then hours
UNITS = ((2 * 3600.0, 3600.0, "hours"), (180.0, 60.0, "minutes"), (0.0, 1.0, "seconds"))


def draw_pictures(frame: pd.DataFrame, shards: Sequence[ShardInput], task: Task, settings: Any | None
                  ) -> dict[str, bytes]:
    """summary.png and run.png as PNG bytes by file name; one that fails is logged and left out."""
    runs = sorted({shard.dir.parent.name for shard in shards})
    title = runs[0] if len(runs) == 1 else f"{len(runs)} runs"
    pictures = {
        MergedPaths.SUMMARY_PNG: lambda: draw_summary(frame, task.summary_panels(frame, settings), title),
        MergedPaths.RUN_PNG: lambda: draw_run(predicted_spans(span_table(shards), task, frame, settings),
                                              start_table(shards), title),
    }
    drawn = {}
    for name, draw in pictures.items():
        try:
            drawn[name] = png(draw())
        except Exception as exc:  # documented guard: the picture must not cost the results
            # the error in the line itself too: the one line a reader of the merge's output sees
            log.exception("could not draw %s (%s: %s); the merged results are complete without it",
                          name, type(exc).__name__, exc)
            continue
        log.info("drew %s", name)
    return drawn


def predicted_spans(spans: pd.DataFrame, task: Task, frame: pd.DataFrame, settings: Any | None) -> pd.DataFrame:
    """The span table with the task's estimate of each user's seconds (Task.result_seconds), NaN without one."""
    estimates = None if settings is None else task.result_seconds(frame, settings)
    predicted = pd.Series(estimates if estimates is not None and len(estimates) else None, dtype="float64")
    return spans.assign(**{PREDICTED: spans["user_id"].astype(object).map(predicted).astype("float64").to_numpy()})


def new_figure(inches: tuple[int, int]):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=inches, dpi=DPI, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def png(figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI)
    return buffer.getvalue()


def plural(n: int, word: str) -> str:
    return f"{n:,} {word}" if n == 1 else f"{n:,} {word}s"


# --- summary.png --------------------------------------------------------------------------------


def status_counts(frame: pd.DataFrame) -> dict[str, int]:
    """Rows per status, known statuses first (ok, skipped, failed), then any other value."""
    if "status" not in frame.columns:
        return {}
    counts = frame["status"].value_counts()
    counts.index = counts.index.map(str)
    ordered = [s for s in STATUS_SEVERITY if s in counts.index] + sorted(set(counts.index) - set(STATUS_SEVERITY))
    return {status: int(counts[status]) for status in ordered}


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


def draw_summary(frame: pd.DataFrame, panels: Sequence[SummaryPanel] = (), title: str | None = None):
    """summary.png as a Figure: the task's panels row by row (SummaryPanel.row; a row's panels share its
    width by their widths), or the core's status and reasons panels when the task draws none."""
    figure = new_figure(SUMMARY_INCHES)
    statuses = status_counts(frame)
    drawn = list(panels) or [
        SummaryPanel(draw=lambda axes: draw_status_panel(axes, frame, statuses)),
        SummaryPanel(draw=lambda axes: draw_reasons_panel(axes, reason_counts(frame)), width=1.6),
    ]
    rows = sorted({panel.row for panel in drawn})
    outer = figure.add_gridspec(len(rows), 1)
    for place, row in enumerate(rows):
        mine = [panel for panel in drawn if panel.row == row]
        grid = outer[place].subgridspec(1, len(mine), width_ratios=[panel.width for panel in mine])
        for column, panel in enumerate(mine):
            panel.draw(figure.add_subplot(grid[0, column]))
    # the first line: the core's part (no analysis named), then what the task's panels said they show
    part = plural(frame["user_id"].nunique(), "user") if "user_id" in frame.columns else plural(len(frame), "row")
    counted = [plural(len(frame), "result row")]
    if statuses:
        counted.append(" / ".join(f"{status} {n:,}" for status, n in statuses.items()))
    heading = (f"{title}: " if title else "") + ", ".join(counted)
    figure.suptitle(f"{part}: {figure.get_suptitle() or 'result rows by status'}\n{heading}",
                    fontsize=TITLE_SIZE + 1, fontweight="bold")
    return figure


def draw_status_panel(axes, frame: pd.DataFrame, counts: dict[str, int]) -> None:
    """The core's panel for a task that draws none: result rows per status, and why none is ok when none is."""
    style_axes(axes, STATUS_PANEL_TITLE, "rows", "status")
    axes.grid(False, axis="y")
    if not counts:
        empty_panel(axes, "no status column")
        return
    _counted_bars(axes, list(counts), list(counts.values()), [STATUS_COLOURS.get(s, "black") for s in counts])
    if UserStatus.OK.value not in counts:
        why = why_nothing_is_drawn(frame["status"], frame.get("reason"), what="row")
        axes.text(0.5, 0.03, why, transform=axes.transAxes, ha="center", va="bottom", fontsize=NOTE_SIZE + 1,
                  color="#333333", bbox=dict(facecolor="white", edgecolor="#999999", alpha=0.9))


def draw_reasons_panel(axes, reasons: Sequence[tuple[str, str, int]]) -> None:
    """The core's second panel: the skipped and failed rows by their reason's kind, most common first."""
    style_axes(axes, REASONS_PANEL_TITLE, "rows", "")
    axes.grid(False, axis="y")
    if not reasons:
        empty_panel(axes, "no row was skipped or failed")
        return
    shown = list(reasons[:MAX_REASONS])
    labels = [textwrap.shorten(f"{status}: {kind}", 60, placeholder="…") for status, kind, _ in shown]
    values = [n for _, _, n in shown]
    colours = [STATUS_COLOURS.get(status, "black") for status, _, _ in shown]
    if len(reasons) > MAX_REASONS:
        labels.append(f"{len(reasons) - MAX_REASONS:,} other reasons")
        values.append(sum(n for _, _, n in reasons[MAX_REASONS:]))
        colours.append("#dddddd")
    _counted_bars(axes, labels, values, colours)


def _counted_bars(axes, labels: list[str], values: list[int], colours: list[str]) -> None:
    """A bar per count, top down, its count beside it; a bar keeps its height however few there are."""
    y = range(len(values))
    bars = axes.barh(y, values, color=colours, height=0.6)
    axes.bar_label(bars, labels=[f"{n:,}" for n in values], fontsize=NOTE_SIZE, padding=2)
    axes.set_yticks(list(y))
    axes.set_yticklabels(labels)
    axes.set_ylim(max(len(values), 8) - 0.5, -0.5)
    axes.set_xlim(0, max(values) * 1.15)
    axes.xaxis.get_major_locator().set_params(integer=True)
    axes.xaxis.set_major_formatter(thousands())


# --- run.png ------------------------------------------------------------------------------------


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
    """run.png as a Figure (spans and starts: span_table's and start_table's, or UserSpans): the timeline
    above; the users against their estimates and where each shard's time went below."""
    figure = new_figure(RUN_INCHES)
    timeline = timeline_table(spans, starts)
    started = relative_starts(starts, timeline)
    phases, first = process_phases(timeline, started)
    slow = slow_users(timeline, first)
    summary = shard_summary(timeline, phases)
    grid = figure.add_gridspec(2, 2, height_ratios=[1.45, 1], width_ratios=[1.6, 1])
    has_starts = len(started) > 0
    draw_timeline_panel(figure.add_subplot(grid[0, :]), timeline, phases, slow, summary, has_starts)
    draw_estimate_panel(figure.add_subplot(grid[1, 0]), timeline, first, slow)
    draw_breakdown_panel(figure.add_subplot(grid[1, 1]), summary, has_starts)
    first_line = "where the run's time went"
    if len(timeline):
        first_line = f"{plural(len(timeline), 'user')}, {plural(timeline['shard'].nunique(), 'shard')}: {first_line}"
    second = title or ""
    if timeline.attrs["run_start"] is not None:
        moment = datetime.fromtimestamp(timeline.attrs["run_start"], UTC)
        second += f"{': ' if second else ''}run start {moment:%Y-%m-%d %H:%M:%S} UTC"
    figure.suptitle(f"{first_line}\n{second}" if second else first_line, fontsize=TITLE_SIZE + 1, fontweight="bold")
    return figure


def draw_timeline_panel(axes, timeline: pd.DataFrame, phases: pd.DataFrame, slow: pd.DataFrame,
                        summary: pd.DataFrame, has_starts: bool) -> None:
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
    if annotate:  # after each shard's last user: its users, failures, wait and start-up
        for label, info in summary.set_index("shard").iterrows():
            note = " " + plural(int(info["users"]), "user")
            if info["failed"]:
                note += f", {int(info['failed']):,} failed"
            if info["waited_s"] > 0:
                note += f" · waited {duration(info['waited_s'])}"
            if info["startup_s"] > 0:
                note += f" · start-up {duration(info['startup_s'])}"
            axes.text(info["finish_s"] / per, row[label], note, va="center", ha="left", fontsize=NOTE_SIZE,
                      clip_on=False)
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
    notes = []
    if per_bar > 1:
        notes.append(f"one bar = up to {per_bar:,} consecutive users, coloured by their most common status")
    if not has_starts:
        notes.append("no process start times in this run: waiting and start-up not shown")
    axes.legend(handles=handles, fontsize=LEGEND_SIZE, loc="upper center", bbox_to_anchor=(0.5, -0.13),
                ncol=min(len(handles), 4) or 1, framealpha=0.9, title="; ".join(notes) or None,
                title_fontsize=LEGEND_SIZE)


def draw_estimate_panel(axes, timeline: pd.DataFrame, first: np.ndarray, slow: pd.DataFrame) -> None:
    """Each user's seconds against the task's estimate (log-log), the run's median rate and the slow line;
    without estimates, a histogram of the users' seconds with the slow line."""
    scale, factor = slow.attrs["scale"], slow.attrs["factor"]
    if slow.attrs["basis"] != "estimate":
        style_axes(axes, f"Each user's time (the task gives no estimate), n = {len(timeline):,}", "seconds of one user",
                   "users")
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
        return
    predicted = timeline[PREDICTED].to_numpy(dtype=float)
    seconds = timeline["seconds"].to_numpy(dtype=float)
    estimated = np.isfinite(predicted) & (predicted > 0)
    shown = estimated & (seconds > 0)  # a log scale has no place for a user of no measurable time
    title = f"Each user's time against the task's estimate, n = {plural(int(estimated.sum()), 'user')} with an estimate"
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


def _draw_estimate_points(axes, predicted: np.ndarray, seconds: np.ndarray, shown: np.ndarray, first: np.ndarray,
                          slow: pd.DataFrame) -> None:
    """The judged users, the JVMs' first users (warm-up) apart, and the slow ones circled."""
    judged = shown & ~first
    warm = shown & first
    if judged.any():
        axes.scatter(predicted[judged], seconds[judged], s=6 if judged.sum() > 2000 else 14, color="#4c72b0",
                     alpha=0.5, linewidths=0, rasterized=True, label="user")
    if warm.any():
        axes.scatter(predicted[warm], seconds[warm], s=30, marker="^", color="#e07b00",
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
    style_axes(axes, f"Where each shard's time went, {plural(len(summary), 'shard')}", f"{unit} from the run's start",
               "shard")
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
