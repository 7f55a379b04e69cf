"""Loading, per-user series, resampling, timestamps and symbolisation (no JVM needed)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from shardrun.errors import DataError
from shardrun.infodynamics import task
from shardrun.infodynamics.cleaning import Cleaning, cleaning_summary
from shardrun.infodynamics.symbols import TooManyLabels, hour_symbols, mode_symbols, value_symbols
from shardrun.section import Section


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


def test_rows_sorted_by_time_and_with_drop_missing_values_dropped_and_counted(tmp_path):
    path = write_csv(tmp_path / "d.csv", [
        ("a", "2025-01-01T03:00:00", 3.0),
        ("a", "2025-01-01T01:00:00", 1.0),
        ("a", "2025-01-01T02:00:00", None),
        ("a", "2025-01-01T04:00:00", float("inf")),
        ("a", "2025-01-01T00:00:00", 0.0),
    ])
    series = task.load(settings_for(path, missing="drop")).series("a")
    assert series.values.tolist() == [0.0, 1.0, 3.0]
    assert series.hours.tolist() == [0, 1, 3]
    assert series.n_obs == 3
    # 01:00 comes after 03:00 in the file, 00:00 after 04:00: two rows moved when sorted.
    assert series.cleaning == Cleaning(missing_values=1, infinite_values=1, out_of_order=2)
    assert series.cleaning.columns()["dropped_reason"] == "1 missing value, 1 infinite value"


def test_duplicate_timestamps_stay_separate_rows_in_file_order(tmp_path):
    path = write_csv(tmp_path / "d.csv", [
        ("a", "2025-01-01T02:00:00", 5), ("a", "2025-01-01T01:00:00", 7),
        ("a", "2025-01-01T01:00:00", 8), ("a", "2025-01-01T01:00:00", 6),
    ])
    series = task.load(settings_for(path)).series("a")
    assert series.values.tolist() == [7, 8, 6, 5]
    assert series.cleaning == Cleaning(duplicate_times=2, out_of_order=1)


def test_resampling_sum_fills_empty_bins_mean_drops_them(tmp_path):
    path = write_csv(tmp_path / "d.csv", [
        ("a", "2025-01-01T00:10:00", 1), ("a", "2025-01-01T00:50:00", 2), ("a", "2025-01-01T03:20:00", 5),
    ])
    summed = task.load(settings_for(path, step="1h", aggregate="sum")).series("a")
    assert summed.values.tolist() == [3, 0, 0, 5] and summed.hours.tolist() == [0, 1, 2, 3]
    # two rows in the first bin (one merged into another), two empty bins between it and the last
    assert (summed.cleaning.merged_rows, summed.cleaning.empty_bins) == (1, 2)
    counted = task.load(settings_for(path, step="1h", aggregate="count")).series("a")
    assert counted.values.tolist() == [2, 0, 0, 1]
    averaged = task.load(settings_for(path, step="1h", aggregate="mean")).series("a")
    assert averaged.values.tolist() == [1.5, 5] and averaged.hours.tolist() == [0, 3]
    assert (averaged.cleaning.merged_rows, averaged.cleaning.empty_bins) == (1, 2)  # left out, still counted


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


def test_empty_timestamp_is_refused_unless_dropped(tmp_path):
    path = write_csv(tmp_path / "d.csv", [("a", "2025-01-01T01:00:00", 1), ("a", None, 2), ("b", None, 3)])
    for read in (task.user_index, task.load):
        with pytest.raises(DataError,
                           match=r"2 missing timestamps in column 'timestamp'\): rows 2, 3 .*of 2 users \(a, b\)"):
            read(settings_for(path))
    dropped = task.load(settings_for(path, missing="drop"))
    # b lost its only row: still a user (skipped with 0 observations), its rows say why
    assert dropped.user_ids == ("a", "b")
    assert dropped.series("a").cleaning == Cleaning(missing_times=1) and dropped.series("a").n_obs == 1
    assert dropped.series("b").cleaning.columns()["dropped_reason"] == "1 missing timestamp"
    assert dropped.series("b").n_obs == 0


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


# --- data honesty: refused at start, or dropped and counted -----------------------------------


def hourly(user: str, values: list, start: str = "2025-01-01") -> list[tuple]:
    times = pd.date_range(start, periods=len(values), freq="h").strftime("%Y-%m-%dT%H:%M:%S")
    return [(user, time, value) for time, value in zip(times, values)]


def refusal(read, settings) -> str:
    with pytest.raises(DataError) as caught:
        read(settings)
    return str(caught.value)


def write_dirty(path: Path) -> Path:
    """Users a (clean), b (an empty cell, a NaN and an inf), c (a -inf), in a CSV or a Parquet file."""
    rows = hourly("a", [1.0, 2.0, 3.0, 4.0]) + hourly("b", [1.0, None, 2.0, float("nan"), float("inf"), 5.0]) \
        + hourly("c", [float("-inf"), 1.0, 2.0])
    frame = pd.DataFrame(rows, columns=["user_id", "timestamp", "value"])
    frame.to_csv(path, index=False) if path.suffix == ".csv" else frame.to_parquet(path)
    return path


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_missing_and_non_finite_values_are_refused_by_default_with_rows_users_and_fix(tmp_path, suffix):
    settings = settings_for(write_dirty(tmp_path / f"d{suffix}"))
    message = refusal(task.user_index, settings)
    assert message == refusal(task.load, settings)  # the index and a full load refuse alike
    # the count, each cause, the rows (row 1 = the first data row), the users, the fix
    assert "4 rows cannot be analysed as they are (2 missing values in column 'value', 2 infinite values" in message
    assert "rows 6, 8, 9, 11 (row 1 is the first row after the header), of 2 users (b, c)" in message
    assert "Fix the data" in message and "data.missing: drop" in message and "n_dropped" in message


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_with_drop_every_user_says_what_was_dropped_and_clean_users_are_unchanged(tmp_path, suffix):
    path = write_dirty(tmp_path / f"d{suffix}")
    dataset = task.load(settings_for(path, missing="drop"))
    assert task.user_index(settings_for(path, missing="drop")).user_ids == dataset.user_ids == ("a", "b", "c")
    assert dataset.series("b").values.tolist() == [1.0, 2.0, 5.0]
    assert dataset.series("b").cleaning.columns() == {
        "n_dropped": 3, "dropped_reason": "2 missing values, 1 infinite value", "n_out_of_order": 0,
        "n_duplicate_timestamps": 0, "n_merged_rows": 0, "n_empty_bins": 0}
    assert dataset.series("c").cleaning.columns()["dropped_reason"] == "1 infinite value"
    clean = task.load(settings_for(write_csv(tmp_path / "clean.csv", hourly("a", [1.0, 2.0, 3.0, 4.0]))))
    assert dataset.series("a").values.tolist() == clean.series("a").values.tolist()
    assert dataset.series("a").cleaning == clean.series("a").cleaning == Cleaning()


def test_missing_settings_value_is_read_strictly():
    from shardrun.errors import ConfigError

    with pytest.raises(ConfigError, match=r"'data.missing' must be one of refuse, drop"):
        settings_for(Path("d.csv"), missing="skip")
    assert settings_for(Path("d.csv")).data.missing == "refuse"


def test_a_value_column_without_any_value_is_refused_in_either_mode(tmp_path):
    path = write_csv(tmp_path / "d.csv", hourly("a", [None] * 3) + hourly("b", [None] * 2))
    for missing in ("refuse", "drop"):
        settings = settings_for(path, missing=missing)
        message = refusal(task.user_index, settings)
        assert message == refusal(task.load, settings)
        assert "column 'value' has no usable value in any of its 5 rows" in message
        assert "data.value_column" in message
    no_times = write_csv(tmp_path / "t.csv", [("a", None, 1.0), ("b", None, 2.0), ("b", "2025-01-01", None)])
    message = refusal(task.user_index, settings_for(no_times, missing="drop"))
    assert "none of its 3 rows has a user id, a timestamp and a usable value" in message


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_a_configured_column_named_twice_is_refused(tmp_path, suffix):
    path = tmp_path / f"d{suffix}"
    if suffix == ".csv":
        path.write_text("user_id,timestamp,value,value\na,2025-01-01T00:00:00,1,2\n")
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.table([pa.array(["a"]), pa.array(["2025-01-01T00:00:00"]), pa.array([1.0]),
                                 pa.array([2.0])], names=["user_id", "timestamp", "value", "value"]), path)
    for read in (task.user_index, task.load, lambda settings: task.load(settings, users=["a"])):
        message = refusal(read, settings_for(path))
        assert "names a column the config reads more than once ('value' at columns 3, 4)" in message
        assert "Rename or remove the extra columns" in message


def test_a_column_the_config_does_not_read_may_be_named_twice(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("user_id,note,timestamp,value,note\na,x,2025-01-01T00:00:00,1,y\n")
    assert task.load(settings_for(path)).series("a").values.tolist() == [1.0]


def test_ids_that_differ_only_by_whitespace_are_refused_and_a_lone_one_is_kept(tmp_path):
    path = write_csv(tmp_path / "d.csv", hourly(" u002", [1]) + hourly("u002", [2]) + hourly("u003 ", [3])
                     + hourly("u003", [4]) + hourly(" u004", [5]))
    for read in (task.user_index, task.load):
        message = refusal(read, settings_for(path))
        assert "differ only by whitespace around them (' u002' and 'u002'; 'u003' and 'u003 ')" in message
        assert "Strip the whitespace" in message
    lone = write_csv(tmp_path / "lone.csv", hourly(" u004", [5]) + hourly("u005", [6]))
    assert task.user_index(settings_for(lone)).user_ids == (" u004", "u005")


def test_the_index_refuses_what_only_another_shards_rows_hold(tmp_path):
    """A shard reads its own users' rows only: a problem in another shard's users must stop it at start
    all the same, in the user index pass every shard and the launcher read first."""
    for name, bad_row, words in (
            ("value", ("b", "2025-01-02T00:00:00", None), "1 missing value"),
            ("time", ("b", "yesterday", 1), "row 4: 'yesterday'"),
            ("label", ("b", "2025-01-02T00:00:00", "walk"), "not numbers (row 4: 'walk')")):
        path = write_csv(tmp_path / f"{name}.csv", hourly("a", [1, 2, 3]) + [bad_row])
        settings = settings_for(path)
        assert task.load(settings, users=["a"]).series("a").n_obs == 3  # a's rows alone are fine
        assert words in refusal(task.user_index, settings)


def test_cleaning_summary_totals_each_count_once_per_user():
    rows = []
    for user, dropped, reason, moved in (("a", 0, "", 0), ("b", 3, "3 missing values", 2),
                                         ("c", 1, "1 infinite value", 0)):
        for mode in ("activity", "composite"):
            rows.append({"user_id": user, "feature_mode": mode, "n_dropped": dropped, "dropped_reason": reason,
                         "n_out_of_order": moved, "n_duplicate_timestamps": 0, "n_merged_rows": 0, "n_empty_bins": 0})
    rows += [{"user_id": "d", "feature_mode": mode, "n_dropped": None} for mode in ("activity", "composite")]
    summary = cleaning_summary(pd.DataFrame(rows))
    assert summary["users"] == 4 and summary["users_without_counts"] == 1
    assert summary["n_dropped"] == {"total": 4, "users": 2}
    assert summary["n_out_of_order"] == {"total": 2, "users": 1}
    assert summary["n_empty_bins"] == {"total": 0, "users": 0}
    json.dumps(summary)


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
