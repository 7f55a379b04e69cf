"""The default analysis's panels of summary.png: AIS against history length k, the share of users whose
AIS is significant at each k, and the selected k; and the picture's title in plain words.

Found by the core through the task's optional `summary_panels` hook (shardrun.task.DrawsSummary);
the core draws its per-shard timeline below them. Two halves, as in the core's picture: the data
preparation is pure (a frame of merged rows in, small tables out) and is tested without drawing;
the drawing functions take a matplotlib Axes and import matplotlib only when called.

Whatever the size of the result set, the drawing stays small: a handful of quantiles and counts
per (mode, k). The look (font sizes, grid) matches the core's panels. The first panel also says,
as the figure's title (Figure.suptitle), what the picture is about; the core puts its own part
(users, shards) before it.
"""

from __future__ import annotations

import functools
import re
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from shardrun.panel_style import (
    LEGEND_SIZE,
    NOTE_SIZE,
    empty_panel,
    style_axes,
    thousands,
)
from shardrun.states import UserStatus
from shardrun.task import SummaryPanel

QUANTILES = {"q10": 0.10, "q25": 0.25, "median": 0.50, "q75": 0.75, "q90": 0.90}
AIS_PANEL_TITLE = "AIS against history length k (users with status ok)"
SELECTED_K_PANEL_TITLE = "Selected k (best bias-corrected AIS)"
SIGNIFICANCE_PANEL_TITLE = "Users whose AIS is significant"
ALPHA = 0.05  # the significance level of the share shown
# What the picture shows, for a reader who does not know the measure's name.
PLAIN_TITLE = "how much of each user's next value its own past predicts (active information storage, AIS)"

_AIS_COLUMN = re.compile(r"^ais_k(\d+)_bits$")
_P_COLUMN = "ais_k{k}_p"

MODE_COLOURS = ("#1b9e77", "#d95f02", "#7570b3", "#e7298a", "#66a61e", "#e6ab02", "#a6761d", "#666666")


def summary_panels(frame: pd.DataFrame, settings: Any | None = None) -> list[SummaryPanel]:
    """Task.summary_panels: AIS against k (the widest), the share of users whose AIS is significant
    per k, and the selected k.

    Everything comes from the result columns, so `settings` is not needed (None without run.json).
    """
    colours = {mode: MODE_COLOURS[i % len(MODE_COLOURS)] for i, mode in enumerate(mode_groups(frame))}
    ks = grid_ks(frame)
    ais = functools.partial(draw_ais_panel, quantiles=ais_quantiles(frame), colours=colours, ks=ks)
    significant = functools.partial(draw_significance_panel, shares=significant_shares(frame), colours=colours,
                                    ks=ks)
    selected = functools.partial(draw_selected_k_panel, counts=selected_k_counts(frame), colours=colours,
                                 has_column="k_selected" in frame.columns)
    return [SummaryPanel(draw=ais, width=2.6), SummaryPanel(draw=significant, width=1.6),
            SummaryPanel(draw=selected, width=1.8)]


# --- the tables ----------------------------------------------------------------------------


def grid_ks(frame: pd.DataFrame) -> list[int]:
    """The k grid as the result columns show it (`ais_k<k>_bits`), ascending."""
    return sorted(int(m.group(1)) for c in frame.columns if (m := _AIS_COLUMN.match(str(c))))


def ok_rows(frame: pd.DataFrame) -> pd.DataFrame:
    """Rows of users with status ok; every row when the result set has no status column."""
    if "status" not in frame.columns:
        return frame
    return frame[(frame["status"] == UserStatus.OK.value).to_numpy(dtype=bool, na_value=False)]


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


def significant_shares(frame: pd.DataFrame, alpha: float = ALPHA) -> pd.DataFrame:
    """Per (feature_mode, k) over ok rows with a p-value at k: n, significant (p < alpha) and share (0..1).

    Rows whose `ais_k<k>_p` is missing (the k left out by the guard) do not count at that k; a k
    without a p-value column, or a (mode, k) without any p-value, has no row.
    """
    columns = ["feature_mode", "k", "n", "significant", "share"]
    rows = ok_rows(frame)
    groups = mode_groups(rows)
    records = []
    for k in grid_ks(frame):
        column = _P_COLUMN.format(k=k)
        if column not in rows.columns:
            continue
        p_values = _numbers(rows[column])
        for mode, positions in groups.items():
            present = p_values[positions]
            present = present[~np.isnan(present)]
            if present.size:
                significant = int((present < alpha).sum())
                records.append((mode, k, int(present.size), significant, significant / present.size))
    table = pd.DataFrame.from_records(records, columns=columns)
    return table.sort_values(["feature_mode", "k"], kind="stable").reset_index(drop=True)


