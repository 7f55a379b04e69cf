"""Result rows: schema, determinism, skip rules, the undersampling guard and check_rows."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from shardrun.infodynamics import task
from shardrun.infodynamics.analysis import row_columns
from shardrun.section import Section

REPO = Path(__file__).resolve().parents[2]
SAMPLE = REPO / "data" / "sample_users.csv"


def make_settings(path: Path, *, k_grid=(1, 2), surrogates=8, modes=("activity", "composite"), **extra):
    data = {"path": str(path), **extra.pop("data", {})}
    top = Section({"data": data, "feature_modes": list(modes), "k_selection": {"k_grid": list(k_grid), **extra.pop(
        "k_selection", {})}, "surrogates": surrogates, "seed": 3, **extra})
    settings = task.parse_settings(top)
    top.finish()
    return settings


def as_merged(rows, settings) -> pd.DataFrame:
    """Users' rows as the merge makes them a result set: with the q-values over the set (fdr.py)."""
    frame = pd.DataFrame(rows)
    return frame.assign(**task.set_columns(frame, settings))[task.result_columns(settings)]


def sample_subset(path: Path, users=("u001", "u021", "u041"), hours=200, shuffle=False) -> Path:
    frame = pd.read_csv(SAMPLE, dtype={"user_id": str})
    frame = frame[frame.user_id.isin(users)].groupby("user_id").head(hours)
    if shuffle:
        frame = frame.sample(frac=1.0, random_state=1)
    frame.to_csv(path, index=False)
    return path


def same_rows(first, second) -> bool:
    # JSON with NaN as a token compares NaN equal to NaN, value for value.
    return json.dumps(first, sort_keys=True) == json.dumps(second, sort_keys=True)


def test_result_columns_follow_the_grid_after_k_max(tmp_path):
    settings = make_settings(tmp_path / "x.csv", k_grid=(3, 1, 2), k_selection={"k_max": 2})
    assert task.result_columns(settings) == [
        "user_id", "feature_mode", "status", "reason", "n_obs", "base", "entropy_bits", "k_selected", "ais_bits",
        "ais_k1_bits", "ais_k1_null_mean_bits", "ais_k1_p", "ais_k1_q", "ais_k2_bits", "ais_k2_null_mean_bits",
        "ais_k2_p", "ais_k2_q", "te_hour_bits", "te_hour_p", "te_hour_q",
        "n_dropped", "dropped_reason", "n_out_of_order", "n_duplicate_timestamps", "n_merged_rows", "n_empty_bins",
    ]
    # a user's rows carry every column but the q-values, which the merge adds over the whole set
    assert row_columns(settings) == [c for c in task.result_columns(settings) if not c.endswith("_q")]
    assert task.key_columns == ("user_id", "feature_mode")


def test_failed_rows(tmp_path):
    settings = make_settings(tmp_path / "x.csv")
    rows = task.failed_rows(settings, "u9", "boom")
    assert [row["feature_mode"] for row in rows] == ["activity", "composite"]
    for row in rows:
        assert list(row) == row_columns(settings)
        assert (row["status"], row["reason"], row["user_id"]) == ("failed", "boom", "u9")
        assert all(math.isnan(row[c]) for c in row_columns(settings)[4:])


@pytest.mark.usefixtures("jvm")
def test_rows_are_plain_json_values_and_pass_check_rows(tmp_path):
    settings = make_settings(sample_subset(tmp_path / "d.csv"))
    dataset = task.load(settings)
    rows = [row for user in dataset.user_ids for row in task.analyse(dataset, user, settings)]
    for row in rows:
        assert list(row) == row_columns(settings)
        assert all(type(value) in (int, float, str) for value in row.values())
        assert row["status"] == "ok" and row["reason"] == ""
    json.dumps(rows)
    assert task.check_rows(as_merged(rows, settings), settings) == []


