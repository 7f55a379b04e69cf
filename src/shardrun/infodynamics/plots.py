"""The default analysis's summary.png, the science of a result set, in two rows of panels:

- top, one panel per feature mode: AIS against history length k, the users' raw AIS and their
  bias-corrected AIS (AIS minus the mean of its permutation null) drawn apart, under the ceiling
  log2(base) that raw AIS cannot pass (a raw value near it is mostly bias);
- below: the share of users whose AIS is significant after FDR (Benjamini-Hochberg q-values across
  the users of a mode, `ais_k<k>_q` < 0.05) per k; te_hour per mode with its FDR share
  (`te_hour_q`); the selected k. A result set without q-values says so: never the uncorrected p.

Every panel says how many users it is drawn from (n), and a panel with nothing to draw says why
(every user skipped, and for which reason). Found by the core through the task's optional
`summary_panels` hook (shardrun.task.Task). Two halves: the data preparation is pure (a frame
of merged rows in, small tables out) and is tested without drawing; the drawing functions take a
matplotlib Axes and import matplotlib only when called. Whatever the size of the result set, the
drawing stays small: a handful of quantiles and counts per (mode, k). The first panel also says, as
the figure's title (Figure.suptitle), what the picture is about; the core puts its part (users) first.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from shardrun.infodynamics.fdr import ALPHA
from shardrun.panel_style import (
    LEGEND_SIZE,
    NOTE_SIZE,
    empty_panel,
    style_axes,
    thousands,
    why_nothing_is_drawn,
)
from shardrun.states import UserStatus
from shardrun.task import SummaryPanel

QUANTILES = {"q10": 0.10, "q25": 0.25, "median": 0.50, "q75": 0.75, "q90": 0.90}
# Panel titles: each ends with how many users it is drawn from (", n = ...").
AIS_PANEL_TITLE = "{mode}: AIS against history length k"
FDR_PANEL_TITLE = "Users with significant AIS after FDR"
TE_PANEL_TITLE = "te_hour: what the hour adds to the past"
SELECTED_K_PANEL_TITLE = "History length k chosen per user"
NO_Q_VALUES = "no q-values in this result set"
# What the picture shows, for a reader who does not know the measure's name.
PLAIN_TITLE = "how much of each user's next value its own past predicts (active information storage, AIS)"

_AIS_COLUMN = re.compile(r"^ais_k(\d+)_bits$")
_Q_COLUMN = "ais_k{k}_q"
TE_COLUMN, TE_Q_COLUMN = "te_hour_bits", "te_hour_q"

MODE_COLOURS = ("#1b9e77", "#d95f02", "#7570b3", "#e7298a", "#66a61e", "#e6ab02", "#a6761d", "#666666")
CEILING_COLOUR = "#c0392b"
CORRECTED_COLOUR = "#333333"


def summary_panels(frame: pd.DataFrame, settings: Any | None = None) -> list[SummaryPanel]:
    """Task.summary_panels: the top row AIS against k, one panel per feature mode (raw and bias-corrected,
    under the log2(base) ceiling); below, the share of users significant after FDR per k, te_hour per
    mode with its FDR share, and the selected k.

    Everything comes from the result columns, so `settings` is not needed (None without run.json).
    """
    groups = mode_groups(ok_rows(frame))
    modes = sorted(set(mode_groups(frame)) | set(groups))
    colours = {mode: MODE_COLOURS[i % len(MODE_COLOURS)] for i, mode in enumerate(modes)}
    ks = grid_ks(frame)
    quantiles = ais_quantiles(frame)
    limits = ceilings(frame)
    panels = [
        SummaryPanel(draw=functools.partial(
            draw_ais_panel, mode=mode, quantiles=quantiles[quantiles["feature_mode"] == mode].reset_index(drop=True),
            ceiling=limits.get(mode), colour=colours[mode], ks=ks, n=len(groups.get(mode, ())),
            why=None if len(groups.get(mode, ())) else why_no_users(frame, mode)))
        for mode in modes
    ] or [SummaryPanel(draw=functools.partial(draw_ais_panel, mode="all rows", quantiles=quantiles, ceiling=None,
                                              colour=MODE_COLOURS[0], ks=ks, n=0, why=why_no_users(frame)))]
    why = None if groups else why_no_users(frame)
    panels += [
        SummaryPanel(draw=functools.partial(draw_fdr_panel, shares=fdr_shares(frame), colours=colours, ks=ks,
                                            has_q=has_q_values(frame), why=why), width=1.3, row=1),
        SummaryPanel(draw=functools.partial(draw_te_panel, table=te_hour_table(frame), colours=colours,
                                            has_column=TE_COLUMN in frame.columns, why=why), width=1.0, row=1),
        SummaryPanel(draw=functools.partial(draw_selected_k_panel, counts=selected_k_counts(frame), colours=colours,
                                            has_column="k_selected" in frame.columns, why=why), width=1.2, row=1),
    ]
    return panels


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


def q_columns(frame: pd.DataFrame) -> dict[int, str]:
    """The q-value column of each k of the grid the frame has (`ais_k<k>_q`)."""
    return {k: _Q_COLUMN.format(k=k) for k in grid_ks(frame) if _Q_COLUMN.format(k=k) in frame.columns}


def has_q_values(frame: pd.DataFrame) -> bool:
    """Whether the result set has AIS q-values at all (an older one has p-values only)."""
    return bool(q_columns(frame))


def fdr_shares(frame: pd.DataFrame, level: float = ALPHA) -> pd.DataFrame:
    """Per (feature_mode, k) over ok rows with a q-value at k: n, significant (q < level) and share (0..1).

    q is the Benjamini-Hochberg q-value across the users of a mode at that k (`ais_k<k>_q`). Rows whose
    q is missing (the k left out by the guard) do not count at that k; a k without a q column, or a
    (mode, k) without any q-value, has no row. Never the uncorrected p: without q-values, no rows.
    """
    columns = ["feature_mode", "k", "n", "significant", "share"]
    rows = ok_rows(frame)
    groups = mode_groups(rows)
    records = []
    for k, column in q_columns(frame).items():
        q_values = _numbers(rows[column])
        for mode, positions in groups.items():
            present = q_values[positions]
            present = present[~np.isnan(present)]
            if present.size:
                significant = int((present < level).sum())
                records.append((mode, k, int(present.size), significant, significant / present.size))
    table = pd.DataFrame.from_records(records, columns=columns)
    return table.sort_values(["feature_mode", "k"], kind="stable").reset_index(drop=True)


def ceilings(frame: pd.DataFrame) -> dict[str, tuple[float, float]]:
    """Per feature mode, the ceiling of AIS: log2(base) bits (AIS = MI(next; past) <= H(next) <= log2(base)),
    as (lowest, highest) over the mode's rows with a base (equal unless users' bases differ)."""
    if "base" not in frame.columns:
        return {}
    bases = _numbers(frame["base"])
    limits = {}
    for mode, positions in mode_groups(frame).items():
        present = bases[positions]
        present = present[np.isfinite(present) & (present > 0)]
        if present.size:
            limits[mode] = (float(np.log2(present.min())), float(np.log2(present.max())))
    return limits


def te_hour_table(frame: pd.DataFrame, level: float = ALPHA) -> pd.DataFrame:
    """Per feature mode over ok rows with a te_hour value: n and the quantiles of `te_hour_bits`; with
    `te_hour_q`, n_q (rows with a q-value), significant (q < level) and share, else NaN there."""
    columns = ["feature_mode", "n", *QUANTILES, "n_q", "significant", "share"]
    if TE_COLUMN not in frame.columns:
        return pd.DataFrame(columns=columns)
    rows = ok_rows(frame)
    values = _numbers(rows[TE_COLUMN])
    q_values = _numbers(rows[TE_Q_COLUMN]) if TE_Q_COLUMN in rows.columns else None
    records = []
    for mode, positions in mode_groups(rows).items():
        present = values[positions]
        present = present[~np.isnan(present)]
        if not present.size:
            continue
        quantiles = np.quantile(present, list(QUANTILES.values()))
        n_q, significant, share = 0, np.nan, np.nan
        if q_values is not None:
            q = q_values[positions]
            q = q[~np.isnan(q)]
            n_q = int(q.size)
            if n_q:
                significant = int((q < level).sum())
                share = significant / n_q
        records.append((mode, int(present.size), *map(float, quantiles), n_q, significant, share))
    return pd.DataFrame.from_records(records, columns=columns)


def plain_reason(reason: str) -> str | None:
    """This task's skip and failure reasons in plain words (panel_style.common_reasons); None for others."""
    if reason.startswith("only ") and "observations" in reason:
        return "too few observations"
    if reason.startswith("undersampling guard"):
        return "too few observations for any k (undersampling guard)"
    if "distinct category labels" in reason:
        return "more category labels than data.levels"
    if reason.startswith("Java heap exhausted"):
        return "Java heap exhausted"
    return None


