"""The example tasks run end to end: the tutorial's minimal task (examples/minimal) through launch_shards,
merge and validate, and examples/javastats where JIDT is not installed.

A venv is built without idtxl-uv: its site-packages links every entry of this project's venv except
the idtxl package and its dist-info (the editable install's .pth comes along, so `shardrun` is this
checkout's src). There the example runs through launch_shards, merge and validate with the JVM's own
classes, and the default task refuses to start with a message that names idtxl-uv.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import sysconfig
from decimal import Decimal
from pathlib import Path

import pandas as pd
import pytest
import yaml

from e2e_support import write_categorical_data, write_config

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"
EXAMPLE_CONFIG = EXAMPLES / "javastats" / "config.yaml"
MINIMAL_CONFIG = EXAMPLES / "minimal" / "config.yaml"


def is_jidt(name: str) -> bool:
    return name == "idtxl" or (name.startswith("idtxl_uv-") and name.endswith(".dist-info"))


@pytest.fixture(scope="module")
def no_jidt_python(tmp_path_factory) -> Path:
    """A Python whose site-packages is this project's, minus idtxl-uv."""
    root = tmp_path_factory.mktemp("no-jidt")
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    ours = Path(sysconfig.get_paths()["purelib"])
    assert any(is_jidt(entry.name) for entry in ours.iterdir()), "the project venv should have idtxl-uv"
    for entry in ours.iterdir():
        if not is_jidt(entry.name) and not (site / entry.name).exists():
            (site / entry.name).symlink_to(entry)
    check = (
        "import importlib.util, importlib.metadata, shardrun\n"
        "assert importlib.util.find_spec('idtxl') is None\n"
        "try:\n"
        "    importlib.metadata.distribution('idtxl-uv')\n"
        "except importlib.metadata.PackageNotFoundError:\n"
        "    pass\n"
        "else:\n"
        "    raise SystemExit('idtxl-uv is visible')\n"
        "print(shardrun.__file__)\n"
    )
    done = subprocess.run([str(python), "-c", check], capture_output=True, text=True, env=clean_env(), timeout=120)
    assert done.returncode == 0, done.stderr
    assert Path(done.stdout.strip()).resolve().is_relative_to(REPO / "src"), done.stdout
    return python


def clean_env(**extra: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "VIRTUAL_ENV")}
    return {**env, **extra}


def expected_statistics(csv_path: Path, min_readings: int) -> dict[str, dict]:
    """The example's statistics in plain Python, from the file's text."""
    texts: dict[str, list[str]] = {}
    for line in csv_path.read_text(encoding="utf-8").splitlines()[1:]:
        user, text = line.split(",")
        texts.setdefault(user, []).append(text)
    expected = {}
    for user, values in texts.items():
        numbers = [float(v) for v in values]
        if len(values) < min_readings:
            expected[user] = {"status": "skipped", "n": len(values)}
        else:
            expected[user] = {"status": "ok", "n": len(values), "mean": sum(numbers) / len(numbers),
                              "min": min(numbers), "max": max(numbers), "exact_sum": str(sum(map(Decimal, values)))}
    return expected


