"""Loading, per-user series, resampling, timestamps and symbolisation (no JVM needed)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from shardrun.section import Section
from shardrun.errors import DataError
from shardrun.infodynamics import task
from shardrun.infodynamics.symbols import TooManyLabels, hour_symbols, mode_symbols, value_symbols


def settings_for(path: Path, **data):
    top = Section({
        "data": {"path": str(path), **data},
        "feature_modes": ["activity", "composite"],
        "k_selection": {"k_grid": [1, 2]},
        "seed": 1,
    })
    settings = task.parse_settings(top)
    top.finish()
    return settings


def write_csv(path: Path, rows: list[tuple], header=("user_id", "timestamp", "value")) -> Path:
    pd.DataFrame(rows, columns=list(header)).to_csv(path, index=False)
    return path


def test_users_are_sorted_text_and_the_fingerprint_is_the_file_hash(tmp_path):
    path = write_csv(tmp_path / "d.csv", [
        ("007", "2025-01-01T01:00:00", 1), ("10", "2025-01-01T01:00:00", 2), ("9", "2025-01-01T02:00:00", 3),
    ])
    dataset = task.load(settings_for(path))
    assert dataset.user_ids == ("007", "10", "9")
    assert dataset.fingerprint == hashlib.sha256(path.read_bytes()).hexdigest()


def test_relative_path_resolves_against_the_working_directory(tmp_path, monkeypatch):
    write_csv(tmp_path / "d.csv", [("a", "2025-01-01T01:00:00", 1)])
    monkeypatch.chdir(tmp_path)
    assert task.load(settings_for(Path("d.csv"))).user_ids == ("a",)


def test_rows_sorted_by_time_missing_values_dropped_and_counted(tmp_path):
    path = write_csv(tmp_path / "d.csv", [
        ("a", "2025-01-01T03:00:00", 3.0),
        ("a", "2025-01-01T01:00:00", 1.0),
        ("a", "2025-01-01T02:00:00", None),
        ("a", "2025-01-01T04:00:00", float("inf")),
        ("a", "2025-01-01T00:00:00", 0.0),
    ])
    series = task.load(settings_for(path)).series("a")
    assert series.values.tolist() == [0.0, 1.0, 3.0]
    assert series.hours.tolist() == [0, 1, 3]
    assert series.dropped_missing == 2 and series.n_obs == 3


def test_duplicate_timestamps_stay_separate_rows_in_file_order(tmp_path):
    path = write_csv(tmp_path / "d.csv", [
        ("a", "2025-01-01T02:00:00", 5), ("a", "2025-01-01T01:00:00", 7),
        ("a", "2025-01-01T01:00:00", 8), ("a", "2025-01-01T01:00:00", 6),
    ])
    series = task.load(settings_for(path)).series("a")
    assert series.values.tolist() == [7, 8, 6, 5]
    assert series.duplicate_times == 2


def test_resampling_sum_fills_empty_bins_mean_drops_them(tmp_path):
    path = write_csv(tmp_path / "d.csv", [
        ("a", "2025-01-01T00:10:00", 1), ("a", "2025-01-01T00:50:00", 2), ("a", "2025-01-01T03:20:00", 5),
    ])
    summed = task.load(settings_for(path, step="1h", aggregate="sum")).series("a")
    assert summed.values.tolist() == [3, 0, 0, 5] and summed.hours.tolist() == [0, 1, 2, 3]
    counted = task.load(settings_for(path, step="1h", aggregate="count")).series("a")
    assert counted.values.tolist() == [2, 0, 0, 1]
    averaged = task.load(settings_for(path, step="1h", aggregate="mean")).series("a")
    assert averaged.values.tolist() == [1.5, 5] and averaged.hours.tolist() == [0, 3]


def test_categorical_resampling_keeps_labels(tmp_path):
    path = write_csv(tmp_path / "d.csv", [
        ("a", "2025-01-01T00:10:00", "walk"), ("a", "2025-01-01T00:50:00", "run"), ("a", "2025-01-01T02:20:00", "sit"),
    ])
    series = task.load(settings_for(path, encoding="categorical", step="1h", aggregate="last")).series("a")
    assert series.values.tolist() == ["run", "sit"] and series.hours.tolist() == [0, 2]


def test_offsets_keep_their_local_hour_and_order_by_instant(tmp_path):
    path = write_csv(tmp_path / "d.csv", [
        # 10:30+02:00 is 08:30 UTC, before 09:00+00:00; both offsets in one column (DST).
        ("a", "2025-03-30T09:00:00+00:00", 2), ("a", "2025-03-30T10:30:00+02:00", 1),
        ("b", "2025-03-30T23:00:00+05:00", 4), ("b", "2025-03-30T22:00:00+05:00", 3),
    ])
    dataset = task.load(settings_for(path))
    assert dataset.series("a").values.tolist() == [1, 2]
    assert dataset.series("a").hours.tolist() == [10, 9]
    assert dataset.series("b").hours.tolist() == [22, 23]


def test_single_offset_keeps_local_hour(tmp_path):
    path = write_csv(tmp_path / "d.csv", [("a", "2025-01-01T23:00:00-05:00", 1), ("a", "2025-01-02T00:30:00-05:00", 2)])
    assert task.load(settings_for(path)).series("a").hours.tolist() == [23, 0]


def test_parquet_reads_like_csv(tmp_path):
    rows = [("u1", "2025-01-01T01:00:00", 1.5), ("u1", "2025-01-01T00:00:00", 2.5), ("u2", "2025-01-01T05:00:00", 3.0)]
    csv = write_csv(tmp_path / "d.csv", rows)
    frame = pd.DataFrame(rows, columns=["user_id", "timestamp", "value"])
    frame["timestamp"] = pd.to_datetime(frame["timestamp"])
    parquet = tmp_path / "d.parquet"
    frame.to_parquet(parquet)
    from_csv, from_parquet = task.load(settings_for(csv)), task.load(settings_for(parquet))
    assert from_csv.user_ids == from_parquet.user_ids
    for user in from_csv.user_ids:
        assert from_csv.series(user).values.tolist() == from_parquet.series(user).values.tolist()
        assert from_csv.series(user).hours.tolist() == from_parquet.series(user).hours.tolist()


# --- data errors: each names the problem and the fix ----------------------------------------


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match="does not exist.*fix data.path"):
        task.load(settings_for(tmp_path / "nope.csv"))


def test_missing_columns_are_named_with_the_columns_present(tmp_path):
    path = write_csv(tmp_path / "d.csv", [("a", "2025-01-01", 1)], header=("who", "timestamp", "val"))
    with pytest.raises(DataError) as caught:
        task.load(settings_for(path))
    message = str(caught.value)
    assert "'user_id', 'value'" in message and "'who', 'timestamp', 'val'" in message
    assert "data.user_column" in message


def test_no_users(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("user_id,timestamp,value\n")
    with pytest.raises(DataError, match="no rows"):
        task.load(settings_for(path))


def test_unparseable_timestamps_are_quoted(tmp_path):
    path = write_csv(tmp_path / "d.csv", [("a", "2025-01-01T01:00:00", 1), ("a", "yesterday noon", 2)])
    with pytest.raises(DataError, match=r"row 2: 'yesterday noon'.*ISO 8601"):
        task.load(settings_for(path))


def test_empty_timestamp(tmp_path):
    path = write_csv(tmp_path / "d.csv", [("a", "2025-01-01T01:00:00", 1), ("a", None, 2)])
    with pytest.raises(DataError, match="no timestamp"):
        task.load(settings_for(path))


def test_numeric_timestamps_are_refused(tmp_path):
    path = tmp_path / "d.parquet"
    pd.DataFrame({"user_id": ["a"], "timestamp": [1700000000], "value": [1]}).to_parquet(path)
    with pytest.raises(DataError, match="holds numbers, not timestamps"):
        task.load(settings_for(path))


def test_mixing_offsets_and_naive_times_is_refused(tmp_path):
    path = write_csv(tmp_path / "d.csv", [("a", "2025-01-01T01:00:00+01:00", 1), ("a", "2025-01-01T02:00:00+02:00", 1),
                                          ("a", "2025-01-01T03:00:00", 2)])
    with pytest.raises(DataError, match="with and without a UTC offset"):
        task.load(settings_for(path))


def test_non_numeric_values_need_categorical_encoding(tmp_path):
    path = write_csv(tmp_path / "d.csv", [("a", "2025-01-01T01:00:00", "walk")])
    with pytest.raises(DataError, match="data.encoding: categorical"):
        task.load(settings_for(path))
    assert task.load(settings_for(path, encoding="categorical")).series("a").values.tolist() == ["walk"]


def test_missing_user_id(tmp_path):
    path = write_csv(tmp_path / "d.csv", [(None, "2025-01-01T01:00:00", 1)])
    with pytest.raises(DataError, match="no user id"):
        task.load(settings_for(path))


def test_unsupported_extension(tmp_path):
    path = tmp_path / "d.xlsx"
    path.write_text("x")
    with pytest.raises(DataError, match="unsupported extension"):
        task.load(settings_for(path))


def test_unknown_user_is_a_key_error(tmp_path):
    dataset = task.load(settings_for(write_csv(tmp_path / "d.csv", [("a", "2025-01-01T01:00:00", 1)])))
    with pytest.raises(KeyError, match="'b'"):
        dataset.series("b")


# --- symbolisation --------------------------------------------------------------------------


def test_quantile_symbols_follow_numpy_quantile_edges():
    values = np.array([0, 0, 0, 1, 2, 3, 3, 7, 9, 12], dtype=float)
    edges = np.quantile(values, [0.25, 0.5, 0.75])
    symbols = value_symbols(values, "quantile", 4)
    assert symbols.dtype == np.int32
    assert symbols.tolist() == np.searchsorted(edges, values, side="right").tolist()
    assert symbols.min() >= 0 and symbols.max() <= 3


def test_categorical_symbols_are_sorted_label_indices_and_overflow_is_a_skip():
    labels = np.array(["walk", "idle", "run", "idle"], dtype=object)
    assert value_symbols(labels, "categorical", 3).tolist() == [2, 0, 1, 0]
    with pytest.raises(TooManyLabels, match="raise data.levels to at least 3"):
        value_symbols(labels, "categorical", 2)


def test_hour_bins_and_composite_symbols():
    hours = np.arange(24)
    bins = hour_symbols(hours, 6)
    assert bins.tolist() == [h * 6 // 24 for h in range(24)] and bins.max() == 5
    values = np.array([0, 3, 1], dtype=np.int32)
    hour_bins = np.array([5, 0, 2], dtype=np.int32)
    assert mode_symbols("composite", values, hour_bins, 6).tolist() == [5, 18, 8]
    assert mode_symbols("activity", values, hour_bins, 6).tolist() == [0, 3, 1]
