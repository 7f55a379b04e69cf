"""Value-range checks of a merged result set (the task's part of validate_outputs).

For ok rows, with N = n_obs and k the k of the column (k_selected for ais_bits and te_hour_bits):
- 0 <= entropy_bits <= log2(base);
- 0 <= AIS and its null mean <= entropy_bits * N / (N - k), and <= log2(base);
- 0 <= te_hour_bits <= entropy_bits * N / (N - k) and <= log2(data.levels);
- p-values (b + 1) / (S + 1), S = surrogates: in [1 / (S + 1), 1] and a whole multiple of 1 / (S + 1);
  k_selected in the grid; ais_bits equal to ais_k<k_selected>_bits;
- every q-value (fdr.py) where its p is (ok rows with a p) and nowhere else, in [p, 1], never below the
  q of a smaller p of its family (BH's order), and equal to the q computed again from the set's p-values;
- n_obs at least max(data.min_observations, largest k + 2) and base the mode's base.
Skipped and failed rows must have a reason.
The cleaning counts (cleaning.py, check_cleaning): whole numbers >= 0 in every ok and skipped row
(a failed row may lack them), the same in every mode of a user; n_dropped 0 unless data.missing is
drop, and dropped_reason naming causes whose counts add up to n_dropped; n_merged_rows and
n_empty_bins 0 without data.step.

Why N / (N - k): AIS(k) <= H(next), but the next values are the N - k symbols after the first k,
while entropy_bits is over all N. With P_N the empirical distribution of all N symbols,
P_N = (N-k)/N * P_{N-k} + k/N * Q (Q: the first k), and entropy is concave, so
H(P_N) >= (N-k)/N * H(P_{N-k}), that is H(P_{N-k}) <= N/(N-k) * H(P_N). TE <= H(value symbols of the
next values) <= H(mode symbols of the same values), so the same bound holds. The bound is exact;
TOLERANCE only absorbs floating-point rounding of sums of at most base^(k+1) terms (about 1e-12).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from shardrun.infodynamics.analysis import ais_columns, p_columns, q_column, result_columns
from shardrun.infodynamics.cleaning import COUNT_COLUMNS
from shardrun.infodynamics.fdr import set_columns
from shardrun.infodynamics.settings import Settings, minimum_observations
from shardrun.infodynamics.symbols import mode_base
from shardrun.states import STATUSES

TOLERANCE = 1e-9
_EXAMPLES = 3


def check_rows(frame: pd.DataFrame, settings: Settings) -> list[str]:
    missing = [column for column in result_columns(settings) if column not in frame.columns]
    if missing:
        return [f"the result set lacks the columns {', '.join(missing)}"]
    problems: list[str] = []
    status = frame["status"].astype(str)
    reason = frame["reason"].fillna("").astype(str).str.strip()
    problems += _report(frame, ~status.isin(STATUSES), f"have a status other than {', '.join(STATUSES)}")
    problems += _report(frame, ~frame["feature_mode"].isin(settings.feature_modes),
                        f"have a feature_mode outside the config's {', '.join(settings.feature_modes)}")
    unexplained = status.isin(["skipped", "failed"]) & (reason == "")
    problems += _report(frame, unexplained, "are skipped or failed without a reason")
    ok = frame[status == "ok"]
    if not ok.empty:
        problems += _check_ok_rows(ok, settings)
    problems += _check_q_values(frame, settings)
    problems += check_cleaning(frame, settings)
    return problems


def _number(frame: pd.DataFrame, column: str) -> pd.Series:
    return pd.to_numeric(frame[column], errors="coerce").astype(float)


def _check_ok_rows(ok: pd.DataFrame, settings: Settings) -> list[str]:
    problems: list[str] = []
    ks = settings.k_selection.ks
    n_obs = _number(ok, "n_obs")
    base = _number(ok, "base")
    entropy = _number(ok, "entropy_bits")
    k_selected = _number(ok, "k_selected")
    expected_base = ok["feature_mode"].map(lambda mode: mode_base(settings, mode))
    log2_base = np.log2(base)

    problems += _report(ok, ~(base == expected_base), "have a base other than their feature mode's")
    problems += _report(ok, ~(n_obs >= minimum_observations(settings)),
                        "are ok with fewer observations than the minimum")
    problems += _report(ok, ~((entropy >= -TOLERANCE) & (entropy <= log2_base + TOLERANCE)),
                        "have entropy_bits outside [0, log2(base)]")
    problems += _report(ok, ~k_selected.isin(ks), f"have k_selected outside the k grid {list(ks)}")

    def bound(k: pd.Series | int) -> pd.Series:
        return np.minimum(entropy * n_obs / (n_obs - k), log2_base) + TOLERANCE

    for k in ks:
        bits, null_mean, p_value = (_number(ok, column) for column in ais_columns(k))
        evaluated = bits.notna()
        if not settings.k_selection.undersampling_guard:
            problems += _report(ok, ~evaluated, f"lack AIS at k={k} although the undersampling guard is off")
        together = evaluated == null_mean.notna()
        together &= evaluated == p_value.notna()
        problems += _report(ok, ~together, f"have only some of the k={k} AIS columns")
        for column, values in ((bits.name, bits), (null_mean.name, null_mean)):
            inside = (values >= -TOLERANCE) & (values <= bound(k))
            problems += _report(ok, evaluated & ~inside, f"have {column} outside [0, entropy_bits * N/(N-{k})]")
        problems += _check_p_values(ok, p_value, evaluated, settings.surrogates)

    ais_bits = _number(ok, "ais_bits")
    at_selected = pd.Series(np.nan, index=ok.index)
    for k in ks:
        at_selected = at_selected.where(k_selected != k, _number(ok, ais_columns(k)[0]))
    problems += _report(ok, ~(ais_bits == at_selected), "have ais_bits different from AIS at k_selected")

    te = _number(ok, "te_hour_bits")
    te_inside = (te >= -TOLERANCE) & (te <= bound(k_selected)) & (te <= math.log2(settings.data.levels) + TOLERANCE)
    problems += _report(ok, ~te_inside, "have te_hour_bits outside [0, min(entropy_bits * N/(N-k), log2(levels))]")
    problems += _check_p_values(ok, _number(ok, "te_hour_p"), pd.Series(True, index=ok.index), settings.surrogates)
    return problems


def _check_p_values(ok: pd.DataFrame, p_value: pd.Series, evaluated: pd.Series, surrogates: int) -> list[str]:
    """A p of S surrogates is (b + 1) / (S + 1) for a whole b in 0..S (measures.permutation_p_value)."""
    draws = p_value * (surrogates + 1)
    problems = _report(ok, evaluated & ~p_value.between(1 / (surrogates + 1), 1),
                       f"have {p_value.name} outside [1/(surrogates + 1), 1] = [1/{surrogates + 1}, 1]")
    problems += _report(ok, evaluated & p_value.between(0, 1) & ~((draws - draws.round()).abs() <= 1e-6),
                        f"have {p_value.name} not a whole multiple of 1/(surrogates + 1) = 1/{surrogates + 1}"
                        " (a p-value of another definition?)")
    return problems


def _check_q_values(frame: pd.DataFrame, settings: Settings) -> list[str]:
    problems: list[str] = []
    modes = frame["feature_mode"].astype(str)
    recomputed = set_columns(frame, settings)
    for p_column in p_columns(settings):
        q_name = q_column(p_column)
        p_value = _number(frame, p_column).where(frame["status"].astype(str).eq("ok"))
        q_value = _number(frame, q_name)
        problems += _report(frame, p_value.notna() != q_value.notna(),
                            f"have {q_name} without an ok {p_column}, or {p_column} without {q_name}")
        both = p_value.notna() & q_value.notna()
        problems += _report(frame, both & ~((q_value >= p_value - TOLERANCE) & (q_value <= 1 + TOLERANCE)),
                            f"have {q_name} outside [{p_column}, 1]")
        out_of_order = pd.Series(False, index=frame.index)
        for mode in modes[both].unique():
            by_p = p_value[both & (modes == mode)].sort_values(kind="stable").index
            out_of_order.loc[by_p[1:][np.diff(q_value.loc[by_p].to_numpy()) < -TOLERANCE]] = True
        problems += _report(frame, out_of_order, f"have {q_name} below the {q_name} of a smaller {p_column} in"
                                                 " their feature mode (not Benjamini-Hochberg's order)")
        expected = recomputed[q_name]
        same = ((expected - q_value).abs() <= TOLERANCE) | (expected.isna() & q_value.isna())
        problems += _report(frame, ~same, f"have {q_name} other than Benjamini-Hochberg's q over the {p_column}"
                                          " of their feature mode's ok rows")
    return problems


def check_cleaning(frame: pd.DataFrame, settings: Settings) -> list[str]:
    """The cleaning counts' rules (module docstring)."""
    problems: list[str] = []
    analysed = frame["status"].astype(str).isin(["ok", "skipped"])
    for column in COUNT_COLUMNS:
        counts = _number(frame, column)
        whole = (counts >= 0) & (counts == np.floor(counts))
        problems += _report(frame, counts.notna() & ~whole, f"have {column} that is not a whole number >= 0")
        problems += _report(frame, analysed & counts.isna(), f"lack {column} although the user was loaded")
        differs = counts.groupby(frame["user_id"]).transform("nunique") > 1
        problems += _report(frame, differs, f"have {column} that differs between the feature modes of a user")
    dropped = _number(frame, "n_dropped")
    if settings.data.missing != "drop":
        problems += _report(frame, dropped > 0, "have n_dropped > 0 although data.missing is refuse")
    said = frame["dropped_reason"].fillna("").astype(str)
    named = said.str.findall(r"\d+").map(lambda numbers: sum(int(n) for n in numbers))
    problems += _report(frame, dropped.notna() & (named != dropped),
                        "have a dropped_reason whose counts do not add up to n_dropped")
    if settings.data.step is None:
        for column in ("n_merged_rows", "n_empty_bins"):
            problems += _report(frame, _number(frame, column) > 0, f"have {column} > 0 although data.step is null")
    return problems


def _report(frame: pd.DataFrame, mask: pd.Series, text: str) -> list[str]:
    mask = mask.fillna(True).astype(bool)
    if not mask.any():
        return []
    bad = frame[mask]
    examples = ", ".join(f"{row.user_id}/{row.feature_mode}" for row in bad.head(_EXAMPLES).itertuples())
    more = f" and {len(bad) - _EXAMPLES} more" if len(bad) > _EXAMPLES else ""
    return [f"{len(bad)} rows {text} ({examples}{more})"]
