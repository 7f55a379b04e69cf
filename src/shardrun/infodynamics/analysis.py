"""One user's result rows: one per feature mode, with the columns of `row_columns` (the result columns
but the q-values, which depend on the whole set: fdr.py).

Columns: user_id, feature_mode, status (ok | skipped | failed), reason, n_obs, base, entropy_bits,
k_selected, ais_bits, then per k of the grid (after k_max) ais_k<k>_bits, ais_k<k>_null_mean_bits,
ais_k<k>_p, then te_hour_bits, te_hour_p, then what loading did to the user's rows (cleaning.py):
n_dropped, dropped_reason, n_out_of_order, n_duplicate_timestamps, n_merged_rows, n_empty_bins, the
same in the rows of every mode, ok or skipped (a failed row leaves them NaN: the core records a failure
without the series). Missing numbers are NaN; values are plain int/float/str.

- n_obs: symbols in the user's series (after dropping missing values and resampling); base: the
  mode's alphabet (symbols.py). entropy_bits: plug-in entropy of the mode's series over all n_obs.
- ais_k<k>_*: AIS(k) over the n_obs - k (past, next) pairs, the mean of its permutation null and
  the permutation p-value. k_selected: the k with the largest bias-corrected AIS (AIS - null mean),
  the smallest such k on ties; ais_bits: AIS at k_selected.
- te_hour_*: TE from the hour-bin series to the value-symbol series, destination history k_selected.
  It depends on the mode only through k_selected (the permutations are the user's, surrogates.py),
  so both modes selecting the same k share one computation.
- Skipped rows carry n_obs and base only: too few observations (fewer than
  max(data.min_observations, largest k + 2)), more category labels than data.levels, or every k
  removed by the undersampling guard. An ok row whose guard removed some k has NaN for those k and
  a reason naming them; otherwise the reason of an ok row is "".
- The undersampling guard (k_selection.undersampling_guard) keeps a k for a (user, mode) only if
  n_obs - k >= base * M_k, where M_k is the number of distinct pasts of length k the series shows:
  on average at least one observation per cell of the (observed past, next symbol) table that AIS
  is estimated from. (The dense calculators' rule n_obs - k >= base^(k+1) counted every possible
  past; M_k <= base^k, so this guard never drops a k the old one kept.)
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from shardrun.infodynamics import heap
from shardrun.infodynamics.cleaning import CLEANING_COLUMNS
from shardrun.infodynamics.data import Dataset, UserSeries
from shardrun.infodynamics.jvm_threads import JvmThreads
from shardrun.infodynamics.measures import (
    NullTest,
    ais_tests,
    entropy_bits,
    heap_exhaustion_as_heap_too_small,
    jvm_heap_bytes,
    te_test,
)
from shardrun.infodynamics.settings import Settings, minimum_observations
from shardrun.infodynamics.states import ObservedPasts, observed_pasts
from shardrun.infodynamics.surrogates import UserSurrogates
from shardrun.infodynamics.symbols import TooManyLabels, hour_symbols, mode_base, mode_symbols, value_symbols

log = logging.getLogger(__name__)

NAN = float("nan")
LEADING_COLUMNS = (
    "user_id", "feature_mode", "status", "reason", "n_obs", "base", "entropy_bits", "k_selected", "ais_bits",
)
TRAILING_COLUMNS = ("te_hour_bits", "te_hour_p")


def ais_columns(k: int) -> tuple[str, str, str]:
    return f"ais_k{k}_bits", f"ais_k{k}_null_mean_bits", f"ais_k{k}_p"


def row_columns(settings: Settings) -> list[str]:
    """The columns of a user's rows, in order: the result columns but the q-values."""
    columns = list(LEADING_COLUMNS)
    for k in settings.k_selection.ks:
        columns.extend(ais_columns(k))
    return columns + list(TRAILING_COLUMNS) + list(CLEANING_COLUMNS)


def p_columns(settings: Settings) -> list[str]:
    """The p-value columns: ais_k<k>_p for every k of the grid, then te_hour_p."""
    return [ais_columns(k)[2] for k in settings.k_selection.ks] + ["te_hour_p"]