@pytest.mark.usefixtures("jvm")
def test_numbers_do_not_depend_on_order_repetition_or_file_row_order(tmp_path):
    settings = make_settings(sample_subset(tmp_path / "d.csv"), k_grid=(1, 2, 3), surrogates=12)
    shuffled = make_settings(sample_subset(tmp_path / "s.csv", shuffle=True), k_grid=(1, 2, 3), surrogates=12)
    dataset, shuffled_dataset = task.load(settings), task.load(shuffled)
    forward = {user: task.analyse(dataset, user, settings) for user in dataset.user_ids}
    backward = {user: task.analyse(dataset, user, settings) for user in reversed(dataset.user_ids)}
    again = {user: task.analyse(dataset, user, settings) for user in dataset.user_ids}
    from_shuffled = {user: task.analyse(shuffled_dataset, user, shuffled) for user in shuffled_dataset.user_ids}
    assert same_rows(forward, backward) and same_rows(forward, again)

    def in_order(rows_by_user):  # the rows but the count of rows the shuffle moved
        return {user: [{c: v for c, v in row.items() if c != "n_out_of_order"} for row in rows]
                for user, rows in rows_by_user.items()}

    assert same_rows(in_order(forward), in_order(from_shuffled))
    assert all(row["n_out_of_order"] == 0 for rows in forward.values() for row in rows)
    assert all(row["n_out_of_order"] > 0 for rows in from_shuffled.values() for row in rows)


@pytest.mark.usefixtures("jvm")
def test_dropped_rows_are_counted_in_every_row_and_the_numbers_are_those_of_the_rows_kept(tmp_path):
    """data.missing: drop: the user's rows say what was dropped; its numbers are those of a file without
    the dropped rows; a user without dropped rows keeps every number it had."""
    clean = pd.read_csv(sample_subset(tmp_path / "clean.csv"), dtype={"user_id": str})
    dirty = clean.copy()
    mine = dirty.index[dirty["user_id"] == "u021"]
    dirty.loc[mine[[5, 50]], "value"] = None
    dirty.loc[mine[80], "value"] = float("inf")
    dirty.loc[mine[120], "timestamp"] = None
    dirty.to_csv(tmp_path / "dirty.csv", index=False)
    clean.drop(index=mine[[5, 50, 80, 120]]).to_csv(tmp_path / "kept.csv", index=False)
    settings = {name: make_settings(tmp_path / f"{name}.csv", data={"missing": "drop"}) for name in ("dirty", "kept",
                                                                                                      "clean")}
    rows = {name: {user: task.analyse(task.load(s), user, s) for user in ("u001", "u021")}
            for name, s in settings.items()}
    for row in rows["dirty"]["u021"]:
        assert row["status"] == "ok"
        assert (row["n_dropped"], row["dropped_reason"]) == (
            4, "2 missing values, 1 infinite value, 1 missing timestamp")
    numbers = [c for c in row_columns(settings["dirty"]) if c not in ("n_dropped", "dropped_reason")]
    assert ([[r[c] for c in numbers] for r in rows["dirty"]["u021"]]
            == [[r[c] for c in numbers] for r in rows["kept"]["u021"]])
    assert same_rows(rows["dirty"]["u001"], rows["clean"]["u001"])
    assert all(r["n_dropped"] == 0 and r["dropped_reason"] == "" for r in rows["dirty"]["u001"])
    frame = as_merged([row for user_rows in rows["dirty"].values() for row in user_rows], settings["dirty"])
    assert task.check_rows(frame, settings["dirty"]) == []


@pytest.mark.usefixtures("jvm")
def test_too_few_observations_is_a_skip_per_mode(tmp_path):
    path = tmp_path / "d.csv"
    times = pd.date_range("2025-01-01", periods=9, freq="h").strftime("%Y-%m-%dT%H:%M:%S")
    pd.DataFrame({"user_id": "tiny", "timestamp": times, "value": range(9)}).to_csv(path, index=False)
    # min_observations 5, but the largest k is 8, so 10 observations are needed.
    settings = make_settings(path, k_grid=(1, 8), data={"min_observations": 5})
    rows = task.analyse(task.load(settings), "tiny", settings)
    assert [row["status"] for row in rows] == ["skipped", "skipped"]
    assert all("only 9 observations; needs at least 10" in row["reason"] for row in rows)
    assert [row["base"] for row in rows] == [4, 24] and all(row["n_obs"] == 9 for row in rows)
    assert math.isnan(rows[0]["entropy_bits"])


@pytest.mark.usefixtures("jvm")
def test_more_labels_than_levels_is_a_skip(tmp_path):
    path = tmp_path / "d.csv"
    times = pd.date_range("2025-01-01", periods=40, freq="h").strftime("%Y-%m-%dT%H:%M:%S")
    labels = [f"l{i % 5}" for i in range(40)]
    pd.DataFrame({"user_id": "many", "timestamp": times, "value": labels}).to_csv(path, index=False)
    settings = make_settings(path, data={"encoding": "categorical", "levels": 3})
    rows = task.analyse(task.load(settings), "many", settings)
    assert [row["status"] for row in rows] == ["skipped", "skipped"]
    assert "5 distinct category labels but data.levels is 3" in rows[0]["reason"]


