"""Write data/sample_users.csv: 60 synthetic users with hourly event counts of known memory.

    python tools/make_sample_data.py [--output data/sample_users.csv]

Deterministic (numpy seeded with SEED): the same file, byte for byte, on every run. Each user has
40-60 days of hourly rows (the last day may be cut short, so lengths vary), timestamps as ISO 8601
text without offset, and a count 0..MAX_COUNT per hour drawn from a Markov chain whose transition
probabilities also depend on the hour of day:

    P(next = c | x[t-1], x[t-2], hour) ~ exp(-a1 * |c - x[t-1]| - a2 * |c - x[t-2]| + g * day(hour) * c / MAX_COUNT)

with day(hour) = 1 from 08:00 to 19:59 and -1 otherwise. Groups (a1, a2, g jittered per user):
- u001-u020  order 1, sticky: a1 = 1.2, a2 = 0, g = 1 (counts persist from hour to hour)
- u021-u040  order 2, alternating: a1 = 0, a2 = 1.6, g = 1 (the count two hours back returns; one
             hour back says little, so AIS should rise from k=1 to k=2)
- u041-u060  order 1, weak memory and a strong daily rhythm: a1 = 0.3, a2 = 0, g = 3
Given the hour of day the chain has exactly the stated order; without it the daily rhythm adds a
little apparent memory, which te_hour measures.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

SEED = 20251026
USERS = 60
MAX_COUNT = 5
START = np.datetime64("2025-01-06T00:00:00")
GROUPS = (  # (first user number, last user number, a1, a2, g)
    (1, 20, 1.2, 0.0, 1.0),
    (21, 40, 0.0, 1.6, 1.0),
    (41, 60, 0.3, 0.0, 3.0),
)
DEFAULT_OUTPUT = Path(__file__).resolve().parents[1] / "data" / "sample_users.csv"


def transition_table(a1: float, a2: float, g: float) -> np.ndarray:
    """P[x2, x1, hour, next]: cumulative next-count probabilities for each past and hour."""
    counts = np.arange(MAX_COUNT + 1)
    day = np.where((np.arange(24) >= 8) & (np.arange(24) < 20), 1.0, -1.0)
    logits = (
        -a1 * np.abs(counts[None, :, None, None] - counts[None, None, None, :])
        - a2 * np.abs(counts[:, None, None, None] - counts[None, None, None, :])
        + g * day[None, None, :, None] * counts[None, None, None, :] / MAX_COUNT
    )
    weights = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return np.cumsum(weights / weights.sum(axis=-1, keepdims=True), axis=-1)


def simulate(rng: np.random.Generator, table: np.ndarray, hours: np.ndarray) -> np.ndarray:
    counts = np.empty(len(hours), dtype=np.int64)
    counts[:2] = rng.integers(0, MAX_COUNT + 1, size=2)
    draws = rng.random(len(hours))
    for t in range(2, len(hours)):
        cumulative = table[counts[t - 2], counts[t - 1], hours[t]]
        counts[t] = min(int(np.searchsorted(cumulative, draws[t], side="right")), MAX_COUNT)
    return counts


def make_frame(seed: int = SEED) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    frames = []
    for first, last, a1, a2, g in GROUPS:
        for number in range(first, last + 1):
            jitter = rng.uniform(0.85, 1.15, size=3)
            table = transition_table(a1 * jitter[0], a2 * jitter[1], g * jitter[2])
            length = int(rng.integers(40, 61)) * 24 - int(rng.integers(0, 24))
            start = START + np.timedelta64(int(rng.integers(0, 14 * 24)), "h")
            times = start + np.arange(length).astype("timedelta64[h]")
            hours = ((times - times.astype("datetime64[D]")) // np.timedelta64(1, "h")).astype(np.int64)
            frames.append(pd.DataFrame({
                "user_id": f"u{number:03d}",
                "timestamp": np.datetime_as_string(times, unit="s"),
                "value": simulate(rng, table, hours),
            }))
    return pd.concat(frames, ignore_index=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    output = parser.parse_args().output
    output.parent.mkdir(parents=True, exist_ok=True)
    frame = make_frame()
    frame.to_csv(output, index=False, lineterminator="\n")
    print(f"wrote {output}: {frame['user_id'].nunique()} users, {len(frame)} rows")


if __name__ == "__main__":
    main()
