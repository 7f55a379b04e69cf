"""A config a new user gets wrong ends the worker with exit 2 and one paragraph naming the key: no traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd
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
     ["'task'", "os:path", "not a shardrun.task.Task", "subclass shardrun.task.Task"]),
    ("levels-huge", replaced("levels: 4", "levels: 1000000"), ["'data.levels'", "between 2 and 256", "1000000"]),
    ("levels-5000", replaced("levels: 4", "levels: 5000"), ["'data.levels'", "between 2 and 256"]),
    ("hour-bins", replaced("hour_bins: 6", "hour_bins: 1000"), ["'hour_bins'", "between 1 and 24"]),
    ("surrogates-huge", replaced("surrogates: 10", "surrogates: 1000000000000"),
     ["'surrogates'", "at most 10,000", "lower surrogates"]),
    ("surrogates-zero", replaced("surrogates: 10", "surrogates: 0"),
     ["'surrogates'", "at least 1", "set surrogates to 100"]),
    ("required-key-misspelt", replaced("feature_modes:", "feature_mode:"),
     ["'feature_modes' is required", "did you mean 'feature_mode'? Rename it to 'feature_modes'"]),
    ("optional-key-misspelt", replaced("hour_bins: 6", "hour_bin: 6"), ["unknown config key 'hour_bin'",
                                                                         "'hour_bin' -> 'hour_bins'"]),
    ("a-list-not-a-mapping", "- task\n- data\n", ["the config file must be a mapping (key: value lines)"]),
    ("surrogates-1e12", replaced("surrogates: 10", "surrogates: 1e12"), ["'surrogates'", "must be int"]),
    ("surrogates-float", replaced("surrogates: 10", "surrogates: 1.0e+12"), ["'surrogates'", "must be int"]),
    ("time-format", replaced("step: null", 'step: null\n  time_format: "mixed"'), ["'data.time_format'"]),
    ("timezone", replaced("step: null", "step: null\n  timezone: Mars/Olympus"), ["'data.timezone'"]),
]


def run_worker(config: Path, tmp_path: Path, dry_run: bool) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "shardrun", "run", "--config", str(config), "--full", "--shard", "0/1",
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


def hourly_lines(user: str, values: list, hours: int = 28) -> list[str]:
    """`hours` rows of `user`, an hour apart, cycling through `values` (text as written in the file)."""
    times = pd.date_range("2025-01-01", periods=hours, freq="h").strftime("%Y-%m-%dT%H:%M:%S")
    return [f"{user},{time},{values[i % len(values)]}" for i, time in enumerate(times)]


HEADER = "user_id,timestamp,value"
# (id, the data file's lines, what stderr must name): each refused at start, before anything is written.
BAD_DATA = [
    ("day-first", [HEADER] + [f"u1,{day:02d}/01/2025 03:00,{day % 3}" for day in range(1, 29)],
     ["'01/01/2025 03:00'", "data.time_format"]),
    ("nan-values", [HEADER] + hourly_lines("u1", [1, 2, "", 3]) + hourly_lines("u2", [1, "inf", 2, 0, "NaN"]),
     ["18 rows cannot be analysed as they are (12 missing values in column 'value', 6 infinite values",
      "rows 3, 7, 11, 15, 19 and 13 more (row 1 is the first row after the header), of 2 users (u1, u2)",
      "Fix the data", "data.missing: drop"]),
    ("empty-value-column", [HEADER] + [line.rsplit(",", 1)[0] + "," for line in hourly_lines("u1", [1])],
     ["column 'value' has no usable value in any of its 28 rows", "data.value_column"]),
    ("value-twice", [HEADER + ",value"] + [line + ",7" for line in hourly_lines("u1", [1, 2, 3])],
     ["names a column the config reads more than once ('value' at columns 3, 4)", "Rename or remove"]),
    ("semicolons", [line.replace(",", ";") for line in [HEADER] + hourly_lines("u1", [1, 2])],
     ["is not comma-separated", "separated by ';'", "sep=';'"]),
    ("whitespace-twins", [HEADER] + hourly_lines(" u2", [1, 2]) + hourly_lines("u2", [2, 3]),
     ["differ only by whitespace around them (' u2' and 'u2')", "Strip the whitespace"]),
]


def bad_data_config(tmp_path: Path, lines: list[str], missing: str = "refuse") -> Path:
    data = tmp_path / "users.csv"
    data.write_text("\n".join(lines) + "\n")
    config = tmp_path / "config.yaml"
    text = replaced("path: data/sample_users.csv", f"path: {data}")
    config.write_text(text.replace("missing: refuse", f"missing: {missing}", 1))
    return config


@pytest.mark.parametrize("dry_run", [True, False], ids=["dry-run", "run"])
@pytest.mark.parametrize("lines, named", [case[1:] for case in BAD_DATA], ids=[case[0] for case in BAD_DATA])
def test_bad_data_exits_2_with_the_fix(tmp_path, lines, named, dry_run):
    result = run_worker(bad_data_config(tmp_path, lines), tmp_path, dry_run)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    for words in named:
        assert words in result.stderr
    assert not (tmp_path / "out").exists()


def test_the_launcher_refuses_missing_values_before_starting_a_shard(tmp_path):
    lines, named = next(case[1:] for case in BAD_DATA if case[0] == "nan-values")
    config = bad_data_config(tmp_path, lines)
    command = [sys.executable, "-m", "shardrun", "launch", "--config", str(config), "--shards", "2",
               "--out", str(tmp_path / "out"), "--dry-run"]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr and named[1] in result.stderr
    assert not (tmp_path / "out").exists()


def test_missing_values_run_with_drop(tmp_path):
    """The fix the refusal names: data.missing: drop. The dry run then plans the shard (exit 0)."""
    lines, _ = next(case[1:] for case in BAD_DATA if case[0] == "nan-values")
    result = run_worker(bad_data_config(tmp_path, lines, missing="drop"), tmp_path, dry_run=True)
    assert result.returncode == 0, result.stderr
    assert not (tmp_path / "out").exists()


def test_a_latin1_data_file_is_named_with_its_fix(tmp_path):
    config = bad_data_config(tmp_path, [HEADER] + hourly_lines("u1", [1, 2]))
    data = tmp_path / "users.csv"
    data.write_bytes("\n".join([HEADER] + hourly_lines("Jos\u00e9", [1, 2])).encode("latin-1"))
    result = run_worker(config, tmp_path, dry_run=True)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert "is not UTF-8 text" in result.stderr and "0xe9" in result.stderr and "iconv -f latin1" in result.stderr


@pytest.mark.parametrize("content", [b"", b"\n", b"\r\n  \n"], ids=["0-bytes", "a-newline", "blank-lines"])
def test_an_empty_data_file_is_said_to_be_empty(tmp_path, content):
    config = bad_data_config(tmp_path, [HEADER] + hourly_lines("u1", [1, 2]))
    (tmp_path / "users.csv").write_bytes(content)
    result = run_worker(config, tmp_path, dry_run=False)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert f"data file {tmp_path / 'users.csv'} is empty ({len(content)} bytes, no text)" in result.stderr
    assert "Point data.path at the file with your data" in result.stderr and "EmptyDataError" not in result.stderr
    assert not (tmp_path / "out").exists()


def test_a_dir_where_a_file_belongs_and_a_file_where_a_dir_belongs_are_named_as_such(tmp_path):
    config = bad_data_config(tmp_path, [HEADER] + hourly_lines("u1", [1, 2]))
    config.write_text(config.read_text().replace(str(tmp_path / "users.csv"), str(tmp_path)))
    result = run_worker(config, tmp_path, dry_run=True)
    assert result.returncode == 2 and f"data file {tmp_path} is a directory, not a table" in result.stderr

    command = [sys.executable, "-m", "shardrun", "run", "--config", str(tmp_path), "--full", "--shard", "0/1",
               "--out", str(tmp_path / "out")]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and f"--config {tmp_path} is a directory, not a config file" in result.stderr

    a_file = tmp_path / "a-file"
    a_file.write_text("mine\n")
    for sub, shard in (("run", ["--shard", "0/1", "--full"]), ("launch", ["--shards", "1"])):
        command = [sys.executable, "-m", "shardrun", sub, "--config", str(REPO / "config" / "small.yaml"), *shard,
                   "--out", str(a_file)]
        result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=120)
        assert result.returncode == 2, result.stdout + result.stderr
        assert f"--out {a_file} is a file, not a dir" in result.stderr and a_file.read_text() == "mine\n"
