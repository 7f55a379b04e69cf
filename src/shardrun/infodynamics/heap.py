"""Memory model of the JIDT calls over observed pasts, so a user who cannot fit is named before it starts.

Pure arithmetic on the config and each user's number of observations (vectorised over millions of
users); no JVM. `user_heap_needs` reads those numbers from a loaded Dataset; `index_heap_needs`
bounds them from the user index (rows per user) alone, so that every shard chooses the same
`jvm.xmx: auto` without loading the other shards' users. With N observations
and a test at k there are m = N - k observations and at most R = min(m + 1, base^k) past ids
(states.py), so every table is bounded by the data, never by base^(k+1). Per k, one phase after
another (each phase's arrays are garbage by the time the next allocates):

- AIS at k, every feature mode at once (they share the batches of permutations): per mode,
  MutualInformationCalculatorDiscrete(base, R) holds jointCount (base arrays of R ints), iCount and
  jCount; each computeSignificance(int[][]) call builds a second calculator of the same size, the
  sorted next and past values (2 ints per observation) and one reordered copy per surrogate; the
  batch of permutations in flight is rows x m ints plus the null values (rows doubles). With T
  threads the calculators are shared and everything else is held T times.
- te_hour at k: ConditionalMutualInformationCalculatorDiscrete(hour_bins, levels, R) holds
  hour_bins x levels arrays of R ints, hour_bins + levels arrays of R ints and one more; a second
  one per computeSignificance call, plus 4 ints per observation and its batch (per thread again).
- drawing the user's permutations (once, before any test; per thread): JIDT's RandomGenerator
  shuffles an ArrayList of n_obs - 1 boxed Integers (16 bytes each, the list's array up to 2.5
  references each while it grows) into an int[1][n_obs - 1].

On top of the arrays:
- G1 (the JVM's default collector) stores an array of at least half a region in whole regions
  ("humongous" objects), so such arrays are rounded up to regions; the region size is about
  heap / 2048 rounded down to a power of two, between 1 MiB and 32 MiB.
- JVM_BASELINE_BYTES for what JPype and the JIDT classes keep alive before any analysis (measured
  about 6 MiB after a full GC on OpenJDK 17 with JPype 1.7; 8 MiB here).
- G1 keeps G1ReservePercent (10 %) of the heap free, so the total is divided by 0.9.
R is an upper bound (real series show far fewer pasts), so the model errs on the safe side; the
figures it was checked against are in docs/dev/PERFORMANCE.md.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from shardrun.infodynamics.settings import Settings, minimum_observations
from shardrun.infodynamics.surrogates import batch_rows
from shardrun.infodynamics.symbols import mode_base
from shardrun.task import UserIndex
from shardrun.units import MIB, format_bytes

JVM_BASELINE_BYTES = 8 * MIB
G1_RESERVE_FRACTION = 0.10
_HEADER = 16
_REFERENCE = 4  # compressed oops, the default below 32 GB of heap
_INTEGER_OBJECT = 16  # a boxed java.lang.Integer: 12-byte header + the int
_G1_REGIONS = np.array([MIB << i for i in range(6)], dtype=np.int64)  # 1..32 MiB
_FIXED_POINT_STEPS = 8


def _array_bytes(length: np.ndarray | int, element: int) -> np.ndarray | int:
    return (_HEADER + element * length + 7) // 8 * 8


def _region_bytes(heaps: np.ndarray) -> np.ndarray:
    """G1's region size for each heap: heap / 2048 rounded down to a power of two, within 1..32 MiB."""
    target = np.maximum(heaps // 2048, MIB)
    index = np.searchsorted(_G1_REGIONS, target, side="right") - 1
    return _G1_REGIONS[np.clip(index, 0, len(_G1_REGIONS) - 1)]


def _on_heap(count, length: np.ndarray | int, element: int, region: np.ndarray) -> np.ndarray:
    """Heap of `count` arrays of `length` elements: humongous ones (>= half a region) take whole regions."""
    size = _array_bytes(length, element)
    return count * np.where(size * 2 < region, size, -(-size // region) * region)


def past_ids_bound(n_obs: np.ndarray, base: int, k: int) -> np.ndarray:
    """R: at most one past id per window (m + 1 of them), and never more than base^k."""
    windows = np.maximum(n_obs - k, 0) + 1
    if k * math.log2(base) < 62:
        windows = np.minimum(windows, base**k)
    return windows


def _batch(observations: np.ndarray, surrogates: int, threads: int, region: np.ndarray) -> np.ndarray:
    """The permutations in the heap at once: the batch each thread works on (surrogates.py builds a batch
    only when a thread takes it)."""
    rows = batch_rows(observations, surrogates, threads)
    batches = np.minimum(-(-surrogates // rows), threads)
    return (batches * (_on_heap(1, rows, _REFERENCE, region) + _on_heap(1, rows, 8, region))
            + _on_heap(batches * rows, observations, 4, region))


def _mi_calculator(base: int, ids: np.ndarray, region: np.ndarray) -> np.ndarray:
    return (_on_heap(1, base, _REFERENCE, region) + _on_heap(base, ids, 4, region)
            + _on_heap(1, base, 4, region) + _on_heap(1, ids, 4, region))


def _ais_phase(settings: Settings, k: int, n_obs: np.ndarray, threads: int, region: np.ndarray) -> np.ndarray:
    """Every mode's AIS at k at once (they share the batches): each mode's calculator, and per thread the
    copy computeSignificance builds, the per-observation arrays and its batch."""
    m = np.maximum(n_obs - k, 0)
    calculators = [
        _mi_calculator(mode_base(settings, mode), past_ids_bound(n_obs, mode_base(settings, mode), k), region)
        for mode in settings.feature_modes
    ]
    per_thread = sum(calculators) + len(calculators) * _on_heap(3, m, 4, region)
    return sum(calculators) + threads * per_thread + _batch(m, settings.surrogates, threads, region)


def _te_phase(settings: Settings, k: int, n_obs: np.ndarray, threads: int, region: np.ndarray) -> np.ndarray:
    sources, nexts = settings.hour_bins, settings.data.levels
    m, ids = np.maximum(n_obs - k, 0), past_ids_bound(n_obs, nexts, k)
    calculator = (
        _on_heap(2, sources, _REFERENCE, region) + _on_heap(sources + 1, nexts, _REFERENCE, region)
        + _on_heap(sources * nexts + sources + nexts + 1, ids, 4, region)
    )
    return (calculator + threads * (calculator + _on_heap(4, m, 4, region))
            + _batch(m, settings.surrogates, threads, region))


def _draw_phase(n_obs: np.ndarray, threads: int, region: np.ndarray) -> np.ndarray:
    """Drawing the user's permutations, before any test (each thread shuffles a list of boxed Integers)."""
    length = np.maximum(n_obs - 1, 0)
    return threads * (_on_heap(1, length * 5 // 2, _REFERENCE, region) + length * _INTEGER_OBJECT
                      + _on_heap(1, 1, _REFERENCE, region) + _on_heap(1, length, 4, region))


def _need_at(settings: Settings, k: int, n_obs: np.ndarray, heaps: np.ndarray, threads: int) -> np.ndarray:
    """Heap (bytes) one user needs at k, were the JVM's heap `heaps` (G1 regions depend on it)."""
    region = _region_bytes(heaps)
    arrays = np.maximum.reduce([
        _ais_phase(settings, k, n_obs, threads, region),
        _te_phase(settings, k, n_obs, threads, region),
        _draw_phase(n_obs, threads, region),
    ])
    return ((JVM_BASELINE_BYTES + arrays) / (1 - G1_RESERVE_FRACTION)).astype(np.int64)


def minimum_heaps(settings: Settings, k: int, n_obs: np.ndarray, threads: int = 1) -> np.ndarray:
    """The smallest -Xmx (bytes, whole MiB) the model accepts for the tests at k, for every n of `n_obs`,
    with the surrogates split over `threads` threads.

    The need depends on the heap through G1's region size, so iterate to a fixed point; an element
    keeps the first heap that covers its need.
    """
    n_obs = np.asarray(n_obs, dtype=np.int64)
    heaps = np.full(n_obs.shape, MIB, dtype=np.int64)
    settled = np.zeros(n_obs.shape, dtype=bool)
    for _ in range(_FIXED_POINT_STEPS):
        need = -(-_need_at(settings, k, n_obs, heaps, threads) // MIB) * MIB
        settled |= need <= heaps
        heaps = np.where(settled, heaps, need)
    return heaps


def minimum_heap(settings: Settings, k: int, n_obs: int, threads: int = 1) -> int:
    """minimum_heaps for one user with n_obs observations."""
    return int(minimum_heaps(settings, k, np.array([n_obs]), threads)[0])


def baseline_heap() -> int:
    """The heap of a user who never reaches JIDT (skipped by rule): the JVM's baseline alone, in whole MiB."""
    return -(-int(JVM_BASELINE_BYTES / (1 - G1_RESERVE_FRACTION)) // MIB) * MIB


def preflight(settings: Settings, heap_bytes: int) -> list[str]:
    """Before the data: a heap too small even for the smallest user the analysis runs, per k."""

    smallest = minimum_observations(settings)
    problems = []
    for k in settings.k_selection.ks:
        need = minimum_heap(settings, k, smallest)
        if need > heap_bytes:
            problems.append(
                f"the tests at k={k} need about {format_bytes(need)} of Java heap even for a user with the fewest"
                f" observations analysed ({smallest}), more than the {format_bytes(heap_bytes)} of jvm.xmx; raise"
                f" jvm.xmx to at least {need // MIB}m (or use jvm.xmx: auto)."
            )
    return problems


def heap_needs(settings: Settings, n_obs: np.ndarray, analysed: np.ndarray | None = None,
               threads: int = 1) -> np.ndarray:
    """Each user's heap need (bytes): the largest minimum_heap over the k it runs.

    `analysed[i]` False marks a user skipped by a rule the caller knows (too many category labels);
    a user with fewer than the minimum observations is skipped here; both need only baseline_heap().
    The undersampling guard is ignored: it can only remove work, so the need stays an upper bound.
    """

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
    for k in settings.k_selection.ks:
        largest = np.maximum(largest, minimum_heaps(settings, k, distinct, threads))
    needs[runs] = largest[position]
    return needs


# Below this much work per test (surrogates x observations), threads cost more than they save.
PARALLEL_MIN_WORK = 1_000_000


def threads_that_fit(settings: Settings, n_obs: int, heap_bytes: int) -> int:
    """How many of settings.threads one user's tests run on: as many as its work is worth and the heap
    holds (the calculators are shared; each thread holds its scratch copy, its arrays and its batch),
    at least one."""
    if settings.threads <= 1 or settings.surrogates * n_obs < PARALLEL_MIN_WORK:
        return 1
    for threads in range(settings.threads, 1, -1):
        if heap_needs(settings, np.array([n_obs]), threads=threads)[0] <= heap_bytes:
            return threads
    return 1


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
    return int(bins[-1] - bins[0] + 1) if keeps_empty_bins else len(np.unique(bins))


def user_heap_needs(settings: Settings, dataset) -> dict[str, int]:
    """Task.user_heap_needs: bytes of Java heap each user of `dataset` needs."""
    user_ids, n_obs, analysed = observation_counts(dataset, settings)
    return dict(zip(user_ids, heap_needs(settings, n_obs, analysed).tolist()))


def index_heap_needs(settings: Settings, index: UserIndex) -> dict[str, int] | None:
    """Task.index_heap_needs: every user's need from its rows in the input.

    An upper bound of user_heap_needs, because the need grows with n_obs and n_obs never exceeds the
    rows: without data.step a row with a missing value is dropped; with data.step and an aggregate
    that drops empty bins (mean, min, max, first, last) each bin holds at least one row. A categorical
    user with more labels than data.levels (skipped, baseline need) is counted as analysed. With
    data.step and sum or count, empty bins count too, so n_obs depends on each user's time span, which
    the index does not read: None (jvm.xmx: auto then needs every user's rows).
    """
    data = settings.data
    if index.observations is None or (data.step is not None and data.aggregate in ("sum", "count")):
        return None
    needs = heap_needs(settings, np.asarray(index.observations, dtype=np.int64))
    return dict(zip(index.user_ids, needs.tolist()))
