"""Memory model of the JIDT calls, so impossible (mode, k) are reported before any user starts.

Pure arithmetic on the config: no JVM, no data. Per (mode, k) the analysis runs, one after another:

- AIS: ActiveInformationCalculatorDiscrete(base, k) holds nextPastCount (base arrays of base^k ints:
  about 4 * base^(k+1) bytes), pastCount (base^k ints) and nextCount. computeSignificance(int[][])
  builds a second calculator of the same size, so the counts are held twice; it also rebuilds the
  past and next values (2 ints per observation) and one shuffled copy per surrogate at a time; the
  batch of permutations in flight is another (rows x observations) ints.
- te_hour at k: TransferEntropyCalculatorDiscrete(b, k, 1) with b = max(levels, hour_bins) holds
  sourceNextPastCount (b^(k+2) ints), sourcePastCount and nextPastCount (b^(k+1) each), pastCount;
  twice again during computeSignificance, plus 4 ints per observation and the permutation batch.

The need of (mode, k) is the larger of the two (they never overlap: the first is garbage by the time
the second allocates). On top of the arrays:
- G1 (the JVM's default collector) stores an array of at least half a region in whole regions
  ("humongous" objects), so such arrays are rounded up to regions; the region size is about
  heap / 2048 rounded down to a power of two, between 1 MiB and 32 MiB.
- JVM_BASELINE_BYTES for what JPype and the JIDT classes keep alive before any analysis (measured
  about 6 MiB after a full GC on OpenJDK 17 with JPype 1.7; 8 MiB here).
- G1 keeps G1ReservePercent (10 %) of the heap free, so the total is divided by 0.9.
Checked against real runs: composite (base 24) at k=4 on 1264 observations is predicted to need
117 MiB and failed at -Xmx104m, ran at -Xmx112m. Another collector (jvm.options) changes the
rounding; the model stays a good guide.
"""

from __future__ import annotations

from dataclasses import dataclass

from shardrun.errors import format_bytes
from shardrun.infodynamics.seeds import PERMUTATION_BATCH_BYTES, batch_rows
from shardrun.infodynamics.settings import Settings
from shardrun.infodynamics.symbols import mode_base, te_base

JAVA_INT_MAX = 2**31 - 1
JVM_BASELINE_BYTES = 8 * 1024**2
G1_RESERVE_FRACTION = 0.10
_MIB = 1024**2
_ARRAY_HEADER = 16
_REFERENCE = 4  # compressed oops, the default below 32 GB of heap


def int_array(length: int) -> int:
    return _aligned(_ARRAY_HEADER + 4 * length)


def ref_array(length: int) -> int:
    return _aligned(_ARRAY_HEADER + _REFERENCE * length)


def _aligned(size: int) -> int:
    return (size + 7) // 8 * 8


def int_matrix(rows: int, columns: int) -> list[int]:
    """A Java int[rows][columns]: one array of references plus `rows` int arrays."""
    return [ref_array(rows)] + [int_array(columns)] * rows