def why_no_users(frame: pd.DataFrame, mode: str | None = None) -> str:
    """Why no user (of `mode`, else of any mode) has status ok, counted by reason."""
    if mode is not None and "feature_mode" in frame.columns:
        frame = frame[(frame["feature_mode"] == mode).to_numpy(dtype=bool, na_value=False)]
    if "status" not in frame.columns:
        return "no status column"
    if mode is None and "user_id" in frame.columns:
        # one row per user, its worst: a user counts once however many modes it has
        worst_first = frame["status"].map({UserStatus.FAILED.value: 0, UserStatus.SKIPPED.value: 1}).fillna(2)
        frame = frame.iloc[np.argsort(worst_first.to_numpy(), kind="stable")].drop_duplicates("user_id")
    reasons = frame["reason"] if "reason" in frame.columns else None
    return why_nothing_is_drawn(frame["status"], reasons, what="user", plain=plain_reason)


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


def compact(n: int) -> str:
    """A count short enough to sit above a narrow bar: 950, 9,500, 95k, 1.2M."""
    return f"{n:,}" if n < 10_000 else f"{n / 1000:.0f}k" if n < 1_000_000 else f"{n / 1e6:.1f}M"


def n_words(ns: Sequence[int]) -> str:
    """"n = 60", or the range "n = 58–60" when the counts differ."""
    low, high = min(ns), max(ns)
    return f"n = {high:,}" if low == high else f"n = {low:,}–{high:,}"


