"""write_csv (results/frame.py) against pandas' writer, which wrote results.csv before it: for frames of
tricky values the new file reads back, by pandas and by Python's csv module, as pandas' file does; its
floats read back bit for bit; only the spelling of some floats differs, every other byte is the same."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from shardrun.results.frame import write_csv
from shardrun.results.read import read_result_file

TRICKY_FLOATS = [
    0.0, -0.0, 1.0, -1.0, 2.0, 0.1, 1 / 3, 0.30000000000000004, 123456.789, 1e-4, 1e-5, 1.5e-6, 1e-7, 1.23e-9,
    1e-10, 1e9, 1e10, 1.5e10, 1e14, 1e15, 1e15 + 2, 1e16, 1e22, 123456789012345678.0, 9007199254740993.0,
    5e-324, 2.2250738585072014e-308, 2.225073858507201e-308, 1.7976931348623157e308, -1.7976931348623157e308,
    math.nan, math.inf, -math.inf,
]
INTEGRAL_FLOATS = [0.0, -0.0, 1.0, -7.0, 100.0, 1e9, 1e10, 1e15, 1e16, 1e22, 2.0**53, -(2.0**63), math.nan]
TRICKY_TEXTS = [
    "a", 'say "hi"', '"', '""', "a,b", "cr\rhere", "lf\nhere", "crlf\r\n", "nul\0here", "", " ", "NA", "None",
    "nan", "007", "1e5", "True", "é ü 中文 😀", "trailing,", "x" * 5000, "\\", "tab\there", None,
]


def pandas_csv(frame: pd.DataFrame, path: Path) -> Path:
    """results.csv as write_csv wrote it before it was built on Arrow."""
    frame.to_csv(path, index=False, quoting=csv.QUOTE_NONNUMERIC, lineterminator="\n", encoding="utf-8")
    return path


def new_csv(frame: pd.DataFrame, path: Path, **options) -> Path:
    write_csv(frame, path, **options)
    return path


def cycled(values: list, rows: int) -> list:
    return [values[n % len(values)] for n in range(rows)]


def tricky_frame(rows: int = 60) -> pd.DataFrame:
    """Every kind of column the merge's frame has, with the values that are hard to write."""
    ints = [0, 1, -1, 2**63 - 1, -(2**63), 2**53 + 1, 10**18, -(10**15)]
    return pd.DataFrame({
        "user_id": cycled(TRICKY_TEXTS[:-1], rows),
        "text_with_missing": pd.Series(cycled(TRICKY_TEXTS + [math.nan], rows), dtype=object),
        "long_id": ["user-" + str(n) * 700 for n in range(rows)],
        "float": cycled(TRICKY_FLOATS, rows),
        "integral_float": cycled(INTEGRAL_FLOATS, rows),
        "small_floats": cycled([5e-324, 1e-320, 2.5e-310, 1e-300, -4e-320], rows),
        "int": np.array(cycled(ints, rows), dtype="int64"),
        "nullable_int": pd.array(cycled(ints + [None], rows), dtype="Int64"),
        "bool": np.array(cycled([True, False, False], rows), dtype=bool),
        "nullable_bool": pd.array(cycled([True, None, False], rows), dtype="boolean"),
        "all_null_float": np.full(rows, math.nan),
        "all_null_text": pd.Series([None] * rows, dtype=object),
        'quoted "name", with a comma': np.arange(rows, dtype="int64"),
        "pandas_str": pd.Series(cycled(["s", 'q"', None, ""], rows), dtype="str"),
    })


def float_columns(frame: pd.DataFrame) -> list[str]:
    return [c for c in frame.columns if frame[c].dtype == np.float64]


def csv_rows(path: Path) -> list[list[str]]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.reader(f))


def bits(values) -> np.ndarray:
    return np.asarray(values, dtype=np.float64).view(np.int64)


def assert_reads_back_like_pandas_file(frame: pd.DataFrame, tmp_path: Path) -> None:
    """pandas and the csv module read the new file as they read pandas' file (floats by value)."""
    new, old = new_csv(frame, tmp_path / "new.csv"), pandas_csv(frame, tmp_path / "old.csv")
    pd.testing.assert_frame_equal(pd.read_csv(new), pd.read_csv(old), check_exact=True)
    text = [c for c in frame.columns if frame[c].dtype in (object, "str")]
    pd.testing.assert_frame_equal(read_result_file(new, text), read_result_file(old, text), check_exact=True)

    new_rows, old_rows = csv_rows(new), csv_rows(old)
    assert len(new_rows) == len(old_rows) == len(frame) + 1
    assert new_rows[0] == old_rows[0] == list(frame.columns)
    floats = {frame.columns.get_loc(c) for c in float_columns(frame)}
    for new_row, old_row in zip(new_rows[1:], old_rows[1:]):
        assert len(new_row) == len(old_row) == len(frame.columns)
        for n, (new_field, old_field) in enumerate(zip(new_row, old_row)):
            if n in floats and old_field != "":
                assert bits(float(new_field)) == bits(float(old_field)), (frame.columns[n], new_field, old_field)
            else:
                assert new_field == old_field, (frame.columns[n], new_field, old_field)