@pytest.mark.usefixtures("jvm")
def test_undersampling_guard(tmp_path):
    path = tmp_path / "d.csv"
    rng = np.random.default_rng(0)
    times = pd.date_range("2025-01-01", periods=100, freq="h").strftime("%Y-%m-%dT%H:%M:%S")
    pd.DataFrame({"user_id": "g", "timestamp": times, "value": rng.integers(0, 9, 100)}).to_csv(path, index=False)
    settings = make_settings(path, k_grid=(1, 2, 3), k_selection={"undersampling_guard": True})
    activity, composite = task.analyse(task.load(settings), "g", settings)
    # The guard keeps k where n_obs - k >= base * (distinct pasts of length k). activity, base 4: 4 pasts
    # at k=1 (99 >= 16), at most 16 at k=2 (98 >= 64), but about 60 of the 64 at k=3 (97 < 240).
    assert activity["status"] == "ok" and "k=3" in activity["reason"] and "k=1" not in activity["reason"]
    assert not math.isnan(activity["ais_k2_bits"])
    assert all(math.isnan(activity[c]) for c in ("ais_k3_bits", "ais_k3_null_mean_bits", "ais_k3_p"))
    assert activity["k_selected"] in (1, 2)
    # composite, base 24: even k=1 has about 24 pasts, and 99 < 24 * 24.
    assert composite["status"] == "skipped" and "undersampling guard" in composite["reason"]
    assert task.check_rows(as_merged([activity, composite], settings), settings) == []


