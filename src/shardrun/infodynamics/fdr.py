"""Benjamini-Hochberg q-values over the users of a merged set: the task's set-level columns and report
(the optional hooks Task.set_columns and set_report, called by the merge).

Every p-value column gets a q-value column beside it: ais_k<k>_p -> ais_k<k>_q, te_hour_p -> te_hour_q.
A family is one feature mode and one column: the ok rows of that mode with a p in that column, one per
user. So the q of ais_k2_q in composite mode corrects for the users tested at k = 2 in composite mode,
the question one panel of the picture answers ("which users have AIS at k = 2 beyond chance?"); the
modes are different series and every k a different test, each read on its own. A row without a p (a
skipped or failed user, a k left out by the undersampling guard) has no q and is not counted in m.

With the m p-values of a family sorted, p_(1) <= ... <= p_(m), q_(i) = min over j >= i of p_(j) m / j,
at most 1: the Benjamini & Hochberg (1995) step-up procedure as adjusted p-values. A user is
significant at a false discovery rate alpha when q < alpha (the picture and merge_report.json count
the same way; BH's procedure at level alpha also takes q = alpha, which a p of S surrogates can reach).
Tied p-values get the same q whatever their order, so the columns depend only on the set's p-values:
merging again, with any K, gives the same q-values.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from shardrun.infodynamics.analysis import p_columns, q_column
from shardrun.infodynamics.settings import Settings

# A user is significant when its q-value is below this false discovery rate: merge_report.json's counts
# and the picture's shares (plots.py).
ALPHA = 0.05


def bh_q_values(p_values: np.ndarray) -> np.ndarray:
    """The Benjamini-Hochberg q-value of each p of one family; NaN (no test) stays NaN and is not counted."""
    p_values = np.asarray(p_values, dtype=np.float64)
    q_values = np.full(p_values.shape, np.nan)
    tested = np.flatnonzero(~np.isnan(p_values))
    if not len(tested):
        return q_values
    order = tested[np.argsort(p_values[tested], kind="stable")]
    m = len(order)
    scaled = p_values[order] * m / np.arange(1, m + 1)
    q_values[order] = np.minimum(np.minimum.accumulate(scaled[::-1])[::-1], 1.0)
    return q_values


def _family_p_values(frame: pd.DataFrame, p_column: str) -> pd.Series:
    """The column's p-values of ok rows; NaN elsewhere (no test, so no q)."""
    p_values = pd.to_numeric(frame[p_column], errors="coerce").astype(np.float64)
    return p_values.where(frame["status"].astype(str).eq("ok").to_numpy())


def set_columns(frame: pd.DataFrame, settings: Settings) -> dict[str, pd.Series]:
    """Task.set_columns: the q column of every p column, a BH family per feature mode."""
    modes = frame["feature_mode"].astype(str).to_numpy()
    columns = {}
    for p_column in p_columns(settings):
        p_values = _family_p_values(frame, p_column).to_numpy()
        q_values = np.full(len(frame), np.nan)
        for mode in np.unique(modes):
            rows = np.flatnonzero(modes == mode)
            q_values[rows] = bh_q_values(p_values[rows])
        columns[q_column(p_column)] = pd.Series(q_values, index=frame.index)
    return columns


def q_value_report(frame: pd.DataFrame, settings: Settings) -> dict[str, Any]:
    """The q-values' part of the task's set_report: per q column and feature mode, the users tested (m) and
    those significant at q < ALPHA."""
    modes = frame["feature_mode"].astype(str)
    families: dict[str, dict[str, dict[str, int]]] = {}
    for p_column in p_columns(settings):
        q_values = pd.to_numeric(frame[q_column(p_column)], errors="coerce")
        tested = _family_p_values(frame, p_column).notna()
        families[q_column(p_column)] = {
            mode: {"tested": int(tested[modes == mode].sum()),
                   "significant": int((q_values[modes == mode] < ALPHA).sum())}
            for mode in sorted(modes.unique())
        }
    return {"q_values": {"method": "Benjamini-Hochberg",
                         "family": "one feature mode, one p column: its ok rows with a p",
                         "alpha": ALPHA, "columns": families}}
