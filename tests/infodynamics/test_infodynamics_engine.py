"""The engine over observed pasts against JIDT's dense calculators, and the documented permutations.

The regression contract of the observed-pasts engine: wherever the dense calculators run, AIS, its
null and p-value are theirs to the last bit, te_hour and its null agree to rounding (1e-12) with the
same p-value, and k_selected is the same, all with the same permutations. Real JVM, real JIDT jar.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from shardrun.infodynamics import states, surrogates, task
from shardrun.infodynamics.analysis import select_k
from shardrun.infodynamics.jarrays import ONE_CALL_ELEMENTS, java_int_matrix, java_ints
from shardrun.infodynamics.measures import te_test
from shardrun.infodynamics.states import observed_pasts, window_ids
from shardrun.infodynamics.surrogates import UserSurrogates, draw_in_jvm, surrogate_seed
from shardrun.infodynamics.symbols import hour_symbols, mode_symbols, quantile_edges, value_symbols
from shardrun.section import Section

from independent_estimator import java_shuffled_range
from jidt_reference import ais_test, dense_ais_test, dense_te_test, fixed_permutations
from test_infodynamics_analysis import as_merged

REPO = Path(__file__).resolve().parents[2]
SAMPLE = REPO / "data" / "sample_users.csv"


# --- observed pasts (pure) ------------------------------------------------------------------------


@pytest.mark.parametrize("base, k", [(2, 1), (3, 3), (5, 4), (24, 2)])
def test_past_ids_are_dense_and_in_jidts_order(base, k):
    symbols = np.random.default_rng(base + k).integers(0, base, 500)
    pasts = observed_pasts(symbols, base, (k,))[k]
    # JIDT's integer of the past before observation t: oldest symbol most significant
    codes = np.array([sum(int(symbols[t - k + i]) * base ** (k - 1 - i) for i in range(k)) for t in range(k, 500)])
    assert len(pasts.ids) == 500 - k
    assert np.array_equal(np.argsort(pasts.ids, kind="stable"), np.argsort(codes, kind="stable"))
    assert np.array_equal(pasts.ids[:, None] == pasts.ids[None, :], codes[:, None] == codes[None, :])
    assert pasts.distinct == len(set(codes.tolist())) and pasts.ids.max() < pasts.id_range <= pasts.distinct + 1


def test_long_histories_need_no_base_to_the_k():
    symbols = np.random.default_rng(1).integers(0, 24, 3000)
    found = observed_pasts(symbols, 24, (6, 16))  # 24^16 is far beyond any integer type
    for k in (6, 16):
        windows = {tuple(symbols[t - k:t]) for t in range(k, 3000)}
        assert found[k].distinct == len(windows) and found[k].ids.dtype == np.int32
    assert [k for k, _ in window_ids(symbols[:5], 24, 9)] == [1, 2, 3, 4, 5]  # stops at the series' length


@pytest.mark.parametrize("length, largest", [(500, 3), (500, 3999), (500, 4000), (300, 10**9), (1, 0)])
def test_ranking_codes_by_table_or_by_sort_gives_numpys_dense_ranks(length, largest):
    # codes below DIRECT_RANKING_FACTOR x length are ranked through a table, larger ones by numpy.unique
    codes = np.random.default_rng(length + largest).integers(0, largest + 1, length)
    expected = np.unique(codes, return_inverse=True)[1].reshape(-1)
    assert states._dense(codes).tolist() == expected.tolist()


@pytest.mark.parametrize("seed", range(6))
def test_quantile_edges_equal_numpys_quantiles(seed):
    rng = np.random.default_rng(seed)
    for _ in range(300):
        size, levels = int(rng.integers(1, 200)), int(rng.integers(2, 257))
        values = [rng.normal(size=size) * 10.0 ** rng.integers(-300, 300), rng.integers(0, 4, size).astype(float),
                  rng.exponential(size=size).round(1), rng.integers(-(2**62), 2**62, size)][seed % 4]
        expected = np.quantile(values, np.arange(1, levels) / levels)
        edges = quantile_edges(values, levels)
        assert edges.dtype == expected.dtype and np.array_equal(edges, expected)


# --- the permutations: the documented algorithm, drawn in the JVM ---------------------------------


@pytest.mark.usefixtures("jvm")
@pytest.mark.parametrize("java_seed, length", [(0, 1), (1, 2), (-7, 10), (2**63 - 1, 97), (-(2**63), 1000),
                                                (surrogate_seed(5, "ünïcode/../id", 3), 4096)])
def test_the_jvm_draws_the_documented_permutation(java_seed, length):
    assert draw_in_jvm(java_seed, length).tolist() == java_shuffled_range(java_seed, length)


@pytest.mark.parametrize("user_id", ["u", "", "ünïcode/../id", 'quote " and \\ back', "line\nbreak\u2028", "😀"])
def test_surrogate_seeds_are_the_documented_hash_of_the_json_text(user_id):
    for seed in (0, 1, -5, 2**62):
        texts = [json.dumps([seed, user_id, r], ensure_ascii=False).encode("utf-8") for r in range(7)]
        expected = [int.from_bytes(hashlib.sha256(text).digest()[:8], "big", signed=True) for text in texts]
        assert surrogates.surrogate_seeds(seed, user_id, range(7)) == expected
        assert [surrogate_seed(seed, user_id, r) for r in range(7)] == expected


@pytest.mark.usefixtures("jvm")
@pytest.mark.parametrize("shape", [(1, 1), (5, 47), (4, ONE_CALL_ELEMENTS // 4), (3, ONE_CALL_ELEMENTS // 3 + 1),
                                   (1, ONE_CALL_ELEMENTS + 1)])
def test_java_arrays_hold_the_values_by_either_path(shape):
    rows = np.random.default_rng(shape[1]).integers(-(2**31), 2**31, shape).astype(np.int32)
    matrix = java_int_matrix(rows)
    assert [list(row) for row in matrix] == rows.tolist()
    assert list(java_ints(rows.reshape(-1))) == rows.reshape(-1).tolist()


def test_a_smaller_test_keeps_the_order_of_the_smaller_values():
    base = np.array([[4, 0, 3, 1, 2], [2, 4, 1, 0, 3]])
    by_seed = {surrogate_seed(1, "u", r): base[r] for r in range(2)}
    user = UserSurrogates(1, "u", 2, 6, draw=lambda seed, length: by_seed[seed])
    assert user.rows(5).tolist() == base.tolist()
    assert user.rows(3).tolist() == [[0, 1, 2], [2, 1, 0]]
    assert user.rows(3, 1, 2).tolist() == [[2, 1, 0]]


# --- the same numbers as the dense calculators ----------------------------------------------------


def sample_series(user: str, hours_limit: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    frame = pd.read_csv(SAMPLE, dtype={"user_id": str})
    frame = frame[frame.user_id == user]
    if hours_limit:
        frame = frame.head(hours_limit)
    values = value_symbols(frame.value.to_numpy(dtype=float), "quantile", 4)
    return values, hour_symbols(pd.to_datetime(frame.timestamp).dt.hour.to_numpy(), 6)


def many_pasts_series(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Independent values at irregular hours: nearly every composite past of length >= 3 is new."""
    rng = np.random.default_rng(9)
    return rng.integers(0, 4, n).astype(np.int32), hour_symbols(rng.integers(0, 24, n), 6)