@pytest.mark.usefixtures("jvm")
def test_undersampling_guard_counts_the_pasts_the_series_shows(tmp_path):
    # A series that cycles through its 4 levels shows 4 pasts at every k: the guard keeps k = 4, where the
    # dense calculators' rule (n_obs - k >= 4^(k+1) = 1024) dropped it.
    path = tmp_path / "d.csv"
    times = pd.date_range("2025-01-01", periods=300, freq="h").strftime("%Y-%m-%dT%H:%M:%S")
    pd.DataFrame({"user_id": "c", "timestamp": times, "value": [i % 4 for i in range(300)]}).to_csv(path, index=False)
    settings = make_settings(path, k_grid=(1, 2, 3, 4, 5), k_selection={"undersampling_guard": True})
    rows = {row["feature_mode"]: row for row in task.analyse(task.load(settings), "c", settings)}
    values = [i % 4 for i in range(300)]
    hours = [t.hour * 6 // 24 for t in pd.date_range("2025-01-01", periods=300, freq="h")]
    for mode, symbols, base in (("activity", values, 4), ("composite", [v * 6 + h for v, h in zip(values, hours)], 24)):
        for k in range(1, 6):
            pasts = {tuple(symbols[t - k:t]) for t in range(k, 300)}
            kept = 300 - k >= base * len(pasts)
            assert math.isnan(rows[mode][f"ais_k{k}_bits"]) != kept, (mode, k, len(pasts))
    assert not math.isnan(rows["activity"]["ais_k4_bits"])


def test_check_rows_catches_out_of_range_values(tmp_path):
    settings = make_settings(tmp_path / "x.csv", k_grid=(1, 2))
    good = {
        "user_id": "a", "feature_mode": "activity", "status": "ok", "reason": "", "n_obs": 100, "base": 4,
        "entropy_bits": 1.5, "k_selected": 2, "ais_bits": 0.5,
        # p = (b + 1) / (8 surrogates + 1); q = p for one user, or for two with the same p
        "ais_k1_bits": 0.4, "ais_k1_null_mean_bits": 0.01, "ais_k1_p": 1 / 9, "ais_k1_q": 1 / 9,
        "ais_k2_bits": 0.5, "ais_k2_null_mean_bits": 0.02, "ais_k2_p": 2 / 9, "ais_k2_q": 2 / 9,
        "te_hour_bits": 0.1, "te_hour_p": 5 / 9, "te_hour_q": 5 / 9,
        "n_dropped": 0, "dropped_reason": "", "n_out_of_order": 3, "n_duplicate_timestamps": 1, "n_merged_rows": 0,
        "n_empty_bins": 0,
    }
    assert task.check_rows(pd.DataFrame([good]), settings) == []
    # AIS over the N-k next values may exceed the entropy over all N, but by at most N/(N-k).
    assert task.check_rows(pd.DataFrame([good | {"ais_k2_bits": 1.5 * 100 / 98, "ais_bits": 1.5 * 100 / 98,
                                                 "entropy_bits": 1.5}]), settings) == []
    bad_cases = {
        "ais_k1_bits": ({"ais_k1_bits": 1.6}, "ais_k1_bits outside"),
        "negative": ({"ais_k1_bits": -0.01}, "ais_k1_bits outside"),
        "entropy": ({"entropy_bits": 2.1}, "entropy_bits outside"),
        "p": ({"ais_k2_p": 1.5}, "ais_k2_p outside"),
        "p zero": ({"ais_k1_p": 0.0}, "ais_k1_p outside [1/(surrogates + 1), 1] = [1/9, 1]"),
        "p of b/S": ({"ais_k2_p": 4 / 8}, "ais_k2_p not a whole multiple of 1/(surrogates + 1)"),
        "te_p zero": ({"te_hour_p": 0.0}, "te_hour_p outside"),
        "q below p": ({"ais_k1_q": 0.1}, "ais_k1_q outside [ais_k1_p, 1]"),
        "q above 1": ({"te_hour_q": 1.5}, "te_hour_q outside [te_hour_p, 1]"),
        "q not BH's": ({"ais_k2_q": 3 / 9}, "ais_k2_q other than Benjamini-Hochberg's"),
        "q missing": ({"te_hour_q": float("nan")}, "te_hour_q without"),
        "q of a failed row": ({"status": "failed", "reason": "boom"}, "ais_k1_q without an ok ais_k1_p"),
        "k": ({"k_selected": 3}, "k_selected outside"),
        "selected": ({"ais_bits": 0.4}, "ais_bits different"),
        "te": ({"te_hour_bits": -0.001}, "te_hour_bits outside"),
        "te_p": ({"te_hour_p": float("nan")}, "te_hour_p outside"),
        "base": ({"base": 24}, "base other than"),
        "reason": ({"status": "skipped", "reason": ""}, "without a reason"),
        "status": ({"status": "done"}, "status other than"),
        "mode": ({"feature_mode": "weekday"}, "feature_mode outside"),
        "missing k": ({"ais_k1_bits": float("nan")}, "lack AIS at k=1"),
        "dropped refused": ({"n_dropped": 2, "dropped_reason": "2 missing values"}, "although data.missing is refuse"),
        "negative count": ({"n_out_of_order": -1}, "n_out_of_order that is not a whole number >= 0"),
        "fraction": ({"n_duplicate_timestamps": 0.5}, "n_duplicate_timestamps that is not a whole number"),
        "no counts": ({"n_empty_bins": float("nan")}, "lack n_empty_bins although the user was loaded"),
        "bins without step": ({"n_merged_rows": 4}, "n_merged_rows > 0 although data.step is null"),
        "unexplained": ({"dropped_reason": "1 missing value"}, "do not add up to n_dropped"),
    }
    for name, (change, message) in bad_cases.items():
        problems = task.check_rows(pd.DataFrame([good, good | {"user_id": "b"} | change]), settings)
        assert any(message in p and "b/" in p for p in problems), (name, problems)
    assert "lacks the columns" in task.check_rows(pd.DataFrame([good]).drop(columns="te_hour_p"), settings)[0]
    dropping = make_settings(tmp_path / "x.csv", k_grid=(1, 2), data={"missing": "drop"})
    explained = good | {"n_dropped": 3, "dropped_reason": "2 missing values, 1 missing timestamp"}
    assert task.check_rows(pd.DataFrame([explained]), dropping) == []
    failed = {column: float("nan") for column in good} | {"user_id": "f", "feature_mode": "activity",
                                                         "status": "failed", "reason": "boom"}
    assert task.check_rows(pd.DataFrame([good, failed]), settings) == []  # a failed user has no counts
    other_mode = good | {"feature_mode": "composite", "base": 24, "n_out_of_order": 2}
    assert any("differs between the feature modes" in p for p in task.check_rows(pd.DataFrame([good, other_mode]),
                                                                                   settings))


def test_describe_versions_needs_no_jvm():
    versions = task.describe_versions()
    assert versions["idtxl-uv"] and versions["numpy"] == np.__version__
    assert len(versions["jidt_jar_sha256"]) == 64
