"""summary.png of a merged result set: AIS against k, the selected k, and a per-shard timeline.

Two halves. The data preparation is pure (a frame of merged rows and a list of user spans in,
small summary tables out) and is tested without drawing. `write_summary_png` draws those tables
with matplotlib on an explicit Agg canvas: pyplot's global state is never touched, so merging
inside another program (a notebook, a GUI) neither opens windows nor changes its figures.

Whatever the size of the result set, the drawing stays small: panels 1 and 2 draw a handful of
quantiles and counts per (mode, k), and the timeline draws at most `MAX_BARS_PER_SHARD` bars per
shard (consecutive users are combined into one bar beyond that).
"""

from __future__ import annotations

import io
import math
import re
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Mapping, NamedTuple, Sequence

import numpy as np
import pandas as pd

MAX_BARS_PER_SHARD = 400  # beyond a few hundred bars a shard's row is wider in bars than in pixels
SLOW_FACTOR = 3.0  # a user is slow when it took at least this many times the median user
SLOW_PER_SHARD = 3  # the slowest users outlined per shard (more would hide the others)
QUANTILES = {"q10": 0.10, "q25": 0.25, "median": 0.50, "q75": 0.75, "q90": 0.90}
STATUS_SEVERITY = {"ok": 0, "skipped": 1, "failed": 2}  # also the display order of statuses

_AIS_COLUMN = re.compile(r"^ais_k(\d+)_bits$")
_SHARD_LABEL = re.compile(r"^(\d+)/(\d+)")


# --- timeline spans --------------------------------------------------------------------------


class UserSpan(NamedTuple):
    """One committed user of one shard: from its start to its commit, in POSIX seconds."""

    shard: str
    start: float
    end: float
    status: str


def user_status(rows: Iterable[Mapping[str, Any]]) -> str:
    """One status for a user's rows: failed if any row failed, ok if any row is ok, else skipped."""
    statuses = {row.get("status") for row in rows}
    if "failed" in statuses:
        return "failed"
    if "ok" in statuses:
        return "ok"
    return "skipped"


def user_span(shard: str, committed_at: Any, rows: Sequence[Mapping[str, Any]]) -> UserSpan | None:
    """The span of one committed user: it ended at `committed_at` and took the rows' `seconds`.

    None when the commit time is missing or unreadable (a result file written by hand or by another
    tool): such a user is left out of the timeline only, never out of the results.
    """
    if not isinstance(committed_at, str):
        return None
    try:
        moment = datetime.fromisoformat(committed_at)
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)  # store writes UTC; never read it as local time
    end = moment.timestamp()
    durations = [row.get("seconds") for row in rows]
    seconds = max((float(d) for d in durations if _is_number(d) and math.isfinite(d) and d >= 0), default=0.0)
    return UserSpan(shard=shard, start=end - seconds, end=end, status=user_status(rows))


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def shard_sort_key(label: str) -> tuple:
    """Shards as people count them: "2/4" before "10/16", by K then i; other labels after, as text."""
    match = _SHARD_LABEL.match(label)
    if match:
        return (0, int(match.group(2)), int(match.group(1)), label)
    return (1, 0, 0, label)


def timeline_table(spans: Iterable[Sequence[Any]]) -> pd.DataFrame:
    """One row per span: shard, start_s, end_s (seconds since the earliest start), seconds, status.

    Sorted by shard (see shard_sort_key), then start. The frame's attrs["run_start"] holds the
    earliest start in POSIX seconds (None when there are no spans).
    """
    table = pd.DataFrame(list(spans), columns=["shard", "start", "end", "status"])
    table["shard"] = table["shard"].astype(str)
    table["status"] = table["status"].astype(str)
    run_start = float(table["start"].min()) if len(table) else None
    table["start_s"] = table["start"].astype("float64") - (run_start or 0.0)
    table["end_s"] = table["end"].astype("float64") - (run_start or 0.0)
    table["seconds"] = table["end_s"] - table["start_s"]
    order = {label: rank for rank, label in enumerate(sorted(set(table["shard"]), key=shard_sort_key))}
    table["shard_rank"] = table["shard"].map(order)
    table = table.sort_values(["shard_rank", "start_s", "end_s"], kind="stable").reset_index(drop=True)
    table = table[["shard", "start_s", "end_s", "seconds", "status"]]
    table.attrs["run_start"] = run_start
    return table


