"""The JIDT calls: entropy, AIS and transfer entropy in bits over observed pasts, with permutation nulls.

Java classes are looked up on first use (jclasses.py), so importing this module never needs a JVM; the
caller starts it once per process (the core's shard loop, with the classpath of infodynamics.jidt).

Every table is sized by the pasts the series shows, never by base^k (states.py):
- AIS(k) = I(next; past): JIDT's MutualInformationCalculatorDiscrete(base, M, 0) with the next symbol
  as its first variable and the observed-past id as its second, a table of base x M counts.
  JIDT's ActiveInformationCalculatorDiscrete(base, k) computes the same sum over the same nonzero
  cells in the same order (next outer, past inner) with the same operations, so the value is the
  same to the last bit. Its computeSignificance(int[][]) lists the next values sorted and the pasts
  sorted and pairs past[t] with next[perm[t]], exactly as the AIS calculator does; so are the
  surrogates, given the same permutations.
- te_hour at k = I(source; next | past): JIDT's ConditionalMutualInformationCalculatorDiscrete
  (source base, destination base, M), source = the hour bin before each next value, past = the
  observed pasts of the destination. TransferEntropyCalculatorDiscrete(b, k, 1) sums the same terms
  in the same order (past, next, source), up to rounding (it divides by log 2 once at the end: the
  two agree to about 1e-15). Its surrogates pair source[perm[t]] with the t-th (next, past) tuple
  sorted by past then next; the CMI calculator lists its tuples sorted by (source, next, past)
  instead, so each permutation is reordered (`_te_reorder`) to pair the same values.
The p-value is the permutation p-value (b + 1) / (S + 1), b of the S surrogates at or above the
measured value (permutation_p_value): the measured value counts as one more draw of the null, so a p is
never 0 (Phipson & Smyth 2010, "Permutation p-values should never be zero"); JIDT's own b / S is 0
whenever no surrogate reaches the value. Batches are combined exactly: the measured value is recomputed
identically for every batch, and the count and the mean are taken over all surrogate values together.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np

from shardrun.errors import HeapTooSmall
from shardrun.infodynamics.jarrays import java_ints
from shardrun.infodynamics.jclasses import CONDITIONAL_MUTUAL_INFORMATION, ENTROPY, MUTUAL_INFORMATION, java_class
from shardrun.infodynamics.jidt import HEAP_ADVICE, is_heap_exhaustion
from shardrun.infodynamics.jvm_threads import JvmThreads
from shardrun.infodynamics.states import ObservedPasts
from shardrun.units import MIB

_XMX = re.compile(r"^-Xmx(\S+)$")

# Given the number of observations JIDT counted, an optional column order and how many threads will
# share the work, the batches of permutations to test with, each as a call that builds its Java
# int[][] (UserSurrogates.batches).
PermutationSource = Callable[[int, "np.ndarray | None", int], Iterable[Callable[[], object]]]
ONE_THREAD = JvmThreads(1)


@dataclass(frozen=True)
class NullTest:
    value: float  # the measure on the data, in bits
    null_mean: float  # mean of the surrogate values, in bits
    p_value: float  # permutation_p_value(null, value): (b + 1) / (S + 1)
    null: np.ndarray  # the surrogate values, in permutation order


def permutation_p_value(null: np.ndarray, value: float) -> float:
    """(b + 1) / (S + 1), b of the S surrogate values at or above `value`: at least 1 / (S + 1), never 0."""
    return float((np.count_nonzero(null >= value) + 1) / (len(null) + 1))


def entropy_bits(symbols: np.ndarray, base: int) -> float:
    calculator = java_class(ENTROPY)(base)
    calculator.initialise()
    calculator.addObservations(java_ints(symbols))
    return float(calculator.computeAverageLocalOfObservations())


def ais_tests(series: Sequence[tuple[np.ndarray, int, ObservedPasts]], permutations: PermutationSource,
              threads: JvmThreads = ONE_THREAD) -> list[NullTest]:
    """AIS(k) and its null for each (symbols, base, pasts) of series of one length at one k: every batch
    of permutations is built once and tested against all of them."""

    def calculator_of(symbols: np.ndarray, base: int, pasts: ObservedPasts) -> Callable[[], object]:
        def calculator():
            mutual_information = java_class(MUTUAL_INFORMATION)(base, max(pasts.id_range, 1), 0)
            mutual_information.initialise()
            mutual_information.addObservations(java_ints(symbols[pasts.k:]), java_ints(pasts.ids))
            return mutual_information
        return calculator

    return _significance([calculator_of(*one) for one in series], permutations, None, threads)


def te_test(
    source: np.ndarray, destination: np.ndarray, source_base: int, destination_base: int,
    pasts: ObservedPasts, permutations: PermutationSource, threads: JvmThreads = ONE_THREAD,
) -> NullTest:
    """TE source -> destination: destination history k = pasts.k (the destination's pasts), source
    history 1, delay 1; and its permutation null."""
    k = pasts.k
    sources, nexts = source[k - 1:len(source) - 1], destination[k:]

    def calculator():
        conditional = java_class(CONDITIONAL_MUTUAL_INFORMATION)(source_base, destination_base, max(pasts.id_range, 1))
        conditional.initialise()
        conditional.addObservations(java_ints(sources), java_ints(nexts), java_ints(pasts.ids))
        return conditional

    return _significance([calculator], permutations, _te_reorder(sources, nexts, pasts.ids), threads)[0]


def _te_reorder(sources: np.ndarray, nexts: np.ndarray, pasts: np.ndarray) -> np.ndarray:
    """Column order that makes the CMI calculator pair the values TE's own surrogates pair.

    Position t of the CMI calculator's tuple list holds observation cmi[t]; that observation's
    (next, past) tuple stands at position rank[cmi[t]] of TE's list, so the CMI's t-th tuple must
    take the source TE's permutation gives that position: perm[rank[cmi[t]]].
    """
    te_order = np.lexsort((nexts, pasts))  # TE: by past, then next (stable: ties keep time order)
    cmi_order = np.lexsort((pasts, nexts, sources))  # CMI: by source, next, past
    rank = np.empty(len(te_order), dtype=np.int64)
    rank[te_order] = np.arange(len(te_order))
    return rank[cmi_order]


def _significance(new_calculators: Sequence[Callable[[], Any]], permutations: PermutationSource,
                  reorder: np.ndarray | None, threads: JvmThreads) -> list[NullTest]:
    """The values and nulls of calculators over the same observations; the batches of surrogates run on
    `threads`, all on the same calculators. That is safe: computeSignificance(int[][]) builds its own
    scratch calculator per call and only reads the caller's count tables; the scalars it also writes
    back (the average, min and max of the actual value) get the same values from every call, and
    nothing here reads them."""
    calculators = [new() for new in new_calculators]
    observations = int(calculators[0].getNumObservations())
    values = [float(calculator.computeAverageLocalOfObservations()) for calculator in calculators]

    def nulls_of(build_batch: Callable[[], Any]) -> list[np.ndarray]:
        batch = build_batch()
        return [np.array(calculator.computeSignificance(batch).distribution, dtype=np.float64)
                for calculator in calculators]

    per_batch = threads.map(nulls_of, permutations(observations, reorder, threads.count))
    tests = []
    for index, value in enumerate(values):
        null = np.concatenate([nulls[index] for nulls in per_batch])
        tests.append(NullTest(value=value, null_mean=float(null.mean()),
                              p_value=permutation_p_value(null, value), null=null))
    return tests


@functools.cache
def jvm_heap() -> tuple[int, str]:
    """(the JVM's maximum heap in bytes, its -Xmx as given or an estimate). A process starts one JVM, whose
    heap is fixed at its start: asked once (each user asks, and the answer costs a small user's analysis)."""
    from jpype import JClass

    max_bytes = int(JClass("java.lang.Runtime").getRuntime().maxMemory())
    arguments = JClass("java.lang.management.ManagementFactory").getRuntimeMXBean().getInputArguments()
    for argument in arguments:
        match = _XMX.match(str(argument))
        if match:
            return max_bytes, match.group(1)
    return max_bytes, f"{max_bytes // MIB}m"


@functools.cache
def jvm_heap_bytes() -> int:
    """The JVM's -Xmx in bytes, as the heap model counts it (its maximum heap where -Xmx is unreadable);
    fixed for the process, like jvm_heap, and asked by every user."""
    from shardrun.units import heap_bytes

    max_bytes, xmx = jvm_heap()
    try:
        return heap_bytes(xmx)
    except ValueError:
        return max_bytes


@contextmanager
def heap_exhaustion_as_heap_too_small(needed_bytes: Callable[[], int], what: str) -> Iterator[None]:
    """Re-raise Java heap exhaustion as HeapTooSmall carrying the heap model's need; the rest propagates."""
    try:
        yield
    except Exception as exc:
        if not is_heap_exhaustion(exc):
            raise
        _, xmx = jvm_heap()
        raise HeapTooSmall(needed_bytes(), xmx, f"{what}: {exc}", advice=HEAP_ADVICE) from exc
