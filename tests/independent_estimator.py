"""An independent plug-in estimator (numpy and collections, no JIDT) of what the default analysis computes.

Used by the numeric tests and by the end-to-end tests, which compare a whole pipeline run against it.
The permutations are rebuilt here from the documented algorithm (shardrun/infodynamics/surrogates.py):
java.util.Random as the Java SE specification defines it, Collections.shuffle as its documentation
describes it, the per-surrogate seed, and the derivation for a test of m observations. The
permutation nulls rebuild JIDT's documented surrogate construction from them.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
from collections import Counter

import numpy as np


class JavaRandom:
    """java.util.Random: the 48-bit linear congruential generator of the Java SE specification."""

    MULTIPLIER, ADDEND, MASK = 0x5DEECE66D, 0xB, (1 << 48) - 1

    def __init__(self, seed: int):
        self.state = (seed ^ self.MULTIPLIER) & self.MASK

    def next_bits(self, bits: int) -> int:
        self.state = (self.state * self.MULTIPLIER + self.ADDEND) & self.MASK
        return self.state >> (48 - bits)

    def next_int(self, bound: int) -> int:
        r = self.next_bits(31)
        if bound & (bound - 1) == 0:
            return (bound * r) >> 31
        u = r
        while u - (u % bound) + bound - 1 >= 2**31:  # Java's int overflow test: reject and draw again
            u = self.next_bits(31)
        return u % bound


def java_shuffled_range(seed: int, length: int) -> list[int]:
    """Collections.shuffle(0..length-1, new Random(seed)): from the last position down to the second,
    swap in the element at random.nextInt(i)."""
    values = list(range(length))
    random = JavaRandom(seed)
    for i in range(length, 1, -1):
        j = random.next_int(i)
        values[i - 1], values[j] = values[j], values[i - 1]
    return values


@functools.lru_cache(maxsize=64)
def base_permutations(seed: int, user: str, count: int, n_obs: int) -> np.ndarray:
    """The documented base permutations of a user: one per surrogate, of 0..n_obs-2."""
    rows = []
    for r in range(count):
        key = json.dumps([seed, user, r], ensure_ascii=False).encode("utf-8")
        java_seed = int.from_bytes(hashlib.sha256(key).digest()[:8], "big", signed=True)
        rows.append(java_shuffled_range(java_seed, n_obs - 1))
    return np.array(rows, dtype=np.int64)


def user_permutations(seed: int, user: str, count: int, observations: int, n_obs: int) -> np.ndarray:
    """The documented surrogates of a test of `observations` observations of a user with n_obs in all:
    each base permutation with the values >= observations left out."""
    return np.array([[v for v in row if v < observations] for row in base_permutations(seed, user, count, n_obs)])



def plugin_entropy(symbols) -> float:
    counts = Counter(np.asarray(symbols).tolist())
    n = sum(counts.values())
    return -sum(c / n * math.log2(c / n) for c in counts.values())


def plugin_mi(first, second) -> float:
    first, second = list(first), list(second)
    n = len(first)
    joint, a, b = Counter(zip(first, second)), Counter(first), Counter(second)
    return sum(c / n * math.log2(c * n / (a[x] * b[y])) for (x, y), c in joint.items())


def plugin_cmi(first, second, given) -> float:
    """I(first; second | given) from counts."""
    first, second, given = list(first), list(second), list(given)
    n = len(first)
    xyz = Counter(zip(first, second, given))
    xz, yz, z = Counter(zip(first, given)), Counter(zip(second, given)), Counter(given)
    return sum(c / n * math.log2(c * z[g] / (xz[(x, g)] * yz[(y, g)])) for (x, y, g), c in xyz.items())


def pasts(symbols, k) -> list[tuple]:
    """The k values before each of positions k..N-1, oldest first."""
    s = list(np.asarray(symbols).tolist())
    return [tuple(s[t - k:t]) for t in range(k, len(s))]


def plugin_ais(symbols, k) -> float:
    return plugin_mi(pasts(symbols, k), list(np.asarray(symbols)[k:]))


def plugin_ais_null(symbols, k, permutations) -> list[float]:
    """JIDT's AIS surrogates: past states sorted, next values sorted, next reordered by each permutation."""
    past = sorted(pasts(symbols, k))  # tuple order = JIDT's integer past-state order
    nxt = sorted(np.asarray(symbols)[k:].tolist())
    return [plugin_mi(past, [nxt[i] for i in perm]) for perm in permutations]