def shard_summary(timeline: pd.DataFrame) -> pd.DataFrame:
    """Per shard: users, ok / skipped / failed, first_start_s, finish_s, busy_s (sum of user
    seconds) and lag_s (how long after the first shard to finish it finished).

    Ordered straggler first: latest finish first, then by shard.
    """
    columns = ["shard", "users", "ok", "skipped", "failed", "first_start_s", "finish_s", "busy_s", "lag_s"]
    if timeline.empty:
        return pd.DataFrame(columns=columns)
    grouped = timeline.groupby("shard", sort=False)
    summary = pd.DataFrame(
        {
            "users": grouped.size(),
            "first_start_s": grouped["start_s"].min(),
            "finish_s": grouped["end_s"].max(),
            "busy_s": grouped["seconds"].sum(),
        }
    )
    counts = pd.crosstab(timeline["shard"], timeline["status"])
    for status in ("ok", "skipped", "failed"):
        summary[status] = counts[status] if status in counts else 0
    summary["lag_s"] = summary["finish_s"] - summary["finish_s"].min()
    summary = summary.reset_index(names="shard")
    summary["rank"] = summary["shard"].map(shard_sort_key)
    summary = summary.sort_values(["finish_s", "rank"], ascending=[False, True], kind="stable")
    return summary[columns].reset_index(drop=True)


def slow_users(timeline: pd.DataFrame, factor: float = SLOW_FACTOR, per_shard: int = SLOW_PER_SHARD) -> pd.DataFrame:
    """Users that took at least `factor` times the median user, at most `per_shard` per shard,
    slowest first. Empty when all users took about the same time (nothing stands out)."""
    if timeline.empty:
        return timeline.copy()
    threshold = factor * float(timeline["seconds"].median())
    slow = timeline[(timeline["seconds"] >= threshold) & (timeline["seconds"] > 0)]
    slow = slow.sort_values(["seconds", "start_s"], ascending=[False, True], kind="stable")
    slow = slow.groupby("shard", sort=False).head(per_shard)
    slow = slow.reset_index(drop=True)
    slow.attrs["threshold_s"] = threshold
    return slow


def timeline_bars(timeline: pd.DataFrame, max_bars_per_shard: int = MAX_BARS_PER_SHARD) -> pd.DataFrame:
    """Bars to draw: shard, start_s, end_s, status, users (how many users the bar stands for).

    A shard with at most `max_bars_per_shard` users gets one bar per user. A bigger shard gets its
    users combined in start order, `ceil(n / max_bars_per_shard)` consecutive users per bar, with
    the most common status of its users (ties go to the more severe status), so a bar shows what
    most of its users did and a cluster of failures still shows. A bar never bridges an idle
    gap (a shard stopped and resumed later): a gap longer than 1/2000 of the run starts a new bar,
    so idle time stays visible.
    """
    columns = ["shard", "start_s", "end_s", "status", "users"]
    if timeline.empty:
        return pd.DataFrame(columns=columns)
    frame = timeline[["shard", "start_s", "end_s", "status"]].copy()
    position = frame.groupby("shard", sort=False).cumcount()
    size = frame.groupby("shard", sort=False)["shard"].transform("size")
    chunk = np.ceil(size / max_bars_per_shard).astype("int64")
    previous_end = frame.groupby("shard", sort=False)["end_s"].shift()
    total = float(frame["end_s"].max() - frame["start_s"].min())
    idle_gap = frame["start_s"] - previous_end > max(total / 2000, 1e-9)
    starts_bar = (position % chunk == 0) | idle_gap
    frame["bar"] = starts_bar.astype("int64").cumsum()  # spans are sorted by shard then start
    frame["severity"] = frame["status"].map(STATUS_SEVERITY).fillna(max(STATUS_SEVERITY.values()))
    grouped = frame.groupby("bar", sort=True)
    bars = pd.DataFrame(
        {
            "shard": grouped["shard"].first(),
            "start_s": grouped["start_s"].min(),
            "end_s": grouped["end_s"].max(),
            "users": grouped.size(),
        }
    )
    # most common status per bar: count per (bar, status), then keep the largest count, the most
    # severe status first among equals
    tally = frame.groupby(["bar", "status"], sort=False).agg(n=("status", "size"), severity=("severity", "first"))
    tally = tally.reset_index().sort_values(["bar", "n", "severity"], ascending=[True, False, False], kind="stable")
    bars["status"] = tally.drop_duplicates("bar").set_index("bar")["status"]
    return bars[columns].reset_index(drop=True)


