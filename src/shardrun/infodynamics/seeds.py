"""Seeded permutations for the surrogate (null) distributions.

Each (config seed, user id, feature mode, measure, k) gets its own numpy Generator, seeded from a
sha256 of exactly those values, so a number never depends on the shard, the order users are run
in, or how often a shard was resumed. The permutations are drawn one after another from that
generator; batching only groups them, so the batch size does not change any number.

Reproducibility holds for a given numpy version (numpy does not promise identical Generator streams
across versions); describe_versions records it.
"""

from __future__ import annotations

import hashlib
import json
from typing import Iterator

import numpy as np

# Upper bound of one batch of permutations in memory (numpy copy and Java int[][] each).
PERMUTATION_BATCH_BYTES = 16 * 1024 * 1024
_INT32_MAX = 2**31 - 1


def generator_for(seed: int, user_id: str, mode: str, measure: str, k: int) -> np.random.Generator:
    key = json.dumps([seed, user_id, mode, measure, k], ensure_ascii=False).encode("utf-8")
    return np.random.default_rng(int.from_bytes(hashlib.sha256(key).digest()[:16], "big"))


def batch_rows(n_obs: int, count: int) -> int:
    """Permutations per batch: all of them if they fit in PERMUTATION_BATCH_BYTES, else fewer (>= 1)."""
    return max(1, min(count, PERMUTATION_BATCH_BYTES // (4 * max(n_obs, 1))))


def permutation_batches(rng: np.random.Generator, n_obs: int, count: int) -> Iterator[np.ndarray]:
    """`count` permutations of 0..n_obs-1 as int32 arrays of shape (rows, n_obs), in bounded batches."""
    if n_obs > _INT32_MAX:
        raise ValueError(f"{n_obs} observations do not fit a Java int index")
    rows_per_batch = batch_rows(n_obs, count)
    for start in range(0, count, rows_per_batch):
        rows = min(rows_per_batch, count - start)
        batch = np.empty((rows, n_obs), dtype=np.int32)
        for row in range(rows):
            batch[row] = rng.permutation(n_obs)
        yield batch
