"""A config a new user gets wrong ends the worker with exit 2 and one paragraph naming the key: no traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
SMALL = (REPO / "config" / "small.yaml").read_text()


def replaced(old: str, new: str) -> str:
    assert old in SMALL
    return SMALL.replace(old, new, 1)


# (id, config text, what stderr must name)
BAD = [
    ("task-not-a-task", replaced("task: shardrun.infodynamics:task", "task: os:path"),
     ["'task'", "os:path", "parse_settings", "key_columns", "analyse"]),
    ("levels-huge", replaced("levels: 4", "levels: 1000000"), ["'data.levels'", "between 2 and 256", "1000000"]),
    ("levels-5000", replaced("levels: 4", "levels: 5000"), ["'data.levels'", "between 2 and 256"]),
    ("hour-bins", replaced("hour_bins: 6", "hour_bins: 1000"), ["'hour_bins'", "between 1 and 24"]),
    ("surrogates-huge", replaced("surrogates: 10", "surrogates: 1000000000000"),
     ["'surrogates'", "between 1 and 10,000"]),
    ("surrogates-1e12", replaced("surrogates: 10", "surrogates: 1e12"), ["'surrogates'", "must be int"]),
    ("surrogates-float", replaced("surrogates: 10", "surrogates: 1.0e+12"), ["'surrogates'", "must be int"]),
    ("time-format", replaced("step: null", 'step: null\n  time_format: "mixed"'), ["'data.time_format'"]),
    ("timezone", replaced("step: null", "step: null\n  timezone: Mars/Olympus"), ["'data.timezone'"]),
]


def run_worker(config: Path, tmp_path: Path, dry_run: bool) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "shardrun.worker", "--config", str(config), "--full", "--shard", "0/1",
               "--out", str(tmp_path / "out")] + (["--dry-run"] if dry_run else [])
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("dry_run", [True, False], ids=["dry-run", "run"])
@pytest.mark.parametrize("text, named", [case[1:] for case in BAD], ids=[case[0] for case in BAD])
def test_bad_config_exits_2_naming_the_key(tmp_path, text, named, dry_run):
    config = tmp_path / "config.yaml"
    config.write_text(text)
    yaml.safe_load(text)  # the YAML itself is valid: the value is what is wrong
    result = run_worker(config, tmp_path, dry_run)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr and "Traceback" not in result.stdout
    for word in named:
        assert word in result.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("dry_run", [True, False], ids=["dry-run", "run"])
def test_day_first_data_exits_2_with_the_fix(tmp_path, dry_run):
    data = tmp_path / "users.csv"
    lines = ["user_id,timestamp,value"] + [f"u1,{day:02d}/01/2025 03:00,{day % 3}" for day in range(1, 29)]
    data.write_text("\n".join(lines) + "\n")
    config = tmp_path / "config.yaml"
    config.write_text(replaced("path: data/sample_users.csv", f"path: {data}"))
    result = run_worker(config, tmp_path, dry_run)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert "'01/01/2025 03:00'" in result.stderr and "data.time_format" in result.stderr
    assert not (tmp_path / "out").exists()
