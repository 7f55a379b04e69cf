"""Observed past states: each length-k window of a symbol series relabelled to a dense integer id.

JIDT's dense calculators index the past of k symbols as the integer sum(x[t-k+i] * base^(k-1-i))
(oldest symbol most significant) and hold a table over all base^k of them. A series of N symbols
shows at most N - k of those pasts, so the analysis relabels the pasts it sees to ids 0..M-1 and
hands JIDT tables of M rows instead (measures.py).

The ids keep JIDT's order: id(a) < id(b) exactly when JIDT's integer of past a is smaller than that
of past b (both orders are the lexicographic order of the windows, oldest symbol first). That is what
makes the numbers identical, surrogates included: JIDT rebuilds the observations of a permutation test
from its count tables in index order, and with order-preserving ids it lists the same pasts in the
same order.

Built one k at a time: the window of length k at position j is the window of length k-1 at j
followed by x[j+k-1], so its code (id of the shorter window) * base + x[j+k-1] is below N * base
(never overflows int64, whatever base^k is), and ranking the codes gives the next ids.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

# Codes below this many times the series' length are ranked through a table of that size, in
# linear time; larger codes (long pasts of a big alphabet) through numpy.unique.
DIRECT_RANKING_FACTOR = 8


@dataclass(frozen=True)
class ObservedPasts:
    """The pasts of one (series, k): ids[t] is the past before observation t (position t + k)."""

    k: int
    ids: np.ndarray  # int32, length N - k, order-preserving dense ids
    id_range: int  # ids lie in 0..id_range-1 (the table size JIDT needs)
    distinct: int  # how many different pasts the observations have (id_range or one fewer)


def window_ids(symbols: np.ndarray, base: int, k_max: int) -> Iterator[tuple[int, np.ndarray]]:
    """(k, ids of every window of length k) for k = 1..k_max: N - k + 1 windows, order-preserving ids."""
    symbols = np.asarray(symbols, dtype=np.int64)
    if len(symbols) and (symbols.min() < 0 or symbols.max() >= base):
        raise ValueError(f"symbols must lie in 0..{base - 1}")
    ids = _dense(symbols)
    yield 1, ids
    for k in range(2, k_max + 1):
        if len(ids) < 2:
            return
        ids = _dense(ids[:-1] * base + symbols[k - 1:])
        yield k, ids


def observed_pasts(symbols: np.ndarray, base: int, ks: tuple[int, ...]) -> dict[int, ObservedPasts]:
    """The observed pasts of the series for every k of `ks` (each k < len(symbols))."""
    wanted = set(ks)
    found: dict[int, ObservedPasts] = {}
    for k, ids in window_ids(symbols, base, max(ks)):
        if k in wanted:
            found[k] = pasts_from_windows(k, ids)
    return found


def pasts_from_windows(k: int, windows: np.ndarray) -> ObservedPasts:
    """The pasts of observations 0..N-k-1 from the N-k+1 window ids: the last window has no next value."""
    ids = windows[:-1]
    if len(ids) == 0:
        return ObservedPasts(k=k, ids=ids.astype(np.int32), id_range=0, distinct=0)
    id_range = int(ids.max()) + 1
    # Every id up to the largest occurs among the windows; only the last window's can be missing here.
    gap = windows[-1] < id_range and not np.any(ids == windows[-1])
    return ObservedPasts(k=k, ids=ids.astype(np.int32), id_range=id_range, distinct=id_range - int(gap))


def _dense(codes: np.ndarray) -> np.ndarray:
    """Rank of each code among the distinct codes (0 = smallest): dense and order-preserving."""
    if len(codes) and codes.max() < DIRECT_RANKING_FACTOR * len(codes):
        # codes are small (always at k = 1, where they are the symbols): mark the codes present and
        # count them, without the sort inside numpy.unique
        present = np.zeros(int(codes.max()) + 1, dtype=np.int64)
        present[codes] = 1
        return (np.cumsum(present) - 1)[codes]
    return np.unique(codes, return_inverse=True)[1].astype(np.int64).reshape(-1)