def _band(axes, table: pd.DataFrame, colour: str, alphas: tuple[float, float], hatched: bool = False) -> None:
    """The 10–90% and 25–75% bands of a quantile table over k (a single k: a short block around it);
    `hatched`: drawn as hatching without fill, so that they stay apart from filled bands they overlap."""
    x = table["k"].to_numpy(dtype=float)
    band_x = np.array([x[0] - 0.18, x[0] + 0.18]) if len(x) == 1 else x
    repeat = 2 if len(x) == 1 else 1
    for (low, high), alpha, hatch in zip((("q10", "q90"), ("q25", "q75")), alphas, ("//", "////")):
        style = (dict(facecolor="none", edgecolor=colour, hatch=hatch, alpha=alpha, linewidth=0) if hatched
                 else dict(color=colour, alpha=alpha, linewidth=0))
        axes.fill_between(band_x, np.repeat(table[low].to_numpy(float), repeat),
                          np.repeat(table[high].to_numpy(float), repeat), **style)


def draw_ais_panel(axes, mode: str, quantiles: pd.DataFrame, ceiling: tuple[float, float] | None, colour: str,
                   ks: Sequence[int], n: int, why: str | None = None) -> None:
    """One feature mode: the users' raw AIS (median and bands, the mode's colour) and bias-corrected AIS
    (AIS minus its permutation null's mean: dark, dashed) against k, under the ceiling log2(base)."""
    from matplotlib.artist import Artist
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    axes.figure.suptitle(PLAIN_TITLE)  # the core adds its part (users) in front
    style_axes(axes, f"{AIS_PANEL_TITLE.format(mode=mode)}, n = {n:,} users", "history length k", "bits")
    k_axis(axes, ks)
    if quantiles.empty:
        empty_panel(axes, why or ("no AIS values" if ks else "no ais_k<k>_bits columns"), keep_x_ticks=bool(ks))
        return
    raw = quantiles[quantiles["measure"] == "ais"].sort_values("k")
    corrected = quantiles[quantiles["measure"] == "bias_corrected"].sort_values("k")
    handles: list[Artist] = []
    if not raw.empty:
        _band(axes, raw, colour, (0.13, 0.30))
        axes.plot(raw["k"], raw["median"], "-o", color=colour, linewidth=2.2, markersize=6)
        handles.append(Line2D([], [], color=colour, marker="o", linewidth=2.2, label="AIS (raw): median of users"))
    if not corrected.empty:
        _band(axes, corrected, CORRECTED_COLOUR, (0.25, 0.45), hatched=True)
        axes.plot(corrected["k"], corrected["median"], "--s", color=CORRECTED_COLOUR, linewidth=1.8, markersize=5)
        handles.append(Line2D([], [], color=CORRECTED_COLOUR, marker="s", linestyle="--", linewidth=1.8,
                              label="bias-corrected: AIS − permutation null mean"))
    handles.append(Patch(facecolor=colour, alpha=0.35, label="25–75% and 10–90% of users (raw)"))
    if not corrected.empty:
        handles.append(Patch(facecolor="none", edgecolor=CORRECTED_COLOUR, hatch="////", alpha=0.6, linewidth=0,
                             label="25–75% and 10–90% of users (bias-corrected)"))
    top = float(np.nanmax(quantiles[["q90", "median"]].to_numpy(dtype=float)))
    bottom = min(0.0, float(np.nanmin(quantiles[["q10", "median"]].to_numpy(dtype=float))))
    if ceiling is not None:
        low, high = ceiling
        if high - low > 1e-9:
            axes.axhspan(low, high, color=CEILING_COLOUR, alpha=0.15, linewidth=0)
            label = f"ceiling log2(base): {low:.2f}–{high:.2f} bits (bases differ)"
        else:
            label = f"ceiling log2(base) = log2({2 ** high:.0f}) = {high:.2f} bits"
        axes.axhline(high, color=CEILING_COLOUR, linestyle=":", linewidth=1.8)
        handles.append(Line2D([], [], color=CEILING_COLOUR, linestyle=":", linewidth=1.8, label=label))
        top = max(top, high)
    axes.axhline(0.0, color="#999999", linewidth=0.8)
    ns = quantiles["n"].tolist()
    if min(ns) != max(ns):
        handles.append(Patch(facecolor="none", edgecolor="none", label=f"users with a value at a k: {n_words(ns)}"))
    axes.set_ylim(*fitted_limits(bottom, top))
    # below the axes: inside, the legend would cover the bands or the ceiling
    axes.legend(handles=handles, fontsize=LEGEND_SIZE, loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=2,
                framealpha=0.9)


