"""Symbolisation: one user's values and hours of day -> the integer series JIDT counts.

- quantile encoding: edges = numpy.quantile(values, [1/L, ..., (L-1)/L]) over that user's values
  (quantile_edges: numpy's linear method, computed here),
  symbol = numpy.searchsorted(edges, value, side="right"), in 0..L-1 (L = data.levels). Ties (for
  example many zero counts) can leave some symbols unused.
- categorical encoding: the user's distinct labels sorted as text, symbol = the label's index.
- The base is data.levels for every user, in both encodings. Unused symbols change no plug-in
  estimate (AIS, entropy, TE count only observed tuples); a base that depends on the data only
  would make the JIDT array sizes and the heap model (which see the config and n_obs, not the
  labels) differ per user. So with categorical encoding data.levels is the alphabet size: a user
  with more distinct labels is skipped with a reason telling to raise data.levels, never a crash.
- hour bin = floor(hour_of_day * hour_bins / 24).
- feature modes: activity = the value symbol (base L); composite = value_symbol * hour_bins +
  hour_bin (base L * hour_bins).
- te_hour's source is the hour-bin series (base hour_bins), its destination the value symbols (base L).
"""

from __future__ import annotations

import numpy as np

from shardrun.infodynamics.settings import Settings


class TooManyLabels(Exception):
    """A categorical user has more distinct labels than data.levels: that user is skipped, with this reason."""

    def __init__(self, distinct: int, levels: int):
        super().__init__(
            f"{distinct} distinct category labels but data.levels is {levels}; raise data.levels to at least"
            f" {distinct} to analyse this user"
        )


def value_symbols(values: np.ndarray, encoding: str, levels: int) -> np.ndarray:
    """Symbols 0..levels-1 of one user's values (int32, as JIDT's int[] needs)."""
    if encoding == "categorical":
        labels, symbols = np.unique(values.astype(str), return_inverse=True)
        if len(labels) > levels:
            raise TooManyLabels(len(labels), levels)
        return symbols.astype(np.int32)
    edges = quantile_edges(values, levels)
    return np.searchsorted(edges, values, side="right").astype(np.int32)


def quantile_edges(values: np.ndarray, levels: int) -> np.ndarray:
    """numpy.quantile(values, [1/L, ..., (L-1)/L]) (its default, "linear" method), value for value (a
    zero edge may carry the other sign, which no symbol can tell).

    The same order statistics and the same operations in the same order as numpy's own code (its
    _lerp: a + (b - a) * g, or b - (b - a) * (1 - g) where g >= 0.5), without its general machinery,
    which costs a small user more than the rest of its symbolisation. For finite values (missing and
    infinite values are dropped before symbolisation).
    """
    quantiles = np.arange(1, levels) / levels
    ordered = np.sort(values)
    position = (len(ordered) - 1) * quantiles
    below = np.floor(position)
    gamma = position - below
    index = below.astype(np.intp)
    lower, upper = ordered[index], ordered[np.minimum(index + 1, len(ordered) - 1)]
    step = upper - lower
    return np.where(gamma >= 0.5, upper - step * (1 - gamma), lower + step * gamma)


def hour_symbols(hours: np.ndarray, hour_bins: int) -> np.ndarray:
    return (np.asarray(hours, dtype=np.int64) * hour_bins // 24).astype(np.int32)


def mode_base(settings: Settings, mode: str) -> int:
    levels = settings.data.levels
    return levels * settings.hour_bins if mode == "composite" else levels


def mode_symbols(mode: str, values: np.ndarray, hours: np.ndarray, hour_bins: int) -> np.ndarray:
    """The series analysed in `mode`, from value symbols and hour-bin symbols."""
    if mode == "composite":
        return (values.astype(np.int32) * hour_bins + hours).astype(np.int32)
    return values.astype(np.int32)