# --- AIS and selected k --------------------------------------------------------------------


def grid_ks(frame: pd.DataFrame) -> list[int]:
    """The k grid as the result columns show it (`ais_k<k>_bits`), ascending."""
    return sorted(int(m.group(1)) for c in frame.columns if (m := _AIS_COLUMN.match(str(c))))


def ok_rows(frame: pd.DataFrame) -> pd.DataFrame:
    """Rows of users with status ok; every row when the result set has no status column."""
    if "status" not in frame.columns:
        return frame
    return frame[(frame["status"] == "ok").to_numpy(dtype=bool, na_value=False)]


def mode_groups(frame: pd.DataFrame) -> dict[str, np.ndarray]:
    """Row positions of each feature mode, by mode name (sorted); one group "all rows" for a task
    without modes. Positions rather than string comparisons: a frame may hold millions of rows."""
    if "feature_mode" not in frame.columns:
        return {"all rows": np.arange(len(frame))} if len(frame) else {}
    codes, names = pd.factorize(frame["feature_mode"], sort=False)  # missing modes get code -1
    groups = {str(name): np.flatnonzero(codes == code) for code, name in enumerate(names)}
    return dict(sorted(groups.items()))


def _numbers(series: pd.Series) -> np.ndarray:
    """A column as float64 with NaN for missing (nullable Int64 columns hold pd.NA)."""
    return pd.to_numeric(series, errors="coerce").to_numpy(dtype="float64", na_value=np.nan)


def ais_quantiles(frame: pd.DataFrame) -> pd.DataFrame:
    """Per (feature_mode, measure, k) over ok rows: n, q10, q25, median, q75, q90.

    measure "ais" is `ais_k<k>_bits`; "bias_corrected" is `ais_k<k>_bits - ais_k<k>_null_mean_bits`
    (only where the null mean column exists). NaN values (a k left out by the undersampling guard)
    are left out of that k's statistics; a (mode, measure, k) without any value has no row.
    """
    columns = ["feature_mode", "measure", "k", "n", *QUANTILES]
    rows = ok_rows(frame)
    groups = mode_groups(rows)
    records = []
    for k in grid_ks(frame):
        measures = {"ais": _numbers(rows[f"ais_k{k}_bits"])}
        null_column = f"ais_k{k}_null_mean_bits"
        if null_column in rows.columns:
            measures["bias_corrected"] = measures["ais"] - _numbers(rows[null_column])
        for measure, values in measures.items():
            for mode, positions in groups.items():
                present = values[positions]
                present = present[~np.isnan(present)]
                if present.size:
                    quantiles = np.quantile(present, list(QUANTILES.values()))
                    records.append((mode, measure, k, int(present.size), *map(float, quantiles)))
    table = pd.DataFrame.from_records(records, columns=columns)
    return table.sort_values(["feature_mode", "measure", "k"], kind="stable").reset_index(drop=True)


