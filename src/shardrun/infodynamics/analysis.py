"""One user's result rows: one per feature mode, with the columns of `result_columns`.

Columns: user_id, feature_mode, status (ok | skipped | failed), reason, n_obs, base, entropy_bits,
k_selected, ais_bits, then per k of the grid (after k_max) ais_k<k>_bits, ais_k<k>_null_mean_bits,
ais_k<k>_p, then te_hour_bits, te_hour_p. Missing numbers are NaN; values are plain int/float/str.

- n_obs: symbols in the user's series (after dropping missing values and resampling); base: the
  mode's alphabet (symbols.py). entropy_bits: plug-in entropy of the mode's series over all n_obs.
- ais_k<k>_*: AIS(k) over the n_obs - k (past, next) pairs, the mean of its permutation null and
  the permutation p-value. k_selected: the k with the largest bias-corrected AIS (AIS - null mean),
  the smallest such k on ties; ais_bits: AIS at k_selected.
- te_hour_*: TE from the hour-bin series to the value-symbol series, destination history k_selected.
- Skipped rows carry n_obs and base only: too few observations (fewer than
  max(data.min_observations, largest k + 2)), more category labels than data.levels, or every k
  removed by the undersampling guard. An ok row whose guard removed some k has NaN for those k and
  a reason naming them; otherwise the reason of an ok row is "".
"""

from __future__ import annotations

import logging
import time
from typing import Any, Callable, Mapping

import numpy as np

from shardrun.infodynamics import heap
from shardrun.infodynamics.data import Dataset
from shardrun.infodynamics.measures import (
    NullTest,
    PermutationSource,
    ais_test,
    entropy_bits,
    heap_exhaustion_as_heap_too_small,
    te_test,
)
from shardrun.infodynamics.seeds import generator_for, permutation_batches
from shardrun.infodynamics.settings import Settings
from shardrun.infodynamics.symbols import TooManyLabels, hour_symbols, mode_base, mode_symbols, te_base, value_symbols

log = logging.getLogger(__name__)

NAN = float("nan")
LEADING_COLUMNS = (
    "user_id", "feature_mode", "status", "reason", "n_obs", "base", "entropy_bits", "k_selected", "ais_bits",
)
TRAILING_COLUMNS = ("te_hour_bits", "te_hour_p")


def ais_columns(k: int) -> tuple[str, str, str]:
    return f"ais_k{k}_bits", f"ais_k{k}_null_mean_bits", f"ais_k{k}_p"


def result_columns(settings: Settings) -> list[str]:
    columns = list(LEADING_COLUMNS)
    for k in settings.k_selection.ks:
        columns.extend(ais_columns(k))
    return columns + list(TRAILING_COLUMNS)


def minimum_observations(settings: Settings) -> int:
    return max(settings.data.min_observations, max(settings.k_selection.ks) + 2)


def guard_allows(n_obs: int, base: int, k: int) -> bool:
    """The undersampling guard: at least base^(k+1) observations for the (past, next) table."""
    return n_obs - k >= base ** (k + 1)


def _row(settings: Settings, user_id: str, mode: str, status: str, reason: str) -> dict[str, Any]:
    row: dict[str, Any] = {column: NAN for column in result_columns(settings)}
    row.update(user_id=user_id, feature_mode=mode, status=status, reason=reason)
    return row


def failed_rows(settings: Settings, user_id: str, reason: str) -> list[Mapping[str, Any]]:
    return [_row(settings, user_id, mode, "failed", reason) for mode in settings.feature_modes]


def _skipped_row(settings: Settings, user_id: str, mode: str, n_obs: int, reason: str) -> dict[str, Any]:
    row = _row(settings, user_id, mode, "skipped", reason)
    row.update(n_obs=n_obs, base=mode_base(settings, mode))
    return row


def _skipped_rows(settings: Settings, user_id: str, n_obs: int, reason: str) -> list[Mapping[str, Any]]:
    return [_skipped_row(settings, user_id, mode, n_obs, reason) for mode in settings.feature_modes]


def analyse_user(dataset: Dataset, user_id: str, settings: Settings) -> list[Mapping[str, Any]]:
    series = dataset.series(user_id)
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
    return [_analyse_mode(settings, user_id, mode, values, hours) for mode in settings.feature_modes]


def _analyse_mode(settings: Settings, user_id: str, mode: str, values: np.ndarray, hours: np.ndarray) -> dict[str, Any]:
    base = mode_base(settings, mode)
    symbols = mode_symbols(mode, values, hours, settings.hour_bins)
    n_obs = len(symbols)
    ks = settings.k_selection.ks
    guarded = [k for k in ks if settings.k_selection.undersampling_guard and not guard_allows(n_obs, base, k)]
    evaluated = [k for k in ks if k not in guarded]
    if not evaluated:
        reason = (
            f"undersampling guard: no k of {list(ks)} has n_obs - k >= base^(k+1)"
            f" ({n_obs} observations, base {base})"
        )
        return _skipped_row(settings, user_id, mode, n_obs, reason)

    row = _row(settings, user_id, mode, "ok", "")
    row.update(n_obs=n_obs, base=base, entropy_bits=entropy_bits(symbols, base))
    tests: dict[int, NullTest] = {}
    for k in evaluated:
        started = time.perf_counter()
        permutations = _permutations(settings, user_id, mode, "ais", k)
        tests[k] = _run(settings, mode, k, n_obs, ais_test, symbols, base, k, permutations)
        bits, null_mean, p_value = ais_columns(k)
        row.update({bits: tests[k].value, null_mean: tests[k].null_mean, p_value: tests[k].p_value})
        log.debug("user %s %s k=%d: AIS %.4f bits in %.3f s", user_id, mode, k, tests[k].value,
                  time.perf_counter() - started)

    k_selected = select_k(tests)
    permutations = _permutations(settings, user_id, mode, "te_hour", k_selected)
    te = _run(settings, mode, k_selected, n_obs, te_test, hours, values, te_base(settings), k_selected, permutations)
    row.update(k_selected=k_selected, ais_bits=tests[k_selected].value, te_hour_bits=te.value, te_hour_p=te.p_value)
    if guarded:
        row["reason"] = (
            f"undersampling guard left out k={','.join(map(str, guarded))} (n_obs - k < base^(k+1) with"
            f" {n_obs} observations, base {base})"
        )
    return row


def select_k(tests: Mapping[int, NullTest]) -> int:
    """The k with the largest bias-corrected AIS (AIS - null mean); the smallest k on ties."""
    return min(tests, key=lambda k: (-(tests[k].value - tests[k].null_mean), k))


def _permutations(settings: Settings, user_id: str, mode: str, measure: str, k: int) -> PermutationSource:
    """The seeded surrogates of one (user, mode, measure, k); JIDT tells how many observations."""
    rng = generator_for(settings.seed, user_id, mode, measure, k)
    return lambda observations: permutation_batches(rng, observations, settings.surrogates)


def _run(settings: Settings, mode: str, k: int, n_obs: int, measure: Callable[..., NullTest], *args) -> NullTest:
    """One JIDT computation; Java heap exhaustion becomes HeapTooSmall with the model's need for (mode, k)."""
    with heap_exhaustion_as_heap_too_small(
        lambda: heap.minimum_heap(settings, mode, k, n_obs), f"feature mode {mode} at k={k}"
    ):
        return measure(*args)
