"""The JIDT calls: entropy, AIS and transfer entropy in bits, with seeded permutation nulls.

Java classes are looked up inside the functions, so importing this module never needs a JVM; the
caller starts it once per process (shardrun.jvm.start_jvm).

Surrogates follow JIDT's computeSignificance(int[][]) exactly, fed with our seeded permutations
(JIDT's computeSignificance(int) is unseeded, and slower): for AIS it lists the past states and the
next values, each sorted by value, and pairs past[t] with next[perm[t]]; for TE it lists the source
values sorted by value against the (destination next, destination past) tuples sorted by past then
next, and pairs source[perm[t]] with tuple t. Each permutation has one entry per observation (N - k
for a series of N symbols). The p-value is JIDT's: the share of surrogates >= the measured value.
Batches are combined exactly: the measured value is recomputed identically for every batch, and the
count and the mean are taken over all surrogate values together.
"""

from __future__ import annotations

import re
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator

import numpy as np

from shardrun.errors import HeapTooSmall
from shardrun.jvm import is_heap_exhaustion

_INT32 = np.iinfo(np.int32)
_XMX = re.compile(r"^-Xmx(\S+)$")

# Given the number of observations JIDT counted, the permutation batches to test with.
PermutationSource = Callable[[int], Iterable[np.ndarray]]


@dataclass(frozen=True)
class NullTest:
    value: float  # the measure on the data, in bits
    null_mean: float  # mean of the surrogate values, in bits
    p_value: float  # share of surrogate values >= value
    null: np.ndarray  # the surrogate values, in permutation order


def java_ints(values: np.ndarray):
    """A Java int[] holding `values` (JInt[N] plus slice assignment, the fast path).

    Only int32 goes in: JPype wraps int64 values outside the int range around silently.
    """
    from jpype import JInt

    values = np.asarray(values)
    if values.dtype != np.int32:
        if values.dtype.kind not in "iu" or (values.size and (values.min() < _INT32.min or values.max() > _INT32.max)):
            raise ValueError(f"symbols must be integers within the Java int range, got {values.dtype}")
        values = values.astype(np.int32)
    array = JInt[len(values)]
    array[:] = np.ascontiguousarray(values)
    return array


def java_int_rows(rows: np.ndarray):
    """A Java int[rows][columns] from a 2-D int32 array."""
    from jpype import JInt

    count, length = rows.shape
    array = JInt[count, length]
    for index in range(count):
        array[index][:] = np.ascontiguousarray(rows[index], dtype=np.int32)
    return array


def entropy_bits(symbols: np.ndarray, base: int) -> float:
    from jpype import JClass

    calculator = JClass("infodynamics.measures.discrete.EntropyCalculatorDiscrete")(base)
    calculator.initialise()
    calculator.addObservations(java_ints(symbols))
    return float(calculator.computeAverageLocalOfObservations())


def ais_test(symbols: np.ndarray, base: int, k: int, permutations: PermutationSource) -> NullTest:
    """AIS(k) of the series and its permutation null."""
    from jpype import JClass

    calculator = JClass("infodynamics.measures.discrete.ActiveInformationCalculatorDiscrete")(base, k)
    calculator.initialise()
    calculator.addObservations(java_ints(symbols))
    return _significance(calculator, permutations)


def te_test(
    source: np.ndarray, destination: np.ndarray, base: int, k: int, permutations: PermutationSource
) -> NullTest:
    """TE source -> destination: destination history k, source history 1, delay 1; and its null."""
    from jpype import JClass

    calculator = JClass("infodynamics.measures.discrete.TransferEntropyCalculatorDiscrete")(base, k, 1)
    calculator.initialise()
    calculator.addObservations(java_ints(source), java_ints(destination))
    return _significance(calculator, permutations)


def _significance(calculator, permutations: PermutationSource) -> NullTest:
    observations = int(calculator.getNumObservations())
    value = float(calculator.computeAverageLocalOfObservations())
    null_parts = []
    for batch in permutations(observations):
        if batch.shape[1] != observations:
            raise ValueError(f"permutations of length {batch.shape[1]} for {observations} observations")
        distribution = calculator.computeSignificance(java_int_rows(batch))
        null_parts.append(np.array(distribution.distribution, dtype=np.float64))
    null = np.concatenate(null_parts)
    return NullTest(
        value=value,
        null_mean=float(null.mean()),
        p_value=float(np.count_nonzero(null >= value) / len(null)),
        null=null,
    )


def jvm_heap() -> tuple[int, str]:
    """(the JVM's maximum heap in bytes, its -Xmx as given or an estimate)."""
    from jpype import JClass

    max_bytes = int(JClass("java.lang.Runtime").getRuntime().maxMemory())
    arguments = JClass("java.lang.management.ManagementFactory").getRuntimeMXBean().getInputArguments()
    for argument in arguments:
        match = _XMX.match(str(argument))
        if match:
            return max_bytes, match.group(1)
    return max_bytes, f"{max_bytes // 1024**2}m"


@contextmanager
def heap_exhaustion_as_heap_too_small(needed_bytes: Callable[[], int], what: str) -> Iterator[None]:
    """Re-raise Java heap exhaustion as HeapTooSmall carrying the heap model's need; the rest propagates."""
    try:
        yield
    except Exception as exc:
        if not is_heap_exhaustion(exc):
            raise
        _, xmx = jvm_heap()
        raise HeapTooSmall(needed_bytes(), xmx, f"{what}: {exc}") from exc
