"""The look every panel of summary.png shares, the core's and a task's alike: font sizes, axis
styling, the text of an empty panel, tick labels with thousands separators.

matplotlib is imported inside the functions, so importing this module costs nothing.
"""

from __future__ import annotations

TITLE_SIZE = 13
LABEL_SIZE = 11
TICK_SIZE = 10
LEGEND_SIZE = 9
NOTE_SIZE = 9


def thousands():
    """Tick labels with thousands separators for big numbers (100,000 s), plain for small (0.5 s)."""
    from matplotlib.ticker import FuncFormatter

    return FuncFormatter(lambda x, _: f"{x:,.0f}" if abs(x) >= 1000 else f"{x:.4g}")


def empty_panel(axes, message: str, keep_x_ticks: bool = False) -> None:
    """A panel without data keeps its title and labels, says why it is empty, and drops the
    meaningless 0..1 ticks."""
    axes.text(0.5, 0.5, message, transform=axes.transAxes, ha="center", va="center", fontsize=LABEL_SIZE, color="#555555")
    axes.set_yticks([])
    if not keep_x_ticks:
        axes.set_xticks([])


def style_axes(axes, title: str, xlabel: str, ylabel: str) -> None:
    axes.set_title(title, fontsize=TITLE_SIZE, loc="left")
    axes.set_xlabel(xlabel, fontsize=LABEL_SIZE)
    axes.set_ylabel(ylabel, fontsize=LABEL_SIZE)
    axes.tick_params(labelsize=TICK_SIZE)
    axes.grid(True, color="#e5e5e5", linewidth=0.8)
    axes.set_axisbelow(True)