def draw_fdr_panel(axes, shares: pd.DataFrame, colours: Mapping[str, str], ks: Sequence[int], has_q: bool,
                   why: str | None = None) -> None:
    """Per k and mode, the share of ok users whose AIS q-value (BH across the mode's users) is below ALPHA."""
    from matplotlib.ticker import PercentFormatter

    ns = shares["n"].tolist() if not shares.empty else []
    title = f"{FDR_PANEL_TITLE} (q < {ALPHA:g})" + (f"\n{n_words(ns)} per mode" if ns else "")
    style_axes(axes, title, "history length k (q: Benjamini-Hochberg within a mode)", f"users with q < {ALPHA:g}")
    k_axis(axes, ks)
    if shares.empty:
        message = NO_Q_VALUES if not has_q and not why else why or "no q-values: no users with status ok"
        empty_panel(axes, message, keep_x_ticks=bool(ks))
        return
    label_points = len(shares) <= 24
    for mode in sorted(set(shares["feature_mode"])):
        mine = shares[shares["feature_mode"] == mode].sort_values("k")
        percent = mine["share"].to_numpy(dtype=float) * 100
        colour = colours.get(mode, "black")
        axes.plot(mine["k"], percent, "-o", color=colour, linewidth=2, markersize=6,
                  label=f"{mode} ({n_words(mine['n'].tolist())})")
        for k, value in zip(mine["k"], percent) if label_points else ():
            axes.annotate(f"{value:.0f}%", (k, value), textcoords="offset points", xytext=(0, 6), ha="center",
                          fontsize=NOTE_SIZE, color=colour)
    axes.yaxis.set_major_formatter(PercentFormatter(decimals=0))
    axes.set_ylim(-3, 112)  # a share: the whole 0-100% scale, with room for the labels above 100%
    axes.legend(title="feature mode", fontsize=LEGEND_SIZE, title_fontsize=LEGEND_SIZE, loc="lower right",
                framealpha=0.9)