def fitted_limits(low: float, high: float, pad: float = 0.06) -> tuple[float, float]:
    """Axis limits around the data [low, high] with a margin; a flat range gets a unit-sized one."""
    span = high - low
    margin = pad * span if span > 0 else max(abs(high) * 0.1, 0.05)
    return low - margin, high + margin


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


# --- drawing -------------------------------------------------------------------------------


def k_axis(axes, ks: Sequence[int]) -> None:
    """An x axis with a tick at every k of the grid."""
    if ks:
        axes.set_xticks(list(ks))
        axes.set_xlim(min(ks) - 0.5, max(ks) + 0.5)


def draw_ais_panel(axes, quantiles: pd.DataFrame, colours: Mapping[str, str], ks: Sequence[int]) -> None:
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    axes.figure.suptitle(PLAIN_TITLE)  # the core adds its part (users, shards) in front
    style_axes(axes, AIS_PANEL_TITLE, "history length k", "AIS (bits)")
    k_axis(axes, ks)
    if quantiles.empty:
        empty_panel(axes, "no AIS values: no users with status ok" if ks else "no ais_k<k>_bits columns",
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
               label="median AIS − permutation\nnull mean (bias-corrected)"),
        Patch(facecolor="#444444", alpha=0.32, label="25–75% of users (AIS)"),
        Patch(facecolor="#444444", alpha=0.13, label="10–90% of users (AIS)"),
    ]
    # The legend below the axes, so the y axis fits the bands and medians instead of making room.
    axes.legend(handles=[*mode_handles, *style_handles], fontsize=LEGEND_SIZE, loc="upper center",
                bbox_to_anchor=(0.5, -0.16), ncol=2, framealpha=0.9)
    drawn = quantiles[["q10", "q90", "median"]].to_numpy(dtype=float)
    axes.set_ylim(*fitted_limits(float(np.nanmin(drawn)), float(np.nanmax(drawn))))


def draw_significance_panel(axes, shares: pd.DataFrame, colours: Mapping[str, str], ks: Sequence[int]) -> None:
    """Per k and mode, the share of ok users whose AIS p-value is below ALPHA (its permutation test)."""
    from matplotlib.ticker import PercentFormatter

    style_axes(axes, SIGNIFICANCE_PANEL_TITLE, "history length k", f"users with p < {ALPHA:g} (%)")
    k_axis(axes, ks)
    if shares.empty:
        empty_panel(axes, "no p-values: no users with status ok" if ks else "no ais_k<k>_p columns",
                    keep_x_ticks=bool(ks))
        return
    label_points = len(shares) <= 24
    for mode in sorted(set(shares["feature_mode"])):
        mine = shares[shares["feature_mode"] == mode].sort_values("k")
        percent = mine["share"].to_numpy(dtype=float) * 100
        colour = colours.get(mode, "black")
        axes.plot(mine["k"], percent, "-o", color=colour, linewidth=2, markersize=6, label=mode)
        for k, value in zip(mine["k"], percent) if label_points else ():
            axes.annotate(f"{value:.0f}%", (k, value), textcoords="offset points", xytext=(0, 6), ha="center",
                          fontsize=NOTE_SIZE, color=colour)
    axes.yaxis.set_major_formatter(PercentFormatter(decimals=0))
    axes.set_ylim(-3, 112)  # a share: the whole 0-100% scale, with room for the labels above 100%
    axes.legend(title="feature mode", fontsize=LEGEND_SIZE, title_fontsize=LEGEND_SIZE, loc="upper center",
                bbox_to_anchor=(0.5, -0.16))


def draw_selected_k_panel(axes, counts: pd.DataFrame, colours: Mapping[str, str], has_column: bool = True) -> None:
    style_axes(axes, SELECTED_K_PANEL_TITLE, "selected history length k", "users (status ok)")
    axes.grid(False, axis="x")
    if counts.empty:
        empty_panel(axes, "no selected k: no users with status ok" if has_column else "no k_selected column")
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
    axes.set_ylim(0, max(1, int(counts["users"].max())) * 1.12)  # headroom for the count labels
    axes.yaxis.get_major_locator().set_params(integer=True)
    axes.yaxis.set_major_formatter(thousands())
    axes.legend(title="feature mode", fontsize=LEGEND_SIZE, title_fontsize=LEGEND_SIZE, loc="upper center",
                bbox_to_anchor=(0.5, -0.16))