def selected_k_counts(frame: pd.DataFrame) -> pd.DataFrame:
    """Per (feature_mode, k): how many ok rows selected that k, for every k of the grid (zeros
    included, so bars line up) and any other k the rows name."""
    columns = ["feature_mode", "k", "users"]
    if "k_selected" not in frame.columns:
        return pd.DataFrame(columns=columns)
    rows = ok_rows(frame)
    selected = _numbers(rows["k_selected"])
    per_mode = {}
    for mode, positions in mode_groups(rows).items():
        ks = selected[positions]
        ks = ks[~np.isnan(ks)].astype("int64")
        if ks.size:
            per_mode[mode] = pd.Series(ks).value_counts()
    if not per_mode:
        return pd.DataFrame(columns=columns)
    every_k = sorted(set(grid_ks(frame)).union(*(set(c.index) for c in per_mode.values())))
    records = [
        (mode, int(k), int(counts.get(k, 0))) for mode, counts in per_mode.items() for k in every_k
    ]
    return pd.DataFrame.from_records(records, columns=columns)


def status_counts(frame: pd.DataFrame) -> dict[str, int]:
    if "status" not in frame.columns:
        return {}
    counts = frame["status"].value_counts()
    counts.index = counts.index.map(str)
    ordered = [s for s in STATUS_SEVERITY if s in counts.index] + sorted(set(counts.index) - set(STATUS_SEVERITY))
    return {status: int(counts[status]) for status in ordered}


# --- drawing -------------------------------------------------------------------------------

FIGURE_INCHES = (14, 10)
DPI = 110
TITLE_SIZE = 13
LABEL_SIZE = 11
TICK_SIZE = 10
LEGEND_SIZE = 9
NOTE_SIZE = 9
MODE_COLOURS = ("#1b9e77", "#d95f02", "#7570b3", "#e7298a", "#66a61e", "#e6ab02", "#a6761d", "#666666")
STATUS_COLOURS = {"ok": "#4c72b0", "skipped": "#b0b0b0", "failed": "#d62728"}


def write_summary_png(frame: pd.DataFrame, spans: Iterable[Sequence[Any]], path: Path, title: str | None = None) -> None:
    """Draw the three panels into `path` (PNG), replacing it atomically."""
    # Imported here: merging must not pay for (or depend on) matplotlib until it draws.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from shardrun.storage.store import write_bytes_atomic

    figure = Figure(figsize=FIGURE_INCHES, dpi=DPI, layout="constrained")
    FigureCanvasAgg(figure)  # explicit Agg canvas: no GUI backend, no pyplot
    grid = figure.add_gridspec(2, 5, height_ratios=[1, 1.05])
    ais_axes = figure.add_subplot(grid[0, :3])
    k_axes = figure.add_subplot(grid[0, 3:])
    timeline_axes = figure.add_subplot(grid[1, :])

    modes = list(mode_groups(frame))
    colours = {mode: MODE_COLOURS[i % len(MODE_COLOURS)] for i, mode in enumerate(modes)}
    draw_ais_panel(ais_axes, ais_quantiles(frame), colours, grid_ks(frame))
    draw_selected_k_panel(k_axes, selected_k_counts(frame), colours, has_column="k_selected" in frame.columns)
    timeline = timeline_table(spans)
    draw_timeline_panel(timeline_axes, timeline)

    counts = status_counts(frame)
    users = frame["user_id"].nunique() if "user_id" in frame.columns else None
    parts = [_plural(len(frame), "row")] + ([_plural(users, "user")] if users is not None else [])
    shards = timeline["shard"].nunique()
    parts += [_plural(shards, "shard")] if shards else []
    if counts:
        parts.append("rows " + " / ".join(f"{status} {n:,}" for status, n in counts.items()))
    heading = "Merged results" + (f" of {title}" if title else "") + ": " + ", ".join(parts)
    figure.suptitle(heading, fontsize=TITLE_SIZE + 1, fontweight="bold")

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI)
    write_bytes_atomic(Path(path), buffer.getvalue())