def g1_region_bytes(heap_bytes: int) -> int:
    target = max(heap_bytes // 2048, _MIB)
    region = 1 << (target.bit_length() - 1)  # largest power of two <= target
    return min(max(region, _MIB), 32 * _MIB)


def _on_heap(array_bytes: int, region: int) -> int:
    if array_bytes * 2 < region:
        return array_bytes
    return -(-array_bytes // region) * region  # humongous: whole regions


def state_space_too_large(base: int, k: int) -> bool:
    """JIDT's "Base and history combination too large": base^k does not fit a Java int."""
    return base**k > JAVA_INT_MAX


def _permutation_arrays(observations: int | None, surrogates: int) -> list[int]:
    if observations is None:  # data not known (preflight): the batch's upper bound
        return [PERMUTATION_BATCH_BYTES]
    rows = batch_rows(observations, surrogates)
    return int_matrix(rows, observations) + [_aligned(_ARRAY_HEADER + 8 * rows)]  # + the null values


def ais_arrays(base: int, k: int, n_obs: int | None, surrogates: int) -> list[int]:
    """Bytes of every array alive at the peak of one AIS(k) with its surrogates."""
    power = base**k
    calculator = int_matrix(base, power) + [int_array(power), int_array(base)]
    arrays = calculator * 2  # computeSignificance builds a second calculator
    observations = None if n_obs is None else max(n_obs - k, 0)
    if n_obs is not None:
        # the series, past values, next values, one shuffled copy of the next values
        arrays += [int_array(n_obs)] + [int_array(observations)] * 3
    return arrays + _permutation_arrays(observations, surrogates)


def te_arrays(base: int, k: int, n_obs: int | None, surrogates: int) -> list[int]:
    """Bytes of every array alive at the peak of one TE (source history 1) with its surrogates."""
    power = base**k
    calculator = (
        [ref_array(base)] + int_matrix(base, power) * base  # sourceNextPastCount[b][b][b^k]
        + int_matrix(base, power) * 2  # sourcePastCount, nextPastCount
        + [int_array(power), int_array(base), int_array(base)]  # pastCount, nextCount, shifted values
    )
    arrays = calculator * 2
    observations = None if n_obs is None else max(n_obs - k, 0)
    if n_obs is not None:
        # source and destination series, then source, destination and past values, one shuffled source
        arrays += [int_array(n_obs)] * 2 + [int_array(observations)] * 4
    return arrays + _permutation_arrays(observations, surrogates)


def _total(arrays: list[int], heap_bytes: int) -> int:
    region = g1_region_bytes(heap_bytes)
    used = JVM_BASELINE_BYTES + sum(_on_heap(size, region) for size in arrays)
    return int(used / (1 - G1_RESERVE_FRACTION))


def _needs(settings: Settings, mode: str, k: int, heap_bytes: int, n_obs: int | None) -> tuple[int, int]:
    """(heap for AIS at k, heap for te_hour at k) of one user in `mode`."""
    ais = _total(ais_arrays(mode_base(settings, mode), k, n_obs, settings.surrogates), heap_bytes)
    te = _total(te_arrays(te_base(settings), k, n_obs, settings.surrogates), heap_bytes)
    return ais, te


def needed_bytes(settings: Settings, mode: str, k: int, heap_bytes: int, n_obs: int | None = None) -> int:
    """Java heap one user needs for (mode, k): AIS and te_hour at that k, whichever is larger."""
    return max(_needs(settings, mode, k, heap_bytes, n_obs))


def minimum_heap(settings: Settings, mode: str, k: int, n_obs: int | None = None) -> int:
    """The smallest -Xmx (bytes, rounded up to MiB) the model accepts for (mode, k).

    The need depends on the heap through G1's region size, so iterate to a fixed point.
    """
    heap = _MIB
    for _ in range(8):
        need = -(-needed_bytes(settings, mode, k, heap, n_obs) // _MIB) * _MIB
        if need <= heap:
            break
        heap = need
    return heap


@dataclass(frozen=True)
class Infeasible:
    mode: str
    k: int
    problem: str


def infeasible(settings: Settings, heap_bytes: int) -> list[Infeasible]:
    """Every (mode, k) of the grid that cannot run: state space beyond a Java int, or heap too small."""
    found = []
    for mode in settings.feature_modes:
        base = mode_base(settings, mode)
        for k in settings.k_selection.ks:
            if state_space_too_large(base, k):
                found.append(Infeasible(mode, k, (
                    f"feature mode {mode} at k={k}: Base and history combination too large for JIDT"
                    f" ({base}^{k} past states exceed Java's Integer.MAX_VALUE {JAVA_INT_MAX})"
                )))
            elif state_space_too_large(te_base(settings), k):
                found.append(Infeasible(mode, k, (
                    f"te_hour at k={k} (feature mode {mode}): Base and history combination too large for JIDT"
                    f" ({te_base(settings)}^{k} past states exceed Java's Integer.MAX_VALUE {JAVA_INT_MAX};"
                    " the TE base is max(data.levels, hour_bins))"
                )))
            else:
                ais, te = _needs(settings, mode, k, heap_bytes, None)
                if max(ais, te) > heap_bytes:
                    largest = (
                        f"AIS: {base}^{k + 1} counts" if ais >= te
                        else f"te_hour: {te_base(settings)}^{k + 2} counts"
                    )
                    found.append(Infeasible(mode, k, (
                        f"feature mode {mode} at k={k} needs about {format_bytes(max(ais, te))} of Java heap"
                        f" ({largest}, held twice for the surrogates), more than the"
                        f" {format_bytes(heap_bytes)} of jvm.xmx; raise jvm.xmx to at least"
                        f" {minimum_heap(settings, mode, k) // _MIB}m"
                    )))
    return found


def preflight(settings: Settings, heap_bytes: int) -> list[str]:
    """Readable problems, one per (mode, k) that cannot run, each with the way out."""
    problems = infeasible(settings, heap_bytes)
    if not problems:
        return []
    worst = min(problem.k for problem in problems)
    fix = (
        f" Remove those k from k_selection.k_grid or set k_selection.k_max to {worst - 1}."
        if worst > 1 else " Lower data.levels or hour_bins."
    )
    return [problem.problem + "." + fix for problem in problems]
