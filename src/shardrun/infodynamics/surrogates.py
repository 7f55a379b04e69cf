"""The seeded permutations behind every null distribution of one user.

The algorithm (fixed; the numbers depend on it, so it enters the config hash as SCHEME):
- Surrogate r (0 <= r < surrogates) of a user starts from a base permutation of 0..L-1, where
  L = n_obs - 1 (the most observations any test of the user has, at k = 1). It is drawn in the JVM
  by JIDT's RandomGenerator: a java.util.Random seeded with `surrogate_seed(seed, user_id, r)`,
  then generateRandomPerturbations(L, 1), which is Collections.shuffle of the list 0..L-1: for
  i = L down to 2, swap the elements at i-1 and random.nextInt(i). java.util.Random's generator and
  nextInt are fixed by the Java SE specification, so the permutations are the same on every JVM and
  never depend on the numpy version.
- A test with m observations (m = n_obs - k) uses, as its surrogate r, the base permutation r with
  the values m..L-1 removed (order kept): a uniformly random permutation of 0..m-1 again.
So all tests of a user (every k, both feature modes, AIS and te_hour) share one set of draws: the
user pays for drawing `surrogates` permutations once, not once per test, and a number depends only
on (seed, user id, surrogate index), never on K, shard order, resumes or batching.

Each test hands the permutations to JIDT's computeSignificance(int[][]) in batches of at most
PERMUTATION_BATCH_BYTES; batching groups rows only, it changes no number.
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Callable, Iterable, Iterator

import numpy as np

from shardrun.infodynamics.jarrays import java_int_matrix
from shardrun.infodynamics.jclasses import RANDOM_GENERATOR, java_class
from shardrun.infodynamics.jvm_threads import JvmThreads

SCHEME = "jidt-random-generator-shared-v1"
# Upper bound of one batch of permutations (the numpy rows and the Java int[][] each).
PERMUTATION_BATCH_BYTES = 32 * 1024 * 1024
_INT32_MAX = 2**31 - 1

# (java long seed, length) -> a permutation of 0..length-1 as int32: how a base permutation is drawn.
Draw = Callable[[int, int], np.ndarray]


def surrogate_seed(seed: int, user_id: str, surrogate: int) -> int:
    """The java.util.Random seed (a signed 64-bit long) of surrogate `surrogate` of `user_id`."""
    return surrogate_seeds(seed, user_id, [surrogate])[0]


def surrogate_seeds(seed: int, user_id: str, surrogates: Iterable[int]) -> list[int]:
    """surrogate_seed of each surrogate: the sha256 of the JSON text [seed, user_id, surrogate], its
    first 8 bytes as a signed big-endian long. The text before the surrogate is made and hashed once per user."""
    head = hashlib.sha256(json.dumps([seed, user_id], ensure_ascii=False)[:-1].encode("utf-8"))  # without ']'
    seeds = []
    for surrogate in surrogates:
        text = head.copy()
        text.update(b", %d]" % surrogate)
        seeds.append(int.from_bytes(text.digest()[:8], "big", signed=True))
    return seeds


def draw_in_jvm(java_seed: int, length: int) -> np.ndarray:
    """One base permutation, drawn by JIDT's RandomGenerator in the JVM (the documented algorithm)."""
    generator = java_class(RANDOM_GENERATOR)()
    generator.setSeed(java_seed)
    return np.array(generator.generateRandomPerturbations(length, 1)[0], dtype=np.int32)  # the one row


def batch_rows(observations, count: int, parts: int = 1):
    """Permutations per batch: all of them (or 1/parts of them, so `parts` threads share the work) if the
    batches in flight fit in PERMUTATION_BATCH_BYTES, else fewer (>= 1). Works on numpy arrays too."""
    # Python's max and min for one test: numpy's ufuncs on scalars cost a small user more than the sum
    maximum, minimum = (max, min) if np.isscalar(observations) else (np.maximum, np.minimum)
    fitting = PERMUTATION_BATCH_BYTES // (4 * maximum(observations, 1) * parts)
    return maximum(1, minimum(-(-count // parts), fitting))


class UserSurrogates:
    """The permutations of one user's tests: drawn on first use, then derived for each test size."""

    def __init__(self, seed: int, user_id: str, count: int, n_obs: int, draw: Draw = draw_in_jvm,
                 threads: JvmThreads = JvmThreads(1)):
        if n_obs - 1 > _INT32_MAX:
            raise ValueError(f"{n_obs} observations do not fit a Java int index")
        self.seed, self.user_id, self.count, self.length = seed, user_id, count, max(n_obs - 1, 0)
        self._draw, self._threads = draw, threads
        self._base: np.ndarray | None = None

    def base(self) -> np.ndarray:
        """All base permutations, shape (count, n_obs - 1), drawn once."""
        if self._base is None:
            seeds = surrogate_seeds(self.seed, self.user_id, range(self.count))
            rows = self._threads.map(lambda java_seed: self._draw(java_seed, self.length), seeds)
            self._base = np.array(rows, dtype=np.int32).reshape(self.count, self.length)
        return self._base

    def rows(self, observations: int, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Surrogates start..stop-1 for a test of `observations` observations, shape (rows, observations)."""
        if not 0 < observations <= self.length:
            raise ValueError(f"a test of {observations} observations, but the permutations cover {self.length}")
        base = self.base()[start:stop]
        if observations == self.length:
            return base  # a view: callers copy (into the JVM) and never write
        return base[base < observations].reshape(len(base), observations)

    def batches(self, observations: int, reorder: np.ndarray | None = None,
                parts: int = 1) -> Iterator[Callable[[], object]]:
        """The batches of one test (or of several tests of one size, which share them), each as a call that
        builds its Java int[][], so that the thread that runs a batch builds it; `reorder[t]` (if given) is
        the column placed at t."""
        rows_per_batch = int(batch_rows(observations, self.count, parts))

        def build(start: int) -> object:
            rows = self.rows(observations, start, start + rows_per_batch)
            return java_int_matrix(rows if reorder is None else rows[:, reorder])

        for start in range(0, self.count, rows_per_batch):
            yield functools.partial(build, start)