def q_column(p_column: str) -> str:
    """The q-value column of a p-value column: ais_k1_p -> ais_k1_q."""
    return p_column.removesuffix("_p") + "_q"


def result_columns(settings: Settings) -> list[str]:
    """The result set's columns: a user's row columns, each p-value followed by its q-value, which the
    merge adds over the whole set (fdr.set_columns)."""
    p_values = set(p_columns(settings))
    return [name for column in row_columns(settings)
            for name in ((column, q_column(column)) if column in p_values else (column,))]


def guard_allows(n_obs: int, base: int, pasts: ObservedPasts) -> bool:
    """The undersampling guard: at least one observation per cell of the (observed past, next) table."""
    return n_obs - pasts.k >= base * pasts.distinct


def _row(settings: Settings, user_id: str, mode: str, status: str, reason: str) -> dict[str, Any]:
    row: dict[str, Any] = {column: NAN for column in row_columns(settings)}
    row.update(user_id=user_id, feature_mode=mode, status=status, reason=reason)
    return row


def failed_rows(settings: Settings, user_id: str, reason: str) -> list[Mapping[str, Any]]:
    return [_row(settings, user_id, mode, "failed", reason) for mode in settings.feature_modes]


def _skipped_row(settings: Settings, user_id: str, mode: str, n_obs: int, reason: str) -> dict[str, Any]:
    row = _row(settings, user_id, mode, "skipped", reason)
    row.update(n_obs=n_obs, base=mode_base(settings, mode))
    return row


def _skipped_rows(settings: Settings, user_id: str, n_obs: int, reason: str) -> list[dict[str, Any]]:
    return [_skipped_row(settings, user_id, mode, n_obs, reason) for mode in settings.feature_modes]


def analyse_user(dataset: Dataset, user_id: str, settings: Settings) -> list[Mapping[str, Any]]:
    series = dataset.series(user_id)
    cleaning = series.cleaning.columns()
    return [{**row, **cleaning} for row in _series_rows(series, settings)]


def _series_rows(series: UserSeries, settings: Settings) -> list[dict[str, Any]]:
    user_id = series.user_id
    needed = minimum_observations(settings)
    if series.n_obs < needed:
        reason = (
            f"only {series.n_obs} observations; needs at least {needed} (data.min_observations"
            f" {settings.data.min_observations}, largest k + 2 = {max(settings.k_selection.ks) + 2})"
        )
        return _skipped_rows(settings, user_id, series.n_obs, reason)
    try:
        values = value_symbols(series.values, settings.data.encoding, settings.data.levels)
    except TooManyLabels as exc:
        return _skipped_rows(settings, user_id, series.n_obs, str(exc))
    hours = hour_symbols(series.hours, settings.hour_bins)
    return _UserAnalysis(settings, user_id, values, hours).rows()


