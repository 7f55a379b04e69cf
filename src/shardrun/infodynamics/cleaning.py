"""What loading did to each user's rows before the analysis, as columns of the user's result rows.

Every step of data.py that changes a user's series is counted here, so that nothing in the input is
dropped, merged or reordered without the result rows saying so (docs/ANALYSIS.md, "Missing values and cleaning"):

    n_dropped               rows left out (data.missing: drop): a missing value (empty cell, NaN),
                            an infinite value (inf, -inf) or a missing timestamp. Always 0 with
                            data.missing: refuse, which refuses such an input at start.
    dropped_reason          those rows by cause, such as "2 missing values, 1 infinite value"; "" when none
    n_out_of_order          rows whose timestamp is earlier than that of the user's row before them in
                            the file: the series is sorted by time, so these rows moved
    n_duplicate_timestamps  rows (of those kept) at the same instant as the row before them in time
                            order: without data.step they stay separate, consecutive observations in
                            file order; with it they fall into one bin
    n_merged_rows           data.step: rows aggregated into a bin together with another row (the rows
                            kept minus the bins that hold a row); 0 without data.step
    n_empty_bins            data.step: bins between the user's first and last that hold no row, 0 for
                            sum and count (no events), left out for mean, min, max, first, last (the
                            series then joins across them); 0 without data.step

A failed user's rows leave them empty: the core records a failure without the user's series.
`cleaning_summary` totals them over a result set (for the merge report).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pandas as pd

COUNT_COLUMNS = ("n_dropped", "n_out_of_order", "n_duplicate_timestamps", "n_merged_rows", "n_empty_bins")
CLEANING_COLUMNS = ("n_dropped", "dropped_reason", "n_out_of_order", "n_duplicate_timestamps", "n_merged_rows",
                    "n_empty_bins")


@dataclass(frozen=True)
class Cleaning:
    """One user's counts (the module docstring says what each means)."""

    missing_values: int = 0
    infinite_values: int = 0
    missing_times: int = 0
    out_of_order: int = 0
    duplicate_times: int = 0
    merged_rows: int = 0
    empty_bins: int = 0

    @property
    def dropped(self) -> int:
        return self.missing_values + self.infinite_values + self.missing_times

    def dropped_reason(self) -> str:
        causes = ((self.missing_values, "missing value"), (self.infinite_values, "infinite value"),
                  (self.missing_times, "missing timestamp"))
        return ", ".join(f"{count} {what}{'' if count == 1 else 's'}" for count, what in causes if count)

    def columns(self) -> dict[str, Any]:
        return {
            "n_dropped": self.dropped,
            "dropped_reason": self.dropped_reason(),
            "n_out_of_order": self.out_of_order,
            "n_duplicate_timestamps": self.duplicate_times,
            "n_merged_rows": self.merged_rows,
            "n_empty_bins": self.empty_bins,
        }


def cleaning_summary(frame: pd.DataFrame) -> dict[str, Any]:
    """The counts of a result set, per user (a user's rows of every feature mode carry the same counts):
    for each count column the total and the users with any, and the users whose rows carry none (failed).

    {"users": 60, "users_without_counts": 0, "n_dropped": {"total": 12, "users": 3}, ...}; JSON-able,
    deterministic. A frame without the columns (an older run) counts every user as without counts."""
    users = frame["user_id"].astype(str) if "user_id" in frame.columns else pd.Series([], dtype=str)
    present = [column for column in COUNT_COLUMNS if column in frame.columns]
    counts = frame[present].apply(pd.to_numeric, errors="coerce") if present else pd.DataFrame(index=frame.index)
    known = counts.notna().all(axis=1) if len(present) == len(COUNT_COLUMNS) else pd.Series(False, index=frame.index)
    per_user = counts[known].groupby(users[known], sort=True).first()
    summary: dict[str, Any] = {
        "users": int(users.nunique()),
        "users_without_counts": int(users.nunique() - len(per_user)),
    }
    for column in COUNT_COLUMNS:
        values: pd.Series = per_user[column] if column in per_user.columns else pd.Series([], dtype=float)
        summary[column] = {"total": int(values.sum()), "users": int((values > 0).sum())}
    return summary