def _thousands():
    """Tick labels with thousands separators for big numbers (100,000 s), plain for small (0.5 s)."""
    from matplotlib.ticker import FuncFormatter

    return FuncFormatter(lambda x, _: f"{x:,.0f}" if abs(x) >= 1000 else f"{x:.4g}")


def _plural(n: int, word: str) -> str:
    return f"{n:,} {word}" if n == 1 else f"{n:,} {word}s"


def _empty_panel(axes, message: str, keep_x_ticks: bool = False) -> None:
    """A panel without data keeps its title and labels, says why it is empty, and drops the
    meaningless 0..1 ticks."""
    axes.text(0.5, 0.5, message, transform=axes.transAxes, ha="center", va="center", fontsize=LABEL_SIZE, color="#555555")
    axes.set_yticks([])
    if not keep_x_ticks:
        axes.set_xticks([])


def _style(axes, title: str, xlabel: str, ylabel: str) -> None:
    axes.set_title(title, fontsize=TITLE_SIZE, loc="left")
    axes.set_xlabel(xlabel, fontsize=LABEL_SIZE)
    axes.set_ylabel(ylabel, fontsize=LABEL_SIZE)
    axes.tick_params(labelsize=TICK_SIZE)
    axes.grid(True, color="#e5e5e5", linewidth=0.8)
    axes.set_axisbelow(True)


def draw_ais_panel(axes, quantiles: pd.DataFrame, colours: Mapping[str, str], ks: Sequence[int]) -> None:
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    _style(axes, "AIS against history length k (users with status ok)", "history length k", "AIS (bits)")
    if ks:
        axes.set_xticks(list(ks))
        axes.set_xlim(min(ks) - 0.5, max(ks) + 0.5)
    if quantiles.empty:
        _empty_panel(axes, "no AIS values: no users with status ok" if ks else "no ais_k<k>_bits columns",
                     keep_x_ticks=bool(ks))
        return
    mode_handles = []
    for mode in sorted(set(quantiles["feature_mode"])):
        colour = colours.get(mode, "black")
        ais = quantiles[(quantiles["feature_mode"] == mode) & (quantiles["measure"] == "ais")].sort_values("k")
        corrected = quantiles[(quantiles["feature_mode"] == mode) & (quantiles["measure"] == "bias_corrected")]
        corrected = corrected.sort_values("k")
        if not ais.empty:
            x = ais["k"].to_numpy(dtype=float)
            # one k: a band needs width, so draw it as a short block around the k
            band_x = np.array([x[0] - 0.18, x[0] + 0.18]) if len(x) == 1 else x
            repeat = 2 if len(x) == 1 else 1
            for low, high, alpha in (("q10", "q90", 0.13), ("q25", "q75", 0.32)):
                axes.fill_between(
                    band_x,
                    np.repeat(ais[low].to_numpy(float), repeat),
                    np.repeat(ais[high].to_numpy(float), repeat),
                    color=colour,
                    alpha=alpha,
                    linewidth=0,
                )
            axes.plot(x, ais["median"], "-o", color=colour, linewidth=2.2, markersize=6)
        if not corrected.empty:
            axes.plot(corrected["k"], corrected["median"], "--s", color=colour, linewidth=1.6, markersize=5)
        n = int(ais["n"].max()) if not ais.empty else int(corrected["n"].max())
        mode_handles.append(Line2D([], [], color=colour, marker="o", linewidth=2.2, label=f"{mode} (n = {n:,})"))
    style_handles = [
        Line2D([], [], color="#444444", marker="o", linewidth=2.2, label="median AIS"),
        Line2D([], [], color="#444444", marker="s", linestyle="--", linewidth=1.6,
               label="median bias-corrected AIS\n(AIS − permutation null mean)"),
        Patch(facecolor="#444444", alpha=0.32, label="25–75% of users (AIS)"),
        Patch(facecolor="#444444", alpha=0.13, label="10–90% of users (AIS)"),
    ]
    legend = axes.legend(handles=mode_handles, title="feature mode", fontsize=LEGEND_SIZE,
                         title_fontsize=LEGEND_SIZE, loc="upper left")
    axes.add_artist(legend)
    axes.legend(handles=style_handles, fontsize=LEGEND_SIZE, loc="upper right", framealpha=0.9)
    low = min(0.0, float(quantiles["q10"].min()))
    high = float(quantiles["q90"].max())
    # headroom for the two legends above the highest band
    axes.set_ylim(low - 0.02 * (high - low or 1), high + 0.45 * (high - low or 1))


