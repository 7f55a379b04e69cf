"""The shipped sample data: reproducible from its generator, and fit for the shipped configs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd

from shardrun.config import load_config
from shardrun.heap_plan import AUTO_HEAP_FLOOR
from shardrun.infodynamics import task
from shardrun.infodynamics.settings import minimum_observations

REPO = Path(__file__).resolve().parents[2]
SAMPLE = REPO / "data" / "sample_users.csv"


def test_generator_reproduces_the_shipped_file_byte_for_byte(tmp_path):
    output = tmp_path / "sample.csv"
    subprocess.run([sys.executable, str(REPO / "tools" / "make_sample_data.py"), "--output", str(output)],
                   check=True, capture_output=True, timeout=60)
    assert output.read_bytes() == SAMPLE.read_bytes()


def test_sample_shape():
    frame = pd.read_csv(SAMPLE, dtype={"user_id": str})
    assert SAMPLE.stat().st_size < 3 * 1024**2
    assert sorted(frame.user_id.unique()) == [f"u{i:03d}" for i in range(1, 61)]
    assert frame.value.min() >= 0 and (frame.value == frame.value.round()).all()
    lengths = frame.groupby("user_id").size()
    assert lengths.min() >= 39 * 24 and lengths.max() <= 60 * 24 and lengths.nunique() > 10
    hourly = pd.to_datetime(frame.timestamp).groupby(frame.user_id).diff().dropna()
    assert (hourly == pd.Timedelta(hours=1)).all()


def test_every_user_is_long_enough_and_the_shipped_heaps_pass_preflight(monkeypatch):
    monkeypatch.chdir(REPO)  # data.path is relative to the repository root
    for name in ("proposal.yaml", "small.yaml"):
        config = load_config(REPO / "config" / name)
        heap = AUTO_HEAP_FLOOR if config.jvm.xmx_is_auto else config.jvm.xmx_bytes  # auto is at least the floor
        assert task.preflight(config.settings, heap) == []
        dataset = task.load(config.settings)
        assert len(dataset.user_ids) == 60
        shortest = min(dataset.series(user).n_obs for user in dataset.user_ids)
        assert shortest >= minimum_observations(config.settings)