def test_the_minimal_task_of_the_tutorial_runs_merges_and_validates(tmp_path):
    config = yaml.safe_load(MINIMAL_CONFIG.read_text())
    config["path"] = str(REPO / config["path"])
    config["output"] = {"root": str(tmp_path / "out"), "log_dir": str(tmp_path / "logs")}
    config_path = tmp_path / "minimal.yaml"
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    bin_dir = Path(sys.executable).parent
    env = clean_env(PYTHONPATH=str(EXAMPLES))

    done = subprocess.run([str(bin_dir / "launch_shards"), "--config", str(config_path), "--shards", "2"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "validation passed" in done.stdout
    (run_dir,) = (tmp_path / "out").iterdir()
    again = tmp_path / "again"  # the tutorial's merge and validation by hand
    for command in (["merge_shard_results", "--run", str(run_dir), "--output", str(again)],
                    ["validate_outputs", "--dir", str(again)]):
        by_hand = subprocess.run([str(bin_dir / command[0]), *command[1:]], cwd=tmp_path, capture_output=True,
                                 text=True, timeout=600, env=env)
        assert by_hand.returncode == 0, by_hand.stdout + by_hand.stderr
    assert json.loads((again / "validation.json").read_text())["valid"] is True

    frame = pd.read_parquet(again / "results.parquet").set_index("user_id")
    values: dict[str, list[float]] = {}
    for line in Path(config["path"]).read_text(encoding="utf-8").splitlines()[1:]:
        user, _, value = line.split(",")
        values.setdefault(user, []).append(float(value))
    assert sorted(frame.index) == sorted(values) and sorted(set(frame["shard"])) == ["0/2", "1/2"]
    assert list(frame.columns[:5]) == ["status", "reason", "n", "mean", "median"]
    for user, numbers in values.items():
        row = frame.loc[user]
        assert row["status"] == "ok" and row["n"] == len(numbers), user
        assert row["mean"] == pytest.approx(statistics.fmean(numbers), rel=1e-12), user
        assert row["median"] == statistics.median(numbers), user


def test_the_example_task_runs_merges_and_validates_without_jidt(no_jidt_python, tmp_path):
    config = yaml.safe_load(EXAMPLE_CONFIG.read_text())
    config["data"]["path"] = str(EXAMPLE_CONFIG.parent / "readings.csv")
    config["output"] = {"root": str(tmp_path / "out"), "log_dir": str(tmp_path / "logs")}
    config_path = tmp_path / "javastats.yaml"
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))

    done = subprocess.run([str(no_jidt_python), "-m", "shardrun", "launch", "--config", str(config_path),
                           "--shards", "2"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=600,
                          env=clean_env(PYTHONPATH=str(EXAMPLES)))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "validation passed" in done.stdout

    (run_dir,) = (tmp_path / "out").iterdir()
    assert run_dir.name.startswith("javastats_full_javastats_")  # config stem, mode, task label
    merged = run_dir / "merged"
    assert json.loads((merged / "validation.json").read_text())["valid"] is True
    assert (merged / "summary.png").stat().st_size > 0
    run = json.loads((run_dir / "run.json").read_text())
    assert run["versions"]["javastats"] == "1.0" and not any("idtxl" in key or "jidt" in key for key in run["versions"])

    frame = pd.read_parquet(merged / "results.parquet").set_index("user_id")
    expected = expected_statistics(Path(config["data"]["path"]), config["min_readings"])
    assert sorted(frame.index) == sorted(expected) and sorted(set(frame["shard"])) == ["0/2", "1/2"]
    for user, want in expected.items():
        row = frame.loc[user]
        assert row["status"] == want["status"] and row["n"] == want["n"], user
        if want["status"] == "ok":
            assert row["min"] == want["min"] and row["max"] == want["max"], user
            assert row["mean"] == pytest.approx(want["mean"], rel=1e-12), user
            assert row["exact_sum"] == want["exact_sum"], user  # BigDecimal: exact, digit for digit
        else:
            assert "min_readings" in row["reason"]
    assert list(frame["status"]).count("skipped") == 1


@pytest.mark.parametrize("command", [
    ["run", "--full", "--shard", "0/1"],
    ["launch", "--shards", "2"],
])
def test_the_default_task_without_idtxl_uv_refuses_clearly(no_jidt_python, tmp_path, command):
    data = tmp_path / "users.csv"
    write_categorical_data(data, n_users=2, n_rows=100)
    config = write_config(tmp_path / "config.yaml", data, tmp_path)
    sub, *flags = command
    done = subprocess.run([str(no_jidt_python), "-m", "shardrun", sub, "--config", str(config), *flags],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300, env=clean_env())
    assert done.returncode == 2, done.stdout + done.stderr
    assert "idtxl-uv" in done.stderr and "infodynamics.jar" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    assert not (tmp_path / "out").exists()  # the output root: refused before anything was written