def draw_selected_k_panel(axes, counts: pd.DataFrame, colours: Mapping[str, str], has_column: bool = True) -> None:
    _style(axes, "Selected k (largest bias-corrected AIS)", "selected history length k", "users (status ok)")
    axes.grid(False, axis="x")
    if counts.empty:
        _empty_panel(axes, "no selected k: no users with status ok" if has_column else "no k_selected column")
        return
    modes = sorted(set(counts["feature_mode"]))
    ks = sorted(set(counts["k"]))
    width = 0.8 / len(modes)
    label_bars = len(modes) * len(ks) <= 24  # count labels only while they fit above their bars
    for i, mode in enumerate(modes):
        mine = counts[counts["feature_mode"] == mode].set_index("k").reindex(ks, fill_value=0)
        x = np.array(ks, dtype=float) + (i - (len(modes) - 1) / 2) * width
        bars = axes.bar(x, mine["users"], width=width * 0.95, color=colours.get(mode, "black"),
                        label=f"{mode} (n = {int(mine['users'].sum()):,})")
        if label_bars:
            axes.bar_label(bars, labels=[f"{n:,}" for n in mine["users"]], fontsize=NOTE_SIZE, padding=2)
    axes.set_xticks(ks)
    axes.set_xlim(min(ks) - 0.6, max(ks) + 0.6)
    axes.set_ylim(0, max(1, int(counts["users"].max())) * 1.3)  # headroom: count labels, then the legend
    axes.yaxis.get_major_locator().set_params(integer=True)
    axes.yaxis.set_major_formatter(_thousands())
    axes.legend(title="feature mode", fontsize=LEGEND_SIZE, title_fontsize=LEGEND_SIZE, loc="upper center",
                ncol=len(modes))


def draw_timeline_panel(axes, timeline: pd.DataFrame) -> None:
    from matplotlib.patches import Patch

    run_start = timeline.attrs.get("run_start")
    when = ""
    if run_start is not None:
        when = f" (run start {datetime.fromtimestamp(run_start, timezone.utc):%Y-%m-%d %H:%M:%S} UTC)"
    _style(axes, "Per-shard timeline: each user from its start to its commit", f"seconds since run start{when}",
           "shard")
    axes.xaxis.set_major_formatter(_thousands())
    axes.grid(False, axis="y")
    if timeline.empty:
        _empty_panel(axes, "no committed users with a commit time")
        return
    shards = sorted(set(timeline["shard"]), key=shard_sort_key)
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
    handles = [Patch(facecolor=STATUS_COLOURS[s], label=f"user {s}") for s in ("ok", "skipped", "failed")
               if s in set(timeline["status"])]
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
    axes.legend(handles=handles, fontsize=LEGEND_SIZE, loc="upper center", bbox_to_anchor=(0.5, -0.1),
                ncol=len(handles), framealpha=0.9, title=title, title_fontsize=LEGEND_SIZE)
