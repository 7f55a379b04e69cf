"""Test and benchmark references, kept out of the analysis: JIDT's dense calculators (the engine the
analysis used before observed pasts), ais_test over one series, and a permutation source of given rows.

ActiveInformationCalculatorDiscrete(base, k) and TransferEntropyCalculatorDiscrete(base, k, 1) hold
tables over all base^k pasts (about 4 * base^(k+1) bytes, swept once per surrogate), so they run only
for small state spaces. The regression tests compare the analysis's numbers with theirs on the same
permutations, and bench/engine.py times them side by side.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator

import numpy as np

from shardrun.infodynamics.jarrays import java_int_matrix, java_ints
from shardrun.infodynamics.jvm_threads import JvmThreads
from shardrun.infodynamics.measures import ONE_THREAD, NullTest, PermutationSource, ais_tests, permutation_p_value
from shardrun.infodynamics.states import ObservedPasts


def ais_test(symbols: np.ndarray, base: int, pasts: ObservedPasts, permutations: PermutationSource,
             threads: JvmThreads = ONE_THREAD) -> NullTest:
    """AIS(k) of the series (k = pasts.k) and its permutation null."""
    return ais_tests([(symbols, base, pasts)], permutations, threads)[0]


def fixed_permutations(*batches: np.ndarray) -> Callable[[int, np.ndarray | None, int], Iterator[Callable[[], object]]]:
    """A permutation source (measures.PermutationSource) handing out the given rows, batch by batch."""

    def source(observations: int, reorder: np.ndarray | None, parts: int = 1) -> Iterator[Callable[[], object]]:
        for rows in batches:
            if rows.shape[1] != observations:
                raise ValueError(f"permutations of length {rows.shape[1]} for {observations} observations")
            yield functools.partial(java_int_matrix, rows if reorder is None else rows[:, reorder])

    return source


def dense_ais_test(symbols: np.ndarray, base: int, k: int, permutations: np.ndarray) -> NullTest:
    """AIS(k) and its null from the dense calculator; `permutations` has one row per surrogate."""
    from jpype import JClass

    calculator = JClass("infodynamics.measures.discrete.ActiveInformationCalculatorDiscrete")(base, k)
    calculator.initialise()
    calculator.addObservations(java_ints(symbols))
    return _dense_significance(calculator, permutations)


def dense_te_test(source: np.ndarray, destination: np.ndarray, base: int, k: int, permutations: np.ndarray) -> NullTest:
    """TE source -> destination (destination history k, source history 1, delay 1), one common base."""
    from jpype import JClass

    calculator = JClass("infodynamics.measures.discrete.TransferEntropyCalculatorDiscrete")(base, k, 1)
    calculator.initialise()
    calculator.addObservations(java_ints(source), java_ints(destination))
    return _dense_significance(calculator, permutations)


def _dense_significance(calculator, permutations: np.ndarray) -> NullTest:
    value = float(calculator.computeAverageLocalOfObservations())
    null = np.array(calculator.computeSignificance(java_int_matrix(permutations)).distribution, dtype=np.float64)
    return NullTest(value=value, null_mean=float(null.mean()), p_value=permutation_p_value(null, value), null=null)
