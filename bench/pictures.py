"""The merge's two pictures at scale: summary.png and run.png of a synthetic result set, drawn as the
merge draws them (in its own process, after the tables), with the time it took and the peak memory.

    .venv/bin/python bench/pictures.py [--users 100000] [--shards 16] [--at-once 8] [--out DIR]
    .venv/bin/python bench/pictures.py --results RUN/merged/results.parquet [--out DIR]

The synthetic set looks like the default task's: two feature modes (bases 4 and 24), k = 1..6, raw
AIS growing towards the ceiling with k while the bias-corrected AIS falls, p-values and their
Benjamini-Hochberg q-values per (mode, k) and for te_hour, 2% of users skipped (too few observations)
and 1% failed. Its run: `--shards` shards, at most `--at-once` at a time (the later ones wait for a
core), each user's seconds its estimate times a machine factor and noise, the first user of each
shard five times slower (the JVM's warm-up), and one user in a thousand six times slower than its
estimate. With --results, summary.png of a real merged set instead, with q-values added by BH where
the set has none (a set merged before the set-level step existed).

The pictures are written to --out (default: a temporary dir) for a person to look at.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from shardrun.infodynamics import task as default_task
from shardrun.results.pictures import draw_run, draw_summary, png

KS = range(1, 7)
MODES = {"activity": 4, "composite": 24}


def bh_q(p: np.ndarray) -> np.ndarray:
    """Benjamini-Hochberg q-values of the finite p-values (NaN stays NaN): the bench's own, for sets
    merged without the task's set-level step."""
    q = np.full(p.shape, np.nan)
    present = np.flatnonzero(np.isfinite(p))
    order = present[np.argsort(p[present], kind="stable")]
    ranked = p[order] * len(order) / np.arange(1, len(order) + 1)
    q[order] = np.minimum(np.minimum.accumulate(ranked[::-1])[::-1], 1.0)
    return q


def with_q_values(frame: pd.DataFrame) -> pd.DataFrame:
    """q-values per (mode, k) and for te_hour where the set has p-values but no q-values."""
    frame = frame.copy()
    ok = (frame["status"] == "ok").to_numpy()
    for p_column in [c for c in frame.columns if c.endswith("_p")]:
        q_column = p_column[:-2] + "_q"
        if q_column in frame.columns:
            continue
        q = np.full(len(frame), np.nan)
        for mode in frame["feature_mode"].unique():
            mine = np.flatnonzero(ok & (frame["feature_mode"] == mode).to_numpy())
            q[mine] = bh_q(pd.to_numeric(frame[p_column], errors="coerce").to_numpy(dtype=float)[mine])
        frame[q_column] = q
    return frame


def synthetic_frame(users: int, rng: np.random.Generator) -> pd.DataFrame:
    ids = np.array([f"user{n:07d}" for n in range(users)])
    status = np.where(rng.random(users) < 0.02, "skipped", np.where(rng.random(users) < 0.01, "failed", "ok"))
    n_obs = rng.lognormal(np.log(1200), 0.5, users).astype(int)
    parts = []
    for mode, base in MODES.items():
        frame = pd.DataFrame({"user_id": ids, "feature_mode": mode, "status": status, "n_obs": n_obs, "base": base})
        frame["reason"] = np.where(status == "skipped", "only 12 observations; needs at least 20",
                                   np.where(status == "failed", "HeapTooSmall: needs 512 MiB", ""))
        ceiling = np.log2(base)
        signal = rng.beta(2, 5, users) * ceiling * 0.4
        corrected = {}
        for k in KS:
            bias = ceiling * (1 - np.exp(-0.02 * base ** (k / 2) * 24 / n_obs * 40))
            null_mean = np.minimum(bias, ceiling * 0.9)
            value = np.minimum(signal * (1 - 0.08 * k) + null_mean + rng.normal(0, 0.02, users), ceiling)
            frame[f"ais_k{k}_bits"] = value
            frame[f"ais_k{k}_null_mean_bits"] = null_mean
            frame[f"ais_k{k}_p"] = np.where(rng.random(users) < 0.6, rng.uniform(1 / 101, 0.02, users),
                                            rng.uniform(1 / 101, 1, users))
            corrected[k] = value - null_mean
        frame["k_selected"] = np.argmax(np.column_stack([corrected[k] for k in KS]), axis=1) + 1
        frame["te_hour_bits"] = rng.gamma(2, 0.05, users)
        frame["te_hour_p"] = rng.uniform(1 / 101, 1, users) ** 2
        bad = status != "ok"
        frame.loc[bad, [c for c in frame.columns if c.startswith(("ais_", "te_", "k_"))]] = np.nan
        parts.append(frame)
    return with_q_values(pd.concat(parts, ignore_index=True))