def plugin_te(source, dest, k) -> float:
    """TE source -> dest, destination history k, source history 1, delay 1."""
    return plugin_cmi(list(np.asarray(source)[k - 1:-1]), list(np.asarray(dest)[k:]), pasts(dest, k))


def plugin_te_null(source, dest, k, permutations) -> list[float]:
    """JIDT's TE surrogates: sources sorted against (past, next) tuples sorted by past then next."""
    sources = sorted(np.asarray(source)[k - 1:-1].tolist())
    tuples = sorted(zip(pasts(dest, k), np.asarray(dest)[k:].tolist()))
    past, nxt = [p for p, _ in tuples], [d for _, d in tuples]
    return [plugin_cmi([sources[i] for i in perm], nxt, past) for perm in permutations]


def p_value(null, value) -> float:
    """The permutation p-value (b + 1) / (S + 1) of Phipson & Smyth (2010): the observed value counted as
    one more draw of the null. Asserts no surrogate is within rounding of the value, where >= could flip."""
    null = np.asarray(null)
    assert not np.any(np.abs(null - value) < 1e-9), "a surrogate ties the value: pick other test data"
    at_or_above = sum(1 for surrogate in null.tolist() if surrogate >= value)
    return (at_or_above + 1) / (len(null) + 1)


def brute_force_q(p_values) -> list[float]:
    """BH's adjusted p-value by its definition, O(m^2): q_i = min over the p_j >= p_i of p_j * m / rank_j,
    rank_j the number of p-values <= p_j (ties share the highest rank), at most 1; NaN is no test."""
    tested = [p for p in p_values if not math.isnan(p)]
    m = len(tested)
    q_values = []
    for p in p_values:
        if math.isnan(p):
            q_values.append(math.nan)
            continue
        candidates = [other * m / sum(1 for x in tested if x <= other) for other in tested if other >= p]
        q_values.append(min(1.0, min(candidates)))
    return q_values


def expected_mode_row(values, hour_bins_series, mode: str, levels: int, hour_bins: int, ks, surrogates: int,
                      seed: int, user: str) -> dict:
    """The numbers of one (user, mode) row, computed independently: entropy, AIS per k, selection, TE."""
    values = np.asarray(values)
    hour_bins_series = np.asarray(hour_bins_series)
    symbols = values if mode == "activity" else values * hour_bins + hour_bins_series
    row = {"n_obs": len(symbols), "entropy_bits": plugin_entropy(symbols)}
    corrected = {}
    n = len(symbols)
    for k in ks:
        ais = plugin_ais(symbols, k)
        null = plugin_ais_null(symbols, k, user_permutations(seed, user, surrogates, n - k, n))
        row.update({f"ais_k{k}_bits": ais, f"ais_k{k}_null_mean_bits": float(np.mean(null)),
                    f"ais_k{k}_p": p_value(null, ais)})
        corrected[k] = ais - np.mean(null)
    k_selected = max(corrected, key=lambda k: (corrected[k], -k))
    te = plugin_te(hour_bins_series, values, k_selected)
    te_null = plugin_te_null(hour_bins_series, values, k_selected,
                             user_permutations(seed, user, surrogates, n - k_selected, n))
    row.update(k_selected=k_selected, ais_bits=row[f"ais_k{k_selected}_bits"], te_hour_bits=te,
               te_hour_p=p_value(te_null, te))
    return row


def assert_row_matches(row, expected: dict, tol: float = 1e-9) -> None:
    """Counts and p-values exactly, bits to `tol`."""
    for column, value in expected.items():
        if column.endswith("_bits"):
            assert abs(row[column] - value) < tol, (column, row[column], value)
        else:
            assert row[column] == value, (column, row[column], value)
