"""Memory model of the JIDT calls, so impossible (mode, k) are reported before any user starts.

Pure arithmetic on the config (preflight) or on the config and each user's number of observations
(`heap_needs`, vectorised for millions of users); no JVM. `user_heap_needs` reads those numbers
from a loaded Dataset. Per (mode, k) the analysis runs, one after another:

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

import numpy as np
import pandas as pd

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
# Arrays that depend on the data, as (arrays of n_obs ints, arrays of n_obs - k ints); shared by the
# one-user functions and the vectorised heap_needs so the two cannot drift apart.
_AIS_SERIES_ARRAYS = (1, 3)
_TE_SERIES_ARRAYS = (2, 4)


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


def _ais_calculators(base: int, k: int) -> list[int]:
    power = base**k
    calculator = int_matrix(base, power) + [int_array(power), int_array(base)]
    return calculator * 2  # computeSignificance builds a second calculator


def ais_arrays(base: int, k: int, n_obs: int | None, surrogates: int) -> list[int]:
    """Bytes of every array alive at the peak of one AIS(k) with its surrogates."""
    # the series, past values, next values, one shuffled copy of the next values
    return _with_observations(_ais_calculators(base, k), _AIS_SERIES_ARRAYS, k, n_obs, surrogates)


def _with_observations(
    calculators: list[int], series_arrays: tuple[int, int], k: int, n_obs: int | None, surrogates: int
) -> list[int]:
    """The calculators' arrays plus the per-observation ones (when n_obs is known) and the permutations."""
    observations = None if n_obs is None else max(n_obs - k, 0)
    arrays = list(calculators)
    if n_obs is not None:
        series, per_observation = series_arrays
        arrays += [int_array(n_obs)] * series + [int_array(observations)] * per_observation
    return arrays + _permutation_arrays(observations, surrogates)


def _te_calculators(base: int, k: int) -> list[int]:
    power = base**k
    calculator = (
        [ref_array(base)] + int_matrix(base, power) * base  # sourceNextPastCount[b][b][b^k]
        + int_matrix(base, power) * 2  # sourcePastCount, nextPastCount
        + [int_array(power), int_array(base), int_array(base)]  # pastCount, nextCount, shifted values
    )
    return calculator * 2


def te_arrays(base: int, k: int, n_obs: int | None, surrogates: int) -> list[int]:
    """Bytes of every array alive at the peak of one TE (source history 1) with its surrogates."""
    # source and destination series, then source, destination and past values, one shuffled source
    return _with_observations(_te_calculators(base, k), _TE_SERIES_ARRAYS, k, n_obs, surrogates)


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


# --- Per-user needs, vectorised over the number of observations ------------------------------
#
# A user's need depends on the data only through n_obs, so millions of users cost one numpy pass
# over the distinct n_obs values. minimum_heaps equals minimum_heap element by element (tested).

_G1_REGIONS = tuple(_MIB << i for i in range(6))  # the region sizes g1_region_bytes can return: 1..32 MiB
_NEED_CAP = 2**60  # far beyond any machine; keeps absurd state spaces from overflowing int64