def assert_floats_read_back_bit_for_bit(frame: pd.DataFrame, path: Path) -> None:
    """Every float of the frame reads back as the same double (-0.0 too), by Python and by pandas;
    NaN is a missing value; a column of integral floats still reads back as floats."""
    back = pd.read_csv(path)
    by_csv = csv_rows(path)
    for column in float_columns(frame):
        values = frame[column].to_numpy()
        missing = np.isnan(values)
        assert back[column].dtype == np.float64, column
        assert np.array_equal(np.isnan(back[column].to_numpy()), missing), column
        assert np.array_equal(bits(back[column].to_numpy()[~missing]), bits(values[~missing])), column
        n = frame.columns.get_loc(column)
        fields = [row[n] for row in by_csv[1:]]
        assert all(field == "" for field, m in zip(fields, missing) if m), column
        parsed = [float(field) for field, m in zip(fields, missing) if not m]
        assert np.array_equal(bits(parsed), bits(values[~missing])), column


# --- tests ----------------------------------------------------------------------------------


def test_tricky_values_read_back_as_pandas_file_reads_them(tmp_path):
    frame = tricky_frame()
    assert_reads_back_like_pandas_file(frame, tmp_path)
    assert_floats_read_back_bit_for_bit(frame, tmp_path / "new.csv")


@pytest.mark.parametrize("rows", [0, 1, 2])
def test_few_rows_and_all_null_columns(tmp_path, rows):
    frame = tricky_frame(rows)
    assert_reads_back_like_pandas_file(frame, tmp_path)
    assert new_csv(frame, tmp_path / "again.csv").read_bytes().count(b"\n") == rows + 1


def test_without_floats_the_bytes_are_pandas_bytes(tmp_path):
    frame = tricky_frame().drop(columns=float_columns(tricky_frame()))
    assert new_csv(frame, tmp_path / "new.csv").read_bytes() == pandas_csv(frame, tmp_path / "old.csv").read_bytes()


def test_the_fields_as_pandas_wrote_them(tmp_path):
    frame = pd.DataFrame({
        'a"b': ["x", 'q"u', "", None],
        "f": [2.0, -0.0, math.nan, -math.inf],
        "i": pd.array([1, None, -(2**63), 2**63 - 1], dtype="Int64"),
        "b": pd.array([True, False, None, True], dtype="boolean"),
    })
    assert new_csv(frame, tmp_path / "new.csv").read_text(encoding="utf-8") == (
        '"a""b","f","i","b"\n'
        '"x",2.0,1,True\n'
        '"q""u",-0.0,"",False\n'
        '"","",-9223372036854775808,""\n'
        '"",-inf,9223372036854775807,True\n'
    )


def test_one_column_of_missing_values_has_no_blank_line(tmp_path):
    frame = pd.DataFrame({"only": [math.nan, 1.5, math.nan]})
    path = new_csv(frame, tmp_path / "new.csv")
    assert path.read_bytes() == b'"only"\n""\n1.5\n""\n'
    pd.testing.assert_frame_equal(pd.read_csv(path), frame)


def test_a_random_sample_of_doubles_reads_back_bit_for_bit(tmp_path):
    """Doubles of every bit pattern (subnormals, NaNs and infinities among them), decimals of a few
    digits, integral doubles of every magnitude and their negatives."""
    rng = np.random.default_rng(20261202)
    rows = 100_000
    any_bits = rng.integers(0, 2**64, size=rows, dtype=np.uint64).view(np.float64)
    decimals = np.array([float(f"{digits}e{exponent}") for digits, exponent in
                         zip(rng.integers(-10**6, 10**6, rows), rng.integers(-330, 310, rows))])
    integral = np.trunc(rng.standard_normal(rows) * 10.0 ** rng.integers(0, 300, size=rows))
    frame = pd.DataFrame({"any_bits": any_bits, "decimals": decimals, "integral": integral,
                          "id": [f"u{n}" for n in range(rows)]})
    path = new_csv(frame, tmp_path / "new.csv")
    assert_floats_read_back_bit_for_bit(frame, path)
    pd.testing.assert_frame_equal(pd.read_csv(path), pd.read_csv(pandas_csv(frame, tmp_path / "old.csv")),
                                  check_exact=True)


def test_chunks_make_the_bytes_of_one_chunk(tmp_path):
    frame = pd.concat([tricky_frame()] * 50, ignore_index=True)  # 3000 rows
    whole = new_csv(frame, tmp_path / "whole.csv", chunk_rows=len(frame)).read_bytes()
    for rows in (1, 7, 1000, None):  # None: the default, CSV_CHUNK_CELLS cells
        assert new_csv(frame, tmp_path / f"chunks-{rows}.csv", chunk_rows=rows).read_bytes() == whole, rows


@pytest.mark.parametrize("other", [
    pd.Series([1, "a", 2.5, True, None], dtype=object),  # mixed Python values
    pd.to_datetime(["2025-01-01", None, "2025-01-02T03:04:05", None, "2025-01-03"], format="ISO8601"),
    pd.Series([1.5, 2.0, None, 1e-5, 3.25], dtype="float32"),
    pd.Series(["a", "b", None, "a", "c"], dtype="category"),
])
def test_a_column_of_another_kind_leaves_the_whole_frame_to_pandas(tmp_path, other):
    frame = pd.DataFrame({"id": ["a", "b", "c", "d", "e"], "f": [1e-5, 2.0, 1e15, math.nan, 0.5], "other": other})
    assert new_csv(frame, tmp_path / "new.csv").read_bytes() == pandas_csv(frame, tmp_path / "old.csv").read_bytes()


def test_names_that_are_not_text_leave_the_frame_to_pandas(tmp_path):
    for frame in (pd.DataFrame({1: [2.0], "x": ["y"]}), pd.DataFrame(), pd.DataFrame(index=range(3))):
        assert new_csv(frame, tmp_path / "new.csv").read_bytes() == pandas_csv(frame, tmp_path / "old.csv").read_bytes()