def draw_te_panel(axes, table: pd.DataFrame, colours: Mapping[str, str], has_column: bool = True,
                  why: str | None = None) -> None:
    """Per mode, te_hour's spread over the users (median, 25–75% box, 10–90% whiskers), and above each
    the share significant after FDR (te_hour_q < ALPHA)."""
    title = TE_PANEL_TITLE + (f"\n{n_words(table['n'].tolist())} per mode" if not table.empty else "")
    style_axes(axes, title, "feature mode (te_hour at its selected k)", "te_hour (bits)")
    axes.grid(False, axis="x")
    if table.empty:
        empty_panel(axes, why or ("no te_hour values" if has_column else f"no {TE_COLUMN} column"))
        return
    modes = table.sort_values("feature_mode").reset_index(drop=True)
    top = float(modes["q90"].max())
    for i, (_, row) in enumerate(modes.iterrows()):
        colour = colours.get(row["feature_mode"], "black")
        axes.vlines(i, row["q10"], row["q90"], color=colour, linewidth=1.5)
        axes.bar(i, row["q75"] - row["q25"], bottom=row["q25"], width=0.5, color=colour, alpha=0.45,
                 edgecolor=colour)
        axes.hlines(row["median"], i - 0.25, i + 0.25, color=colour, linewidth=2.5)
        if np.isnan(row["share"]):
            note = NO_Q_VALUES
        else:
            note = f"q < {ALPHA:g}: {row['share'] * 100:.0f}%\n({int(row['significant']):,} of {int(row['n_q']):,})"
        axes.annotate(note, (i, row["q90"]), textcoords="offset points", xytext=(0, 6), ha="center", va="bottom",
                      fontsize=NOTE_SIZE, color=colour)
    axes.set_xticks(range(len(modes)))
    axes.set_xticklabels([f"{mode}\nn = {n:,}" for mode, n in zip(modes["feature_mode"], modes["n"])])
    axes.set_xlim(-0.6, len(modes) - 0.4)
    low = min(0.0, float(modes["q10"].min()))
    axes.set_ylim(low, top + (top - low) * 0.3 + 1e-3)  # room for the notes above the whiskers
    axes.text(0.99, 0.99, "median, box 25–75%, whiskers 10–90% of users", transform=axes.transAxes, ha="right",
              va="top", fontsize=NOTE_SIZE - 1, color="#555555")


def draw_selected_k_panel(axes, counts: pd.DataFrame, colours: Mapping[str, str], has_column: bool = True,
                          why: str | None = None) -> None:
    users = counts.groupby("feature_mode")["users"].sum().tolist() if not counts.empty else []
    style_axes(axes, SELECTED_K_PANEL_TITLE + (f"\n{n_words(users)} per mode" if users else ""),
               "history length k with the largest bias-corrected AIS", "users (status ok)")
    axes.grid(False, axis="x")
    if counts.empty:
        empty_panel(axes, why or ("no selected k" if has_column else "no k_selected column"))
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
            axes.bar_label(bars, labels=[compact(n) for n in mine["users"]], fontsize=NOTE_SIZE - 1, padding=2)
    axes.set_xticks(ks)
    axes.set_xlim(min(ks) - 0.6, max(ks) + 0.6)
    axes.set_ylim(0, max(1, int(counts["users"].max())) * 1.12)  # headroom for the count labels
    axes.yaxis.get_major_locator().set_params(integer=True)
    axes.yaxis.set_major_formatter(thousands())
    axes.legend(title="feature mode", fontsize=LEGEND_SIZE, title_fontsize=LEGEND_SIZE, loc="upper right",
                framealpha=0.9)
