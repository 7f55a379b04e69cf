"""The numbers: JIDT (real JVM, real jar) against closed forms and an independent plug-in estimator.

(a) Closed form: symbol sequences whose empirical (past, next) distribution equals a Markov chain's
    stationary joint distribution exactly: an Eulerian circuit over a multigraph whose edge
    multiplicities are proportional to the joint probabilities (states for order 1, pairs of
    symbols, de Bruijn style, for order 2). AIS must equal the closed form to 1e-9.
(b) An estimator written here with numpy and collections (no JIDT) for entropy, AIS(k), TE and the
    permutation nulls, the latter rebuilt from JIDT's documented surrogate construction with the
    same seeded permutations, on random data and through the whole pipeline on categorical data
    with timestamps.
"""

from __future__ import annotations

import math
from collections import Counter
from fractions import Fraction
from itertools import product
from math import lcm
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from shardrun.infodynamics import task
from shardrun.infodynamics.jarrays import java_ints
from shardrun.infodynamics.measures import entropy_bits, permutation_p_value, te_test
from shardrun.infodynamics.states import observed_pasts
from shardrun.infodynamics.surrogates import UserSurrogates
from shardrun.section import Section

from independent_estimator import (
    assert_row_matches,
    expected_mode_row,
    p_value,
    plugin_ais,
    plugin_ais_null,
    plugin_entropy,
    plugin_te,
    plugin_te_null,
    user_permutations,
)
from jidt_reference import ais_test, fixed_permutations

pytestmark = pytest.mark.usefixtures("jvm")

TOL = 1e-9


def ais(symbols, base, k, permutations):
    return ais_test(symbols, base, observed_pasts(symbols, base, (k,))[k], permutations)


def identity(n):
    return np.arange(n, dtype=np.int32)[None, :]


# --- (a) closed forms via Eulerian circuits ------------------------------------------------------


def stationary(matrix: dict) -> dict:
    """Stationary distribution of a finite chain {state: {next_state: Fraction}} (exact)."""
    states = sorted(matrix)
    index = {s: i for i, s in enumerate(states)}
    n = len(states)
    # (P^T - I) pi = 0 with the last equation replaced by sum(pi) = 1.
    rows = [[(matrix[states[j]].get(states[i], Fraction(0))) - (1 if i == j else 0) for j in range(n)] + [Fraction(0)]
            for i in range(n)]
    rows[-1] = [Fraction(1)] * n + [Fraction(1)]
    for col in range(n):
        pivot = next(r for r in range(col, n) if rows[r][col] != 0)
        rows[col], rows[pivot] = rows[pivot], rows[col]
        rows[col] = [v / rows[col][col] for v in rows[col]]
        for r in range(n):
            if r != col and rows[r][col] != 0:
                rows[r] = [a - rows[r][col] * b for a, b in zip(rows[r], rows[col])]
    return {s: rows[index[s]][-1] for s in states}


def eulerian_circuit(edges: Counter) -> list:
    """Vertices of an Eulerian circuit of a balanced, connected directed multigraph (Hierholzer)."""
    remaining = {}
    for (start, end), count in sorted(edges.items()):
        remaining.setdefault(start, []).extend([end] * count)
    stack, circuit = [min(remaining)], []
    while stack:
        vertex = stack[-1]
        if remaining.get(vertex):
            stack.append(remaining[vertex].pop())
        else:
            circuit.append(stack.pop())
    circuit.reverse()
    assert len(circuit) == sum(edges.values()) + 1
    return circuit


def exact_multiplicities(joint: dict) -> Counter:
    scale = lcm(*(p.denominator for p in joint.values()))
    return Counter({edge: int(p * scale) for edge, p in joint.items() if p})


ORDER1 = {  # a 3-state chain with rational transitions
    0: {0: Fraction(1, 2), 1: Fraction(1, 4), 2: Fraction(1, 4)},
    1: {0: Fraction(1, 3), 1: Fraction(1, 3), 2: Fraction(1, 3)},
    2: {0: Fraction(1, 8), 1: Fraction(1, 8), 2: Fraction(3, 4)},
}
ORDER2 = {  # P(c | a, b) on 2 symbols: the value two steps back tends to return
    (a, b): {c: (Fraction(4, 5) if c == a else Fraction(1, 5)) if (a, b) != (1, 1) else Fraction(1, 2) for c in (0, 1)}
    for a, b in product((0, 1), repeat=2)
}


