"""JIDT's dense calculators, the engine this package used before observed pasts: a reference only.

ActiveInformationCalculatorDiscrete(base, k) and TransferEntropyCalculatorDiscrete(base, k, 1) hold
tables over all base^k pasts (about 4 * base^(k+1) bytes, swept once per surrogate), so they run only
for small state spaces. The analysis never calls them; the regression tests compare the analysis's
numbers with theirs on the same permutations, and bench/engine.py times them side by side.
"""

from __future__ import annotations

import numpy as np

from shardrun.infodynamics.jarrays import java_int_matrix, java_ints
from shardrun.infodynamics.measures import NullTest, permutation_p_value


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
