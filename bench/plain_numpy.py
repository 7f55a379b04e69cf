"""The default analysis as a plain numpy program, written the way a user without shardrun would: the
baseline that bench/engine.py and bench/scale.py time shardrun against.

    .venv/bin/python bench/plain_numpy.py --data users.csv --out results.csv [--k-grid 1,2] [--surrogates 5]

Per user, as config/proposal.yaml's analysis does it (both feature modes, activity of base 4 and
composite of base 4 x 6 hour bins): the plug-in entropy of the mode's symbols, AIS(k) for every k of
the grid with the mean of its permutation null, the k of the largest AIS - null mean (the smallest k
on ties), and te_hour at that k with its permutation null. Plug-in estimates over bincounts, with
numpy's own permutations: the same work as shardrun's analysis, the same entropy and AIS(k) to
rounding, but other nulls (other p-values and null means, so with several k another k may be
selected); with one k, the same te_hour too (bench/scale.py's overhead section checks that).

As a program it also does what shardrun's shard does around the analysis and a script must too:
start Python, read the CSV, group the rows by user in time order, write one results CSV. The users
are grouped over sorted arrays (one sort, then slices), not by a pandas group-by per user.
"""

from __future__ import annotations

import argparse
import csv
import sys
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd

LEVELS, HOUR_BINS = 4, 6
BASE = LEVELS * HOUR_BINS
MODES = (("activity", LEVELS), ("composite", BASE))


def window_codes(symbols: np.ndarray, base: int, k: int) -> np.ndarray:
    """Dense ids of the past before each of positions k..N-1 (np.unique of the windows' integer codes)."""
    codes = np.zeros(len(symbols) - k, dtype=np.int64)
    for i in range(k):
        codes = codes * base + symbols[i:len(symbols) - k + i]
    return np.unique(codes, return_inverse=True)[1].reshape(-1)


def entropy_of_counts(counts: np.ndarray, n: int) -> float:
    counts = counts[counts > 0]
    return float(np.log2(n) - np.dot(counts, np.log2(counts)) / n)


def plugin_mi(first: np.ndarray, second: np.ndarray, second_base: int) -> float:
    n = len(first)
    return (entropy_of_counts(np.bincount(first), n) + entropy_of_counts(np.bincount(second), n)
            - entropy_of_counts(np.bincount(first * second_base + second), n))


def numpy_ais(symbols: np.ndarray, base: int, k: int, surrogates: int, rng: np.random.Generator) -> tuple[float, float]:
    """AIS(k) and the mean of its permutation null."""
    past, nexts = window_codes(symbols, base, k), symbols[k:].astype(np.int64)
    value = plugin_mi(past, nexts, base)
    null = [plugin_mi(past, nexts[rng.permutation(len(nexts))], base) for _ in range(surrogates)]
    return value, float(np.mean(null))


def numpy_te(source: np.ndarray, dest: np.ndarray, k: int, surrogates: int,
             rng: np.random.Generator) -> tuple[float, float]:
    """TE from the hour bins to the value symbols at destination history k, and its permutation p-value."""
    past = window_codes(dest, LEVELS, k)
    src, nexts = source[k - 1:len(source) - 1].astype(np.int64), dest[k:].astype(np.int64)
    n = len(nexts)

    def cmi(s: np.ndarray) -> float:
        def h(codes: np.ndarray) -> float:
            return entropy_of_counts(np.bincount(codes), n)
        return h(past * HOUR_BINS + s) + h(past * LEVELS + nexts) - h(past) - h((past * HOUR_BINS + s) * LEVELS + nexts)

    value = cmi(src)
    null = np.array([cmi(src[rng.permutation(n)]) for _ in range(surrogates)])
    return value, float(np.mean(null >= value))


def analyse_symbols(values: np.ndarray, hour_bins: np.ndarray, ks: Iterable[int], surrogates: int,
                    rng: np.random.Generator) -> list[tuple]:
    """One user's rows from its value symbols (0..LEVELS-1) and hour bins (0..HOUR_BINS-1): per mode
    (mode, entropy, k_selected, AIS at it, te_hour, its p-value)."""
    rows = []
    for mode, base in MODES:
        symbols = (values * HOUR_BINS + hour_bins if mode == "composite" else values).astype(np.int64)
        entropy = entropy_of_counts(np.bincount(symbols), len(symbols))
        tests = {k: numpy_ais(symbols, base, k, surrogates, rng) for k in ks}
        k_selected = max(tests, key=lambda k: (tests[k][0] - tests[k][1], -k))
        te, te_p = numpy_te(hour_bins, values.astype(np.int64), k_selected, surrogates, rng)
        rows.append((mode, entropy, k_selected, tests[k_selected][0], te, te_p))
    return rows


def symbolise(values: np.ndarray, hours: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The user's quantile symbols (LEVELS bins of its own values) and its hour bins."""
    edges = np.quantile(values, np.arange(1, LEVELS) / LEVELS)
    return np.searchsorted(edges, values, side="right"), hours * HOUR_BINS // 24


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="CSV with user_id, timestamp, value")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--k-grid", default="1")
    parser.add_argument("--surrogates", type=int, default=5)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    ks = [int(k) for k in args.k_grid.split(",")]

    frame = pd.read_csv(args.data, dtype={"user_id": str})
    frame = frame[np.isfinite(frame["value"].to_numpy(dtype=float))]
    stamps = pd.to_datetime(frame["timestamp"])
    users, codes = np.unique(frame["user_id"].to_numpy(dtype=str), return_inverse=True)
    order = np.lexsort((stamps.to_numpy(), codes))
    codes = codes[order]
    values = frame["value"].to_numpy(dtype=float)[order]
    hours = stamps.dt.hour.to_numpy()[order]
    starts = np.flatnonzero(np.r_[True, codes[1:] != codes[:-1]])
    stops = np.r_[starts[1:], len(codes)]

    rng = np.random.default_rng(args.seed)
    with open(args.out, "w", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(["user_id", "feature_mode", "entropy_bits", "k_selected", "ais_bits", "te_hour_bits",
                         "te_hour_p"])
        for start, stop in zip(starts, stops):
            symbols, bins = symbolise(values[start:stop], hours[start:stop])
            for row in analyse_symbols(symbols, bins, ks, args.surrogates, rng):
                writer.writerow([users[codes[start]], *row])
    return 0


if __name__ == "__main__":
    sys.exit(main())