def baseline_heap() -> int:
    """The heap of a user who never reaches JIDT (skipped by rule): the JVM's baseline alone, in whole MiB."""
    return -(-_total([], _MIB) // _MIB) * _MIB


def _region_index(heaps: np.ndarray) -> np.ndarray:
    """Index into _G1_REGIONS of g1_region_bytes(heap), for many heaps."""
    target = np.maximum(heaps // 2048, _MIB)
    index = np.zeros(heaps.shape, dtype=np.int64)
    for i, region in enumerate(_G1_REGIONS[1:], start=1):
        index[target >= region] = i
    return index


def _on_heap_many(sizes: np.ndarray, regions: np.ndarray) -> np.ndarray:
    return np.where(sizes * 2 < regions, sizes, -(-sizes // regions) * regions)


def _int_arrays(lengths: np.ndarray) -> np.ndarray:
    return (_ARRAY_HEADER + 4 * lengths + 7) // 8 * 8  # int_array (and ref_array: 4-byte references)


def _data_on_heap(n_obs: np.ndarray, k: int, surrogates: int, series_arrays: tuple[int, int],
                  regions: np.ndarray) -> np.ndarray:
    """Heap of the arrays that depend on n_obs (series, past/next values, a permutation batch)."""
    series, per_observation = series_arrays
    observations = np.maximum(n_obs - k, 0)
    of_observations = _on_heap_many(_int_arrays(observations), regions)
    rows = np.maximum(1, np.minimum(surrogates, PERMUTATION_BATCH_BYTES // (4 * np.maximum(observations, 1))))
    return (
        series * _on_heap_many(_int_arrays(n_obs), regions)
        + per_observation * of_observations
        + _on_heap_many(_int_arrays(rows), regions)  # the batch's array of row references
        + rows * of_observations  # its rows
        + _on_heap_many((_ARRAY_HEADER + 8 * rows + 7) // 8 * 8, regions)  # the null values (doubles)
    )


def _calculators_on_heap(arrays: list[int]) -> np.ndarray:
    """Heap of arrays whose size does not depend on the data, for each G1 region size."""
    return np.array(
        [min(sum(_on_heap(size, region) for size in arrays), _NEED_CAP) for region in _G1_REGIONS], dtype=np.int64
    )


def minimum_heaps(settings: Settings, mode: str, k: int, n_obs: np.ndarray) -> np.ndarray:
    """minimum_heap(settings, mode, k, n) for every n of `n_obs` at once (int64 bytes, whole MiB)."""
    n_obs = np.asarray(n_obs, dtype=np.int64)
    regions_all = np.array(_G1_REGIONS, dtype=np.int64)
    ais_fixed = _calculators_on_heap(_ais_calculators(mode_base(settings, mode), k))
    te_fixed = _calculators_on_heap(_te_calculators(te_base(settings), k))

    def need_at(heaps: np.ndarray) -> np.ndarray:
        index = _region_index(heaps)
        regions = regions_all[index]
        ais = ais_fixed[index] + _data_on_heap(n_obs, k, settings.surrogates, _AIS_SERIES_ARRAYS, regions)
        te = te_fixed[index] + _data_on_heap(n_obs, k, settings.surrogates, _TE_SERIES_ARRAYS, regions)
        used = JVM_BASELINE_BYTES + np.maximum(ais, te)
        # float64 division and truncation, exactly as _total's int(used / (1 - reserve))
        return (used / (1 - G1_RESERVE_FRACTION)).astype(np.int64)

    # The fixed point of minimum_heap, element by element: a settled element keeps its heap.
    heaps = np.full(n_obs.shape, _MIB, dtype=np.int64)
    settled = np.zeros(n_obs.shape, dtype=bool)
    for _ in range(8):
        need = -(-need_at(heaps) // _MIB) * _MIB
        settled |= need <= heaps
        heaps = np.where(settled, heaps, need)
    return heaps


def heap_needs(settings: Settings, n_obs: np.ndarray, analysed: np.ndarray | None = None) -> np.ndarray:
    """Each user's heap need (bytes): the largest minimum_heap over its feature modes and the k it runs.

    `analysed[i]` False marks a user skipped by a rule the caller knows (too many category labels);
    a user with fewer than the minimum observations is skipped here. Skipped users, and modes whose
    every k the undersampling guard removes, need only baseline_heap(). A (mode, k) whose state space
    is beyond a Java int is left out: preflight refuses the whole run for it.
    """
    # Imported here: analysis imports this module, and these are its skip rules, not copies of them.
    from shardrun.infodynamics.analysis import guard_allows, minimum_observations

    n_obs = np.asarray(n_obs, dtype=np.int64)
    baseline = baseline_heap()
    needs = np.full(n_obs.shape, baseline, dtype=np.int64)
    runs = n_obs >= minimum_observations(settings)
    if analysed is not None:
        runs &= np.asarray(analysed, dtype=bool)
    if not runs.any():
        return needs
    distinct, position = np.unique(n_obs[runs], return_inverse=True)
    largest = np.full(distinct.shape, baseline, dtype=np.int64)
    for mode in settings.feature_modes:
        base = mode_base(settings, mode)
        for k in settings.k_selection.ks:
            if state_space_too_large(base, k) or state_space_too_large(te_base(settings), k):
                continue
            heaps = minimum_heaps(settings, mode, k, distinct)
            if settings.k_selection.undersampling_guard:
                # guard_allows is n - k >= base^(k+1); evaluated on the distinct values only
                allowed = np.array([guard_allows(int(n), base, k) for n in distinct], dtype=bool)
                heaps = np.where(allowed, heaps, baseline)
            largest = np.maximum(largest, heaps)
    needs[runs] = largest[position]
    return needs


def observation_counts(dataset, settings: Settings) -> tuple[tuple[str, ...], np.ndarray, np.ndarray]:
    """(user ids, n_obs per user, analysed per user) of a loaded infodynamics Dataset, without series().

    Dataset.series builds each user's series (about 60 microseconds, and a log line per user with
    dropped values): too slow for a million users. This follows the same rules on the stored rows:
    missing values dropped, then, with data.step, the number of resampled bins (empty bins count for
    sum and count, as in data.resample). Fixed-width steps (1h, 30min, 1D) are counted with integer
    arithmetic; calendar steps (W, MS) go through data.resample per user. `analysed` is False for a
    categorical user with more distinct labels than data.levels (without data.step; with it the
    labels are those of the bins, and the user is counted as analysed, which can only overestimate).
    """
    from shardrun.infodynamics.data import _missing_values, resample

    data = settings.data
    step_nanos = None
    if data.step is not None:
        try:
            step_nanos = int(pd.tseries.frequencies.to_offset(data.step).nanos)
        except ValueError:  # a calendar offset (weeks, months): bins of varying length
            step_nanos = None
    keeps_empty_bins = data.aggregate in ("sum", "count")
    user_ids = tuple(dataset.user_ids)
    n_obs = np.empty(len(user_ids), dtype=np.int64)
    analysed = np.ones(len(user_ids), dtype=bool)
    rows_by_user = dataset._rows_by_user  # the package's own Dataset; series() is the public, slow route
    for i, user_id in enumerate(user_ids):
        rows = rows_by_user[user_id]
        present = ~_missing_values(rows.values, data.encoding)
        if data.step is None:
            n_obs[i] = np.count_nonzero(present)
            if data.encoding == "categorical":
                analysed[i] = len(set(rows.values[present])) <= data.levels
        elif step_nanos is not None:
            n_obs[i] = _fixed_step_bins(rows.local_times[present], step_nanos, keeps_empty_bins)
        else:
            n_obs[i] = len(resample(rows.values[present], rows.local_times[present], data.step, data.aggregate)[0])
    return user_ids, n_obs, analysed


def _fixed_step_bins(local_times: np.ndarray, step_nanos: int, keeps_empty_bins: bool) -> int:
    """Bins pandas' resample makes for a fixed-width step: origin at midnight of the first time's day."""
    if len(local_times) == 0:
        return 0
    times = np.sort(local_times.astype("datetime64[ns]").view(np.int64))
    origin = times[0] - times[0] % (86_400 * 10**9)  # 'start_day'; times are naive local wall clock
    bins = (times - origin) // step_nanos
    return int(bins[-1] - bins[0] + 1) if keeps_empty_bins else int(len(np.unique(bins)))


def user_heap_needs(settings: Settings, dataset) -> dict[str, int]:
    """The Task protocol's optional user_heap_needs: bytes of Java heap each user of `dataset` needs."""
    user_ids, n_obs, analysed = observation_counts(dataset, settings)
    return dict(zip(user_ids, heap_needs(settings, n_obs, analysed).tolist()))
