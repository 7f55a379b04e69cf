"""The look every panel of the merge's pictures shares, and what an empty panel says about why.

matplotlib is imported inside the functions, so importing this module costs nothing.
"""

from __future__ import annotations

import re
import textwrap
from collections.abc import Callable

import pandas as pd

TITLE_SIZE = 13
LABEL_SIZE = 11
TICK_SIZE = 10
LEGEND_SIZE = 9
NOTE_SIZE = 9
EMPTY_PANEL_WIDTH = 44  # characters per line of an empty panel's message


def thousands():
    """Tick labels with thousands separators for big numbers (100,000 s), plain for small (0.5 s)."""
    from matplotlib.ticker import FuncFormatter

    return FuncFormatter(lambda x, _: f"{x:,.0f}" if abs(x) >= 1000 else f"{x:.4g}")


def empty_panel(axes, message: str, keep_x_ticks: bool = False) -> None:
    """A panel without data keeps its title and labels, says why it is empty, drops its 0..1 ticks."""
    # wrapped: a reason can be longer than a narrow panel is wide
    wrapped = "\n".join(textwrap.fill(line, EMPTY_PANEL_WIDTH) for line in message.split("\n"))
    axes.text(0.5, 0.5, wrapped, transform=axes.transAxes, ha="center", va="center", fontsize=LABEL_SIZE,
              color="#555555")
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


# --- why a panel has nothing to draw ------------------------------------------------------------

_NUMBER = re.compile(r"\d+(?:\.\d+)?")


def reason_kind(reason: object) -> str:
    """A reason's first clause with numbers as N, so the same cause counts together."""
    text = "" if reason is None or reason is pd.NA or (isinstance(reason, float) and reason != reason) else str(reason)
    text = re.split(r";|\s\(|\n", text.strip(), maxsplit=1)[0].strip()
    return _NUMBER.sub("N", text)[:90] or "no reason given"


def common_reasons(reasons: pd.Series, plain: Callable[[str], str | None] | None = None) -> list[tuple[str, int]]:
    """Rows per kind of reason, most common first; each distinct text read once (a frame may hold millions)."""
    codes, distinct = pd.factorize(reasons.astype(object), use_na_sentinel=False)
    counts = pd.Series(codes).value_counts()
    kinds: dict[str, int] = {}
    for code, n in zip(counts.index, counts, strict=True):
        reason = distinct[code]
        kind = (plain(str(reason)) if plain is not None and isinstance(reason, str) else None) or reason_kind(reason)
        kinds[kind] = kinds.get(kind, 0) + int(n)
    return sorted(kinds.items(), key=lambda item: (-item[1], item[0]))


def why_nothing_is_drawn(statuses: pd.Series, reasons: pd.Series | None, what: str = "user",
                         plain: Callable[[str], str | None] | None = None) -> str:
    """Why these rows (none ok) give a panel nothing to draw, e.g. "every user skipped: too few ... (60 of 60)"."""
    statuses = statuses.astype(object)
    if not len(statuses):
        return f"no {what}s in this result set"
    parts = []
    for status in ("skipped", "failed"):
        mine = (statuses == status).to_numpy(dtype=bool)
        if mine.any():
            top = common_reasons(reasons[mine], plain) if reasons is not None else []
            because = "" if not top else top[0][0] if len(top) == 1 else f"most often {top[0][0]} ({top[0][1]:,})"
            parts.append((status, int(mine.sum()), because))
    if len(parts) == 1 and parts[0][1] == len(statuses):
        status, n, because = parts[0]
        return f"every {what} {status}" + (f": {because}" if because else "") + f" ({n:,} of {n:,})"
    other = len(statuses) - sum(n for _, n, _ in parts)
    words = [f"{n:,} {status}" + (f": {because}" if because else "") for status, n, because in parts]
    if other:
        words.append(f"{other:,} without a known status")
    return f"no {what} with status ok:\n" + "\n".join(words)