def order1_sequence() -> tuple[list[int], float]:
    pi = stationary(ORDER1)
    joint = {(i, j): pi[i] * ORDER1[i][j] for i in ORDER1 for j in ORDER1[i]}
    closed_form = sum(float(p) * math.log2(float(ORDER1[i][j] / pi[j])) for (i, j), p in joint.items())
    return eulerian_circuit(exact_multiplicities(joint)), closed_form


def test_ais_k1_of_an_order1_chain_equals_the_closed_form():
    sequence, closed_form = order1_sequence()
    result = ais(np.array(sequence, dtype=np.int32), 3, 1, fixed_permutations(identity(len(sequence) - 1)))
    assert abs(result.value - closed_form) < TOL
    assert closed_form > 0.05  # not a trivial zero


def test_ais_k2_of_an_order1_chain_equals_ais_k1():
    """Markov property: an order-1 chain stores nothing more at k=2, exactly."""
    pi = stationary(ORDER1)
    joint = {((a, b), (b, c)): pi[a] * ORDER1[a][b] * ORDER1[b][c] for a in ORDER1 for b in ORDER1 for c in ORDER1}
    pairs = eulerian_circuit(exact_multiplicities(joint))
    sequence = [pairs[0][0]] + [pair[1] for pair in pairs[:-1]] + [pairs[-1][1]]
    _, closed_form = order1_sequence()
    result = ais(np.array(sequence, dtype=np.int32), 3, 2, fixed_permutations(identity(len(sequence) - 2)))
    assert abs(result.value - closed_form) < TOL


def test_ais_k2_of_an_order2_chain_equals_the_closed_form():
    # The pair chain (a, b) -> (b, c) and its stationary distribution over pairs.
    pair_chain = {(a, b): {(b, c): p for c, p in ORDER2[(a, b)].items()} for a, b in ORDER2}
    pi = stationary(pair_chain)
    joint = {((a, b), (b, c)): pi[(a, b)] * p for (a, b), row in ORDER2.items() for c, p in row.items()}
    marginal = {c: sum(p for ((_, _), (_, cc)), p in joint.items() if cc == c) for c in (0, 1)}
    closed_form = sum(
        float(p) * math.log2(float(ORDER2[(a, b)][c] / marginal[c])) for ((a, b), (_, c)), p in joint.items()
    )
    pairs = eulerian_circuit(exact_multiplicities(joint))
    sequence = [pairs[0][0]] + [pair[1] for pair in pairs]  # a0, then b of every pair visited
    result = ais(np.array(sequence, dtype=np.int32), 2, 2, fixed_permutations(identity(len(sequence) - 2)))
    assert abs(result.value - closed_form) < TOL
    assert closed_form > 0.1


# --- (b) the independent estimator on random data ----------------------------------------------


@pytest.mark.parametrize("base, k", [(2, 1), (4, 2), (5, 3), (24, 1)])
def test_entropy_ais_and_null_match_the_independent_estimator(base, k):
    rng = np.random.default_rng(base * 10 + k)
    # A sticky chain, so AIS is clearly above its null and no surrogate ties it.
    symbols = np.empty(400, dtype=np.int32)
    symbols[0] = 0
    for t in range(1, len(symbols)):
        symbols[t] = symbols[t - 1] if rng.random() < 0.6 else rng.integers(0, base)
    surrogates = UserSurrogates(11, "user", 40, len(symbols))
    result = ais(symbols, base, k, surrogates.batches)
    permutations = user_permutations(11, "user", 40, len(symbols) - k, len(symbols))
    null = plugin_ais_null(symbols, k, permutations)

    assert abs(entropy_bits(symbols, base) - plugin_entropy(symbols)) < TOL
    assert abs(result.value - plugin_ais(symbols, k)) < TOL
    assert np.max(np.abs(result.null - np.array(null))) < TOL
    assert abs(result.null_mean - float(np.mean(null))) < TOL
    assert result.p_value == p_value(null, plugin_ais(symbols, k))


def test_null_batches_combine_exactly():
    symbols = np.random.default_rng(3).integers(0, 4, 300).astype(np.int32)
    permutations = UserSurrogates(5, "u", 30, 300).rows(298)
    whole = ais(symbols, 4, 2, fixed_permutations(permutations))
    one_by_one = ais(symbols, 4, 2, fixed_permutations(*(row[None, :] for row in permutations)))
    uneven = ais(symbols, 4, 2, fixed_permutations(permutations[:7], permutations[7:]))
    for other in (one_by_one, uneven):
        assert other.value == whole.value and other.null_mean == whole.null_mean and other.p_value == whole.p_value
        assert np.array_equal(other.null, whole.null)