def synthetic_run(frame: pd.DataFrame, shards: int, at_once: int, rng: np.random.Generator
                  ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The span and start tables of the set's users over `shards` shards, `at_once` at a time."""
    users = frame.drop_duplicates("user_id")
    predicted = pd.Series(default_task.result_seconds(frame, _settings()))
    ids = users["user_id"].to_numpy()
    estimate = predicted.reindex(ids).to_numpy()
    taken = estimate * 0.12 * rng.lognormal(0, 0.25, len(ids))
    taken[rng.random(len(ids)) < 0.001] *= 6  # the slow ones
    shard_of = np.arange(len(ids)) % shards
    spans, starts = [], []
    finished = []
    epoch = time.time()
    for shard in range(shards):
        start = 0.0 if shard < at_once else sorted(finished)[shard - at_once]
        mine = np.flatnonzero(shard_of == shard)
        seconds = taken[mine].copy()
        seconds[0] *= 5  # the JVM's warm-up
        begin = epoch + start + 1.5 + np.concatenate([[0.0], np.cumsum(seconds + 0.002)[:-1]])
        spans.append(pd.DataFrame({"shard": f"{shard}/{shards}", "start": begin, "end": begin + seconds,
                                   "status": users["status"].to_numpy()[mine], "user_id": ids[mine],
                                   "predicted_s": estimate[mine]}))
        starts.append((f"{shard}/{shards}", epoch + start))
        finished.append(float(begin[-1] + seconds[-1]) - epoch)
    return pd.concat(spans, ignore_index=True), pd.DataFrame(starts, columns=["shard", "started"])


def _settings():
    from shardrun.config import load_config

    return load_config(Path(__file__).resolve().parents[1] / "config" / "proposal.yaml").settings


def draw(pictures: dict, out: Path) -> dict:
    """Draw each picture (a figure's maker by file name); seconds from the inputs to both PNGs, and this
    process's peak RSS (the set's frame included, as in a merge)."""
    started = time.perf_counter()
    drawn = {name: png(figure()) for name, figure in pictures.items()}
    seconds = time.perf_counter() - started
    for name, payload in drawn.items():
        (out / name).write_bytes(payload)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    return {"draw_s": round(seconds, 2), "peak_mib": round(peak / 2**20, 1),
            "png_kib": {name: len(payload) // 1024 for name, payload in drawn.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--shards", type=int, default=16)
    parser.add_argument("--at-once", type=int, default=8)
    parser.add_argument("--results", type=Path, help="a merged results.parquet: its summary.png only")
    parser.add_argument("--out", type=Path, help="where the PNGs go (default: a temporary dir)")
    args = parser.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="pictures-"))
    out.mkdir(parents=True, exist_ok=True)
    if args.results:
        frame = with_q_values(pd.read_parquet(args.results))
        panels = default_task.summary_panels(frame, None)
        figures = draw({"summary.png": lambda: draw_summary(frame, panels, args.results.parent.parent.name)}, out)
    else:
        rng = np.random.default_rng(20261207)
        started = time.perf_counter()
        frame = synthetic_frame(args.users, rng)
        spans, starts = synthetic_run(frame, args.shards, args.at_once, rng)
        prepared = time.perf_counter()
        panels = default_task.summary_panels(frame, None)
        pictures = {"summary.png": lambda: draw_summary(frame, panels, "synthetic"),
                    "run.png": lambda: draw_run(spans, starts, "synthetic")}
        handed = time.perf_counter()
        figures = {"users": args.users, "shards": args.shards, "at_once": args.at_once,
                   "synthetic_set_s": round(prepared - started, 2), "panels_and_tables_s": round(handed - prepared, 2),
                   **draw(pictures, out)}
    print(json.dumps({**figures, "out": str(out)}), flush=True)


if __name__ == "__main__":
    sys.exit(main())
