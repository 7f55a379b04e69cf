"""Timestamps are never guessed: ISO 8601, or data.time_format; data.timezone; duplicates (no JVM needed)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from shardrun.config import parse_config
from shardrun.errors import ConfigError, DataError
from shardrun.infodynamics import task

from test_infodynamics_data import settings_for  # the same minimal config of the analysis

REPO = Path(__file__).resolve().parents[2]

# Days 1..12 are read either way; 13.. only day first. Hours cross the bins of hour_bins: 6.
INSTANTS = [pd.Timestamp(2025, 1, 11, 3), pd.Timestamp(2025, 1, 2, 9), pd.Timestamp(2025, 1, 13, 22),
            pd.Timestamp(2025, 1, 5, 14), pd.Timestamp(2025, 1, 11, 17), pd.Timestamp(2025, 1, 30, 0)]


def write(path: Path, stamps: list[str], users: list[str] | None = None) -> Path:
    users = users or ["a"] * len(stamps)
    pd.DataFrame({"user_id": users, "timestamp": stamps, "value": range(len(stamps))}).to_csv(path, index=False)
    return path


def series(path: Path, **data):
    one = task.load(settings_for(path, **data)).series("a")
    return one.values.tolist(), one.hours.tolist()


def iso(fmt: str = "%Y-%m-%dT%H:%M:%S") -> list[str]:
    return [t.strftime(fmt) for t in INSTANTS]


def test_day_first_text_is_refused_without_a_format_with_the_fix(tmp_path):
    path = write(tmp_path / "d.csv", [t.strftime("%d/%m/%Y %H:%M") for t in INSTANTS])
    with pytest.raises(DataError) as caught:
        task.load(settings_for(path))
    message = str(caught.value)
    assert "'timestamp'" in message and "'11/01/2025 03:00'" in message and "row 1" in message
    assert "data.time_format" in message and '"%d/%m/%Y %H:%M"' in message and '"%m/%d/%Y %H:%M"' in message


@pytest.mark.parametrize("fmt", ["%d/%m/%Y %H:%M", "%m/%d/%Y %H:%M", "%d.%m.%Y %H:%M:%S"])
def test_a_format_gives_the_series_of_the_iso_data(tmp_path, fmt):
    reference = series(write(tmp_path / "iso.csv", iso()))
    assert reference[1] == [9, 14, 3, 17, 22, 0]  # time order, local hours
    assert series(write(tmp_path / "f.csv", iso(fmt)), time_format=fmt) == reference
    bins = task.load(settings_for(tmp_path / "f.csv", time_format=fmt)).series("a").hours * 6 // 24
    assert bins.tolist() == [2, 3, 0, 4, 5, 0]


def test_a_value_not_matching_the_format_is_refused_naming_it(tmp_path):
    stamps = [t.strftime("%d/%m/%Y %H:%M") for t in INSTANTS]
    stamps[3] = "2025-01-05 14:00"
    stamps[5] = "13/31/2025 00:00"
    path = write(tmp_path / "d.csv", stamps)
    with pytest.raises(DataError) as caught:
        task.load(settings_for(path, time_format="%d/%m/%Y %H:%M"))
    message = str(caught.value)
    assert "2 timestamps that do not match data.time_format '%d/%m/%Y %H:%M'" in message
    assert "row 4: '2025-01-05 14:00'; row 6: '13/31/2025 00:00'" in message


@pytest.mark.parametrize("fmt", ["%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M:%S", "%Y-%m-%d %H:%M", "%Y-%m-%dT%H:%M"])
def test_iso_with_t_or_space_is_accepted(tmp_path, fmt):
    assert series(write(tmp_path / "d.csv", iso(fmt))) == series(write(tmp_path / "r.csv", iso()))


def test_iso_with_one_offset_or_z_keeps_the_written_hour(tmp_path):
    reference = series(write(tmp_path / "r.csv", iso()))
    assert series(write(tmp_path / "z.csv", [s + "Z" for s in iso()])) == reference
    assert series(write(tmp_path / "o.csv", [s + "+05:30" for s in iso()])) == reference


def test_mixed_offsets_order_by_instant_and_keep_their_own_hour(tmp_path):
    # DST ends in Berlin at 03:00+02:00 = 02:00+01:00: the hour 02:xx is written twice, with two offsets.
    stamps = ["2025-10-26T02:30:00+01:00", "2025-10-26T02:30:00+02:00", "2025-10-26T01:30:00+02:00",
              "2025-10-26T03:30:00+01:00"]
    assert series(write(tmp_path / "d.csv", stamps)) == ([2, 1, 0, 3], [1, 2, 2, 3])


def test_a_timezone_converts_offsets_to_its_local_time(tmp_path):
    stamps = ["2025-07-01T10:00:00Z", "2025-07-01T09:00:00+00:00", "2025-07-01T13:00:00+05:00"]
    # 08:00Z (13:00+05:00) first, then 09:00Z and 10:00Z; Berlin in summer is UTC+2.
    assert series(write(tmp_path / "d.csv", stamps), timezone="Europe/Berlin") == ([2, 1, 0], [10, 11, 12])
    assert series(write(tmp_path / "d.csv", stamps), timezone="UTC") == ([2, 1, 0], [8, 9, 10])


def test_naive_and_offset_times_mixed_are_refused_unless_a_timezone_places_them(tmp_path):
    stamps = ["2025-07-01T10:00:00+02:00", "2025-07-01T09:30:00", "2025-07-01T11:00:00+02:00"]
    path = write(tmp_path / "d.csv", stamps)
    with pytest.raises(DataError, match=r"with and without a UTC offset \(rows 2 have none\).*data.timezone"):
        task.load(settings_for(path))
    assert series(path, timezone="Europe/Berlin") == ([1, 0, 2], [9, 10, 11])


def test_a_timezone_refuses_naive_times_in_the_repeated_or_skipped_hour(tmp_path):
    stamps = ["2025-10-26T01:30:00", "2025-10-26T02:30:00", "2025-10-26T03:30:00", "2025-03-30T02:30:00"]
    path = write(tmp_path / "d.csv", stamps)
    with pytest.raises(DataError) as caught:
        task.load(settings_for(path, timezone="Europe/Berlin"))
    message = str(caught.value)
    assert "2 timestamps without a UTC offset" in message and "Europe/Berlin" in message
    assert "row 2: 2025-10-26 02:30:00; row 4: 2025-03-30 02:30:00" in message and "UTC offset" in message


def test_duplicate_times_keep_file_order_and_are_counted(tmp_path):
    # Without offsets and without data.timezone, a repeated DST hour is equal times: file order, no guess.
    stamps = ["2025-10-26T02:30:00", "2025-10-26T01:30:00", "2025-10-26T02:30:00", "2025-10-26T02:30:00"]
    path = write(tmp_path / "d.csv", stamps)
    one = task.load(settings_for(path)).series("a")
    assert one.values.tolist() == [1, 0, 2, 3] and one.cleaning.duplicate_times == 2


def test_parquet_datetime_columns_are_accepted(tmp_path):
    reference = series(write(tmp_path / "r.csv", iso()))
    for stamps in (pd.Series(INSTANTS), pd.Series(INSTANTS).dt.tz_localize("Asia/Kolkata")):
        path = tmp_path / "d.parquet"
        pd.DataFrame({"user_id": "a", "timestamp": stamps, "value": range(len(INSTANTS))}).to_parquet(path)
        assert series(path) == reference
        assert series(path, time_format="%d/%m/%Y %H:%M") == reference  # a datetime column needs no format
    # The last file is in Asia/Kolkata (UTC+05:30): data.timezone UTC shows it on UTC's clock.
    assert series(path, timezone="UTC") == (reference[0], [3, 8, 21, 11, 16, 18])


def test_parquet_text_column_follows_the_text_rules(tmp_path):
    path = tmp_path / "d.parquet"
    pd.DataFrame({"user_id": "a", "timestamp": [t.strftime("%d/%m/%Y %H:%M") for t in INSTANTS],
                  "value": np.arange(len(INSTANTS))}).to_parquet(path)
    with pytest.raises(DataError, match="not ISO 8601"):
        task.load(settings_for(path))
    assert series(path, time_format="%d/%m/%Y %H:%M") == series(write(tmp_path / "r.csv", iso()))


def test_the_sample_data_is_iso():
    settings = settings_for(REPO / "data" / "sample_users.csv")
    assert settings.data.time_format is None and len(task.load(settings).user_ids) > 0


# --- the config keys ----------------------------------------------------------------------


def small(**data) -> dict:
    raw = yaml.safe_load((REPO / "config" / "small.yaml").read_text())
    raw["data"].update(data)
    return raw


def test_the_hash_changes_only_when_a_time_key_is_set():
    base = parse_config(small()).hash
    assert parse_config(small(time_format=None, timezone=None)).hash == base
    hashes = {parse_config(small(time_format="%d/%m/%Y %H:%M")).hash, parse_config(small(timezone="UTC")).hash,
              parse_config(small(time_format="%m/%d/%Y %H:%M")).hash}
    assert len(hashes) == 3 and base not in hashes


@pytest.mark.parametrize("key, value, message", [
    ("time_format", "mixed", "strptime format"),
    ("time_format", "ISO8601", "strptime format"),
    ("time_format", "%Q", "strptime format"),
    ("time_format", 5, "must be str or null"),
    ("timezone", "Mars/Olympus", "IANA time zone"),
    ("timezone", "+02:00", "IANA time zone"),
])
def test_bad_time_keys_name_the_key(key, value, message):
    with pytest.raises(ConfigError, match=f"'data.{key}' .*{message}"):
        parse_config(small(**{key: value}))