class _UserAnalysis:
    """One user's tests, k by k: both modes' AIS at a k take their surrogates from the same batches."""

    def __init__(self, settings: Settings, user_id: str, values: np.ndarray, hours: np.ndarray):
        self.settings, self.user_id, self.values, self.hours = settings, user_id, values, hours
        self.n_obs = len(values)
        self.threads = JvmThreads(heap.threads_that_fit(settings, self.n_obs, jvm_heap_bytes())
                                  if settings.threads > 1 else 1)
        self.surrogates = UserSurrogates(settings.seed, user_id, settings.surrogates, self.n_obs,
                                         threads=self.threads)
        ks = settings.k_selection.ks
        self.symbols = {mode: mode_symbols(mode, values, hours, settings.hour_bins) for mode in settings.feature_modes}
        self.pasts = {mode: observed_pasts(self.symbols[mode], mode_base(settings, mode), ks)
                      for mode in settings.feature_modes}
        self._value_pasts: dict[int, ObservedPasts] | None = None
        self._te: dict[int, NullTest] = {}

    def rows(self) -> list[dict[str, Any]]:
        settings = self.settings
        ks = settings.k_selection.ks
        guarded = {mode: [k for k in ks if settings.k_selection.undersampling_guard
                          and not guard_allows(self.n_obs, mode_base(settings, mode), self.pasts[mode][k])]
                   for mode in settings.feature_modes}
        tests: dict[str, dict[int, NullTest]] = {mode: {} for mode in settings.feature_modes}
        if any(len(guarded[mode]) < len(ks) for mode in settings.feature_modes):
            self.surrogates.base()  # drawn before any calculator exists, as the heap model counts
        for k in ks:
            modes = [mode for mode in settings.feature_modes if k not in guarded[mode]]
            if modes:
                for mode, test in zip(modes, self._ais(modes, k)):
                    tests[mode][k] = test
        return [self._mode_row(mode, tests[mode], guarded[mode]) for mode in settings.feature_modes]

    def _ais(self, modes: list[str], k: int) -> list[NullTest]:
        """AIS(k) of the modes at once: each batch of permutations is built once for all of them."""
        started = time.perf_counter()
        series = [(self.symbols[mode], mode_base(self.settings, mode), self.pasts[mode][k]) for mode in modes]
        tests = self._run(k, f"feature mode {' and '.join(modes)} at k={k}", ais_tests, series,
                          self.surrogates.batches, self.threads)
        if log.isEnabledFor(logging.DEBUG):  # the text is built only when logged: small users are many
            log.debug("user %s k=%d: AIS %s bits in %.3f s", self.user_id, k,
                      ", ".join(f"{mode} {test.value:.4f}" for mode, test in zip(modes, tests)),
                      time.perf_counter() - started)
        return tests

    def _te_hour(self, mode: str, k: int) -> NullTest:
        if k not in self._te:
            if self._value_pasts is None:
                # activity's symbols are the value symbols: their pasts are already known
                self._value_pasts = self.pasts.get("activity") or observed_pasts(
                    self.values, self.settings.data.levels, self.settings.k_selection.ks)
            self._te[k] = self._run(k, f"te_hour at k={k} (feature mode {mode})", te_test, self.hours,
                                    self.values, self.settings.hour_bins, self.settings.data.levels,
                                    self._value_pasts[k], self.surrogates.batches, self.threads)
        return self._te[k]

    def _mode_row(self, mode: str, tests: Mapping[int, NullTest], guarded: list[int]) -> dict[str, Any]:
        settings, n_obs, base = self.settings, self.n_obs, mode_base(self.settings, mode)
        if not tests:
            reason = (
                f"undersampling guard: no k of {list(settings.k_selection.ks)} has n_obs - k >= base * (observed"
                f" pasts of length k) ({n_obs} observations, base {base})"
            )
            return _skipped_row(settings, self.user_id, mode, n_obs, reason)
        row = _row(settings, self.user_id, mode, "ok", "")
        row.update(n_obs=n_obs, base=base, entropy_bits=entropy_bits(self.symbols[mode], base))
        for k, test in tests.items():
            bits, null_mean, p_value = ais_columns(k)
            row.update({bits: test.value, null_mean: test.null_mean, p_value: test.p_value})
        k_selected = select_k(tests)
        te = self._te_hour(mode, k_selected)
        row.update(k_selected=k_selected, ais_bits=tests[k_selected].value, te_hour_bits=te.value, te_hour_p=te.p_value)
        if guarded:
            row["reason"] = (
                f"undersampling guard left out k={','.join(map(str, guarded))} (n_obs - k < base * observed pasts"
                f" of length k, with {n_obs} observations, base {base})"
            )
        return row

    def _run(self, k: int, what: str, measure: Callable[..., Any], *args) -> Any:
        """One JIDT computation; heap exhaustion becomes HeapTooSmall with the model's need at k."""
        with heap_exhaustion_as_heap_too_small(lambda: heap.minimum_heap(self.settings, k, self.n_obs), what):
            return measure(*args)


def select_k(tests: Mapping[int, NullTest]) -> int:
    """The k with the largest bias-corrected AIS (AIS - null mean); the smallest k on ties."""
    return min(tests, key=lambda k: (-(tests[k].value - tests[k].null_mean), k))