@pytest.mark.parametrize("k", [1, 2, 3])
def test_te_and_its_null_match_the_independent_estimator(k):
    rng = np.random.default_rng(k)
    n = 500
    hours = (np.arange(n) % 24 * 6 // 24).astype(np.int32)  # hour bins 0..5 in time order
    # The destination copies the previous hour bin (mod 4) half of the time: TE clearly > 0.
    dest = rng.integers(0, 4, n).astype(np.int32)
    copy = rng.random(n) < 0.5
    dest[1:][copy[1:]] = hours[:-1][copy[1:]] % 4
    result = te_test(hours, dest, 6, 4, observed_pasts(dest, 4, (k,))[k], UserSurrogates(12, "user", 30, n).batches)
    null = plugin_te_null(hours, dest, k, user_permutations(12, "user", 30, n - k, n))
    expected = plugin_te(hours, dest, k)
    assert abs(result.value - expected) < TOL and expected > 0.05
    assert np.max(np.abs(result.null - np.array(null))) < TOL
    assert result.p_value == p_value(null, expected)
    # never 0: where no surrogate reaches the value (k = 1 here), the smallest p 30 surrogates give
    assert result.p_value >= 1 / 31
    if k == 1:
        assert max(null) < expected and result.p_value == 1 / 31


def test_a_permutation_p_value_counts_the_observed_value_as_one_draw_of_the_null():
    null = np.array([0.1, 0.2, 0.3, 0.4])
    assert permutation_p_value(null, 0.5) == 1 / 5  # none at or above: 1 / (S + 1), never 0
    assert permutation_p_value(null, 0.3) == 3 / 5  # a tie counts as at or above
    assert permutation_p_value(null, 0.0) == 1.0  # all at or above
    assert permutation_p_value(np.array([0.0]), 1.0) == 0.5


def test_int64_symbols_are_checked_not_wrapped():
    assert list(java_ints(np.array([1, 2], dtype=np.int64))) == [1, 2]
    with pytest.raises(ValueError, match="Java int range"):
        java_ints(np.array([2**32 + 1], dtype=np.int64))


# --- (b) through the whole pipeline: categorical labels with timestamps ---------------------------


LABELS = ["idle", "run", "sleep", "walk"]


def write_categorical(path: Path) -> None:
    rng = np.random.default_rng(99)
    rows = []
    for user, length in (("ann", 300), ("bob", 260)):
        start = pd.Timestamp("2025-06-01T00:00:00")
        # Irregular spacing (20-100 minutes) so hours of day vary; shuffled file order.
        times = start + pd.to_timedelta(np.cumsum(rng.integers(20, 100, length)), unit="min")
        state = 0
        for time in times:
            if rng.random() < (0.3 if 8 <= time.hour < 20 else 0.1):
                state = int(rng.integers(0, len(LABELS)))
            rows.append((user, time.strftime("%Y-%m-%dT%H:%M:%S+02:00"), LABELS[state]))
    order = rng.permutation(len(rows))
    pd.DataFrame([rows[i] for i in order], columns=["who", "when", "what"]).to_csv(path, index=False)


def test_pipeline_on_categorical_data_matches_the_independent_estimator(tmp_path):
    path = tmp_path / "labels.csv"
    write_categorical(path)
    top = Section({
        "data": {"path": str(path), "user_column": "who", "time_column": "when", "value_column": "what",
                 "encoding": "categorical", "levels": 4},
        "hour_bins": 4, "feature_modes": ["activity", "composite"],
        "k_selection": {"k_grid": [1, 2, 3]}, "surrogates": 25, "seed": 5,
    })
    settings = task.parse_settings(top)
    top.finish()
    dataset = task.load(settings)

    raw = pd.read_csv(path)
    for user in ("ann", "bob"):
        rows = {row["feature_mode"]: row for row in task.analyse(dataset, user, settings)}
        mine = raw[raw.who == user].sort_values("when")  # one offset, so text order is time order
        labels = sorted(set(mine.what))
        values = np.array([labels.index(v) for v in mine.what], dtype=np.int32)
        hour_bins = np.array([int(w[11:13]) * 4 // 24 for w in mine.when], dtype=np.int32)
        for mode, base in (("activity", 4), ("composite", 16)):
            row = rows[mode]
            assert row["status"] == "ok" and row["reason"] == "" and row["base"] == base
            assert_row_matches(row, expected_mode_row(values, hour_bins, mode, 4, 4, (1, 2, 3), 25, 5, user))