def assert_same_ais(observed, dense):
    assert observed.value == dense.value and np.array_equal(observed.null, dense.null)
    assert observed.null_mean == dense.null_mean and observed.p_value == dense.p_value


def assert_same_te(observed, dense):
    assert abs(observed.value - dense.value) < 1e-12 and np.max(np.abs(observed.null - dense.null)) < 1e-12
    assert observed.p_value == dense.p_value


@pytest.mark.usefixtures("jvm")
@pytest.mark.parametrize("series, ks, count", [
    (lambda: sample_series("u021"), (1, 2, 3, 4), 40),  # order 2: the sample user whose AIS grows with k
    (lambda: sample_series("u041"), (1, 2, 3), 100),
    (lambda: many_pasts_series(1200), (1, 2, 3, 4), 20),
])
def test_observed_pasts_give_the_dense_calculators_numbers(series, ks, count):
    values, hours = series()
    n = len(values)
    user = UserSurrogates(77, "user", count, n)
    for mode, base in (("activity", 4), ("composite", 24)):
        symbols = mode_symbols(mode, values, hours, 6)
        pasts = observed_pasts(symbols, base, ks)
        observed, dense = {}, {}
        for k in ks:
            permutations = user.rows(n - k)
            observed[k] = ais_test(symbols, base, pasts[k], user.batches)
            dense[k] = dense_ais_test(symbols, base, k, permutations)
            assert_same_ais(observed[k], dense[k])
        assert select_k(observed) == select_k(dense)
        k = select_k(observed)
        te = te_test(hours, values, 6, 4, observed_pasts(values, 4, (k,))[k], user.batches)
        assert_same_te(te, dense_te_test(hours, values, 6, k, user.rows(n - k)))


