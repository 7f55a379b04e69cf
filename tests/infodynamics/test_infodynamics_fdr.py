"""Benjamini-Hochberg q-values of the default task (infodynamics/fdr.py) against a brute-force definition,
their families (per feature mode and p column), and validation catching q-values that are not BH's."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from shardrun.infodynamics import task
from shardrun.infodynamics.fdr import bh_q_values

from independent_estimator import brute_force_q
from test_infodynamics_analysis import make_settings


def assert_same(actual, expected) -> None:
    assert len(actual) == len(expected)
    for a, e in zip(actual, expected):
        assert (math.isnan(a) and math.isnan(e)) or abs(a - e) <= 1e-12, (list(actual), expected)


@pytest.mark.parametrize("p_values", [
    [0.01, 0.04, 0.03, 0.2, 0.5],  # distinct
    [0.02, 0.02, 0.02, 0.5, 0.5],  # ties
    [0.3, 0.3, 0.3, 0.3],  # all equal: every q is that p
    [0.04],  # a single user: q = p
    [1.0, 1.0, 0.5],  # p = 1
    [0.01, math.nan, 0.04, math.nan, 0.02],  # NaN: no test, not counted in m
    [math.nan, math.nan],
    [],
])
def test_bh_q_values_equal_the_definition(p_values):
    q_values = bh_q_values(np.array(p_values, dtype=float))
    assert_same(q_values, brute_force_q(p_values))


def test_bh_q_values_on_random_families_with_ties_and_gaps():
    rng = np.random.default_rng(20)
    for size in (2, 7, 50, 200):
        # p-values of 100 surrogates, (b + 1) / 101: many ties, as in a real set
        p_values = (rng.integers(0, 101, size) + 1) / 101
        p_values[rng.random(size) < 0.1] = np.nan
        q_values = bh_q_values(p_values)
        assert_same(q_values, brute_force_q(p_values.tolist()))
        tested = ~np.isnan(p_values)
        assert np.all(q_values[tested] >= p_values[tested]) and np.all(q_values[tested] <= 1)
        # the same p-values in another order get the same q-values: they depend on the set only
        order = rng.permutation(size)
        assert_same(bh_q_values(p_values[order]), q_values[order])


def test_the_worked_example():
    # m = 5 sorted: 0.01, 0.02, 0.03, 0.04, 0.5 -> p m / rank = 0.05, 0.05, 0.05, 0.05, 0.5
    assert bh_q_values(np.array([0.04, 0.5, 0.01, 0.03, 0.02])).tolist() == pytest.approx([0.05, 0.5, 0.05, 0.05, 0.05])


def result_frame(settings, p_by_row) -> pd.DataFrame:
    """Rows of the result schema: (user, mode, status, ais_k1_p, ais_k2_p, te_hour_p), other numbers valid."""
    rows = []
    for user, mode, status, p1, p2, p_te in p_by_row:
        ok = status == "ok"
        number = (lambda value: value) if ok else (lambda value: math.nan)
        rows.append({
            "user_id": user, "feature_mode": mode, "status": status, "reason": "" if ok else "only 3 observations",
            "n_obs": 100, "base": 4 if mode == "activity" else 24,
            "entropy_bits": number(1.5), "k_selected": number(1), "ais_bits": number(0.4),
            "ais_k1_bits": number(0.4), "ais_k1_null_mean_bits": number(0.01), "ais_k1_p": number(p1),
            "ais_k2_bits": number(0.3 if not math.isnan(p2) else math.nan),
            "ais_k2_null_mean_bits": number(0.02 if not math.isnan(p2) else math.nan), "ais_k2_p": number(p2),
            "te_hour_bits": number(0.1), "te_hour_p": number(p_te),
            "n_dropped": 0, "dropped_reason": "", "n_out_of_order": 0, "n_duplicate_timestamps": 0,
            "n_merged_rows": 0, "n_empty_bins": 0,
        })
    frame = pd.DataFrame(rows)
    return frame.assign(**task.set_columns(frame, settings))[task.result_columns(settings)]


def test_a_family_is_one_feature_mode_and_one_p_column_of_ok_rows(tmp_path: Path):
    settings = make_settings(tmp_path / "x.csv", k_grid=(1, 2), k_selection={"undersampling_guard": True})
    s = 1 / 9  # p-values of 8 surrogates: (b + 1) / 9
    frame = result_frame(settings, [
        ("a", "activity", "ok", s, 2 * s, 3 * s),
        ("a", "composite", "ok", 4 * s, math.nan, 9 * s),  # k = 2 left out by the guard
        ("b", "activity", "ok", 3 * s, 2 * s, s),
        ("b", "composite", "ok", s, s, 9 * s),
        ("c", "activity", "skipped", s, s, s),  # no test: no p, no q, not counted
        ("c", "composite", "skipped", s, s, s),
        ("d", "activity", "ok", 9 * s, 5 * s, 2 * s),
        ("d", "composite", "ok", 2 * s, 3 * s, 9 * s),
    ])
    for p_column in ("ais_k1_p", "ais_k2_p", "te_hour_p"):
        q_column = p_column[:-2] + "_q"
        for mode in ("activity", "composite"):
            family = frame[frame.feature_mode == mode]
            assert_same(family[q_column].tolist(), brute_force_q(family[p_column].tolist()))
    assert frame.loc[frame.status == "skipped", ["ais_k1_q", "ais_k2_q", "te_hour_q"]].isna().all().all()
    assert math.isnan(frame.loc[1, "ais_k2_q"])
    # composite's ais_k2 family has two users (b and d), not three: 1/9 * 2/1, 3/9 * 2/2 (m = 3: 3/9, 4.5/9)
    assert frame.loc[[3, 7], "ais_k2_q"].tolist() == pytest.approx([2 / 9, 3 / 9])
    assert task.check_rows(frame, settings) == []
    report = task.set_report(frame, settings)["q_values"]
    assert report["columns"]["ais_k2_q"]["composite"] == {"tested": 2, "significant": 0}
    assert report["columns"]["te_hour_q"]["activity"]["tested"] == 3 and report["method"] == "Benjamini-Hochberg"


def test_validation_catches_q_values_that_are_not_bh_s(tmp_path: Path):
    settings = make_settings(tmp_path / "x.csv", k_grid=(1, 2))
    s = 1 / 9
    frame = result_frame(settings, [(f"u{i}", "activity", "ok", p, p, p)
                                    for i, p in enumerate((s, 2 * s, 4 * s, 8 * s))])
    assert task.check_rows(frame, settings) == []
    # out of BH's order: the user with the larger p given a smaller q (still >= its p)
    swapped = frame.copy()
    swapped.loc[1, "ais_k1_q"], swapped.loc[2, "ais_k1_q"] = 5 * s, 4 * s
    problems = task.check_rows(swapped, settings)
    assert any("2 rows have ais_k1_q other than Benjamini-Hochberg's" in p for p in problems), problems
    assert any("1 rows have ais_k1_q below the ais_k1_q of a smaller ais_k1_p" in p and "u2/activity" in p
               for p in problems), problems
    # an uncorrected q (q = p) is caught where BH's is larger
    uncorrected = frame.assign(te_hour_q=frame["te_hour_p"])
    problems = task.check_rows(uncorrected, settings)
    assert len(problems) == 1 and "te_hour_q other than Benjamini-Hochberg's" in problems[0], problems


def test_the_report_and_the_picture_count_the_same_significant_users(tmp_path: Path):
    """A q of exactly 0.05 (one user with p = 1/20) is significant in neither: merge_report.json's counts
    and summary.png's shares use one threshold, q < 0.05."""
    from shardrun.infodynamics.plots import fdr_shares

    settings = make_settings(tmp_path / "x.csv", k_grid=(1, 2))
    frame = result_frame(settings, [("a", "activity", "ok", 1 / 20, 0.01, 1 / 20),
                                    ("b", "composite", "ok", 0.01, 1 / 20, 0.5)])
    assert frame.loc[0, "ais_k1_q"] == 0.05 and frame.loc[1, "ais_k2_q"] == 0.05
    counted = task.set_report(frame, settings)["q_values"]["columns"]
    shares = fdr_shares(frame).set_index(["feature_mode", "k"])["significant"]
    for mode in ("activity", "composite"):
        for k in (1, 2):
            assert counted[f"ais_k{k}_q"][mode]["significant"] == shares[(mode, k)]
    assert counted["ais_k1_q"]["activity"]["significant"] == 0 and counted["ais_k2_q"]["activity"]["significant"] == 1
    assert counted["te_hour_q"]["activity"]["significant"] == 0
