"""Helpers of the end-to-end tests: categorical test data, a config for it, running shardrun's modules."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

BOOKKEEPING = ["shard", "seconds", "config_hash"]
LABELS = ["idle", "walk", "run"]


def write_categorical_data(path: Path, n_users: int, n_rows: int, seed: int = 7) -> None:
    """Users whose activity label follows an order-1 Markov chain with an hour-of-day drift."""
    rng = np.random.default_rng(seed)
    frames = []
    for u in range(n_users):
        start = pd.Timestamp("2026-03-01") + pd.Timedelta(minutes=int(rng.integers(0, 600)))
        times = start + pd.to_timedelta(np.arange(n_rows) * 30, unit="min")
        state = 0
        labels = []
        for t in times:
            stay = 0.7 if 8 <= t.hour < 20 else 0.9
            if rng.random() > stay:
                state = int(rng.integers(0, 3))
            labels.append(LABELS[state])
        frames.append(pd.DataFrame({"who": f"user-{u:02d}", "when": times.strftime("%Y-%m-%dT%H:%M:%S"),
                                    "label": labels}))
    pd.concat(frames).to_csv(path, index=False)


def write_config(path: Path, data: Path, root: Path, surrogates: int = 60, k_grid=(1, 2, 3, 4)) -> Path:
    config = {
        "task": "shardrun.infodynamics:task",
        "data": {
            "path": str(data), "user_column": "who", "time_column": "when", "value_column": "label",
            "encoding": "categorical", "levels": 3, "step": None, "aggregate": "sum",
        },
        "hour_bins": 4,
        "feature_modes": ["activity", "composite"],
        "k_selection": {"strategy": "AIS", "k_grid": list(k_grid), "k_max": None, "undersampling_guard": False},
        "surrogates": surrogates,
        "seed": 12345,
        "jvm": {"xms": "64m", "xmx": "256m", "options": [], "classpath": None},
        "output": {"root": str(root / "out"), "log_dir": str(root / "logs")},
    }
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def shardrun(sub: str, *args: str, cwd: Path, check: bool = True, **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, "-m", "shardrun", sub, *args], cwd=cwd, capture_output=True,
                            text=True, timeout=600, **kwargs)
    if check and result.returncode != 0:
        raise AssertionError(f"shardrun {sub} {args} exited {result.returncode}\n{result.stdout}\n{result.stderr}")
    return result


def analysis_values(merged_dir: Path) -> pd.DataFrame:
    frame = pd.read_parquet(merged_dir / "results.parquet")
    return frame.drop(columns=BOOKKEEPING).sort_values(["user_id", "feature_mode"]).reset_index(drop=True)


def read_status(shard_dir: Path) -> dict:
    try:
        return json.loads((shard_dir / "status.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


def wait_for(condition, timeout: float = 120.0, every: float = 0.01, process: subprocess.Popen | None = None):
    """Poll until condition() is truthy and return it; fail if the time runs out or `process` ends first."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        assert process is None or process.poll() is None, "the process ended before the condition held"
        assert time.monotonic() < deadline, "timed out"
        time.sleep(every)


def faulty_task_config(workspace: dict, tmp_path: Path) -> tuple[Path, dict]:
    """The workspace config with tests/faulty_task.py as its task, and the environment that finds it."""
    config = yaml.safe_load(workspace["config"].read_text())
    config["task"] = "faulty_task:task"
    path = tmp_path / "faulty.yaml"
    path.write_text(yaml.safe_dump(config))
    return path, {**os.environ, "PYTHONPATH": str(Path(__file__).parent)}


def read_trace(path: Path) -> pd.DataFrame:
    """trace.tsv as written: ids and text as text, empty fields missing, the numbers' types."""
    text = ["user_id", "shard", "host", "start", "end", "status", "error_class", "committed"]
    return pd.read_csv(path, sep="\t", dtype={**{c: str for c in text}, "pid": "Int64", "attempt": "Int64",
                                              "heap_used_bytes": "Int64", "peak_rss_bytes": "Int64",
                                              "seconds": "float64", "cpu_seconds": "float64"},
                       keep_default_na=False, na_values=[""], encoding="utf-8")