@pytest.mark.usefixtures("jvm")
def test_whole_rows_equal_a_dense_analysis_of_the_same_user(tmp_path):
    path = tmp_path / "d.csv"
    frame = pd.read_csv(SAMPLE, dtype={"user_id": str})
    frame[frame.user_id.isin(["u001", "u021"])].to_csv(path, index=False)
    top = Section({"data": {"path": str(path)}, "feature_modes": ["activity", "composite"],
                   "k_selection": {"k_grid": [1, 2, 3]}, "surrogates": 50, "seed": 11})
    settings = task.parse_settings(top)
    dataset = task.load(settings)
    for user_id in dataset.user_ids:
        series = dataset.series(user_id)
        values, hours = value_symbols(series.values, "quantile", 4), hour_symbols(series.hours, 6)
        n = len(values)
        user = UserSurrogates(11, user_id, 50, n)
        for row in task.analyse(dataset, user_id, settings):
            base = row["base"]
            symbols = mode_symbols(row["feature_mode"], values, hours, 6)
            dense = {k: dense_ais_test(symbols, base, k, user.rows(n - k)) for k in (1, 2, 3)}
            for k, test in dense.items():
                assert (row[f"ais_k{k}_bits"], row[f"ais_k{k}_null_mean_bits"], row[f"ais_k{k}_p"]) == (
                    test.value, test.null_mean, test.p_value)
            k = select_k(dense)
            te = dense_te_test(hours, values, 6, k, user.rows(n - k))
            assert row["k_selected"] == k and row["te_hour_p"] == te.p_value
            assert abs(row["te_hour_bits"] - te.value) < 1e-12


@pytest.mark.usefixtures("jvm")
def test_batching_changes_no_number(monkeypatch):
    values, hours = sample_series("u001")
    n = len(values)
    whole = UserSurrogates(3, "u", 30, n)
    pasts = observed_pasts(values, 4, (2,))[2]
    expected = ais_test(values, 4, pasts, whole.batches), te_test(hours, values, 6, 4, pasts, whole.batches)
    monkeypatch.setattr(surrogates, "PERMUTATION_BATCH_BYTES", 7 * 4 * n)  # 7 rows a batch: 5 batches
    split = UserSurrogates(3, "u", 30, n)
    got = ais_test(values, 4, pasts, split.batches), te_test(hours, values, 6, 4, pasts, split.batches)
    for a, b in zip(expected, got):
        assert a.value == b.value and np.array_equal(a.null, b.null) and a.p_value == b.p_value
    rows = split.rows(n - 2)
    one_by_one = ais_test(values, 4, pasts, fixed_permutations(*(row[None, :] for row in rows)))
    assert np.array_equal(one_by_one.null, expected[0].null)


@pytest.mark.usefixtures("jvm")
def test_k_far_beyond_the_dense_limit_runs(tmp_path):
    path = tmp_path / "d.csv"
    frame = pd.read_csv(SAMPLE, dtype={"user_id": str})
    frame[frame.user_id == "u021"].to_csv(path, index=False)
    top = Section({"data": {"path": str(path)}, "feature_modes": ["activity", "composite"],
                   "k_selection": {"k_grid": [1, 6, 10, 16]}, "surrogates": 20, "seed": 2})
    settings = task.parse_settings(top)
    rows = task.analyse(task.load(settings), "u021", settings)
    assert task.check_rows(as_merged(rows, settings), settings) == []
    for row in rows:
        assert row["status"] == "ok" and not any(math.isnan(row[f"ais_k{k}_bits"]) for k in (1, 6, 10, 16))
        # a past of 16 composite symbols is almost never seen twice: AIS nears the entropy of the next
        # symbol, and so does its permutation null, which is what bias correction is for
        assert row["ais_k16_null_mean_bits"] > 0.9 * row["ais_k16_bits"]


@pytest.mark.usefixtures("jvm")
def test_threads_change_no_number(tmp_path):
    from shardrun.infodynamics import heap
    from shardrun.infodynamics.measures import jvm_heap_bytes

    rng = np.random.default_rng(8)
    times = pd.date_range("2024-01-01", periods=12_000, freq="h").strftime("%Y-%m-%dT%H:%M:%S")
    pd.DataFrame({"user_id": "long", "timestamp": times, "value": rng.integers(0, 9, 12_000)}).to_csv(
        tmp_path / "d.csv", index=False)
    top = Section({"data": {"path": str(tmp_path / "d.csv")}, "feature_modes": ["activity", "composite"],
                   "k_selection": {"k_grid": [1, 2, 3, 4, 5, 6]}, "surrogates": 100, "seed": 4})
    one = task.parse_settings(top)
    two = task.with_threads(one, 2)
    assert heap.threads_that_fit(two, 12_000, jvm_heap_bytes()) == 2  # the test below really runs on two
    assert heap.threads_that_fit(two, 12_000, heap.heap_needs(one, np.array([12_000]))[0]) == 1  # heap for one
    dataset = task.load(one)
    assert task.analyse(dataset, "long", one) == task.analyse(dataset, "long", two)
