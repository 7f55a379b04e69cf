"""Run dirs at the start of run_production: one K per run dir, damaged identities, names, no empty dirs.

Every refusal here happens before the JVM starts, so these run real worker processes quickly.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from shardrun.config import load_config
from shardrun.errors import ConfigError
from shardrun.partition import ShardSpec
from shardrun.shard import prepare as prepare_module
from shardrun.shard.prepare import ShardOptions
from shardrun.shard.run import run_shard

from e2e_support import shardrun, write_categorical_data, write_config


@pytest.fixture()
def small(tmp_path):
    data = tmp_path / "data.csv"
    write_categorical_data(data, n_users=4, n_rows=60)
    config = write_config(tmp_path / "tiny_study.yaml", data, tmp_path)
    return {"root": tmp_path, "config": config}


def run_json(run: Path, shards: int) -> None:
    run.mkdir(parents=True, exist_ok=True)
    (run / "run.json").write_text(json.dumps({"shards": shards, "config_hash": "x", "data_fingerprint": "y"}))


def everything_under(path: Path) -> set[Path]:
    return set(path.rglob("*"))


@pytest.mark.parametrize("flag", ["--out", "--resume"])
def test_a_shard_of_another_k_is_refused_naming_the_runs_k(small, flag):
    run = small["root"] / "run"
    run_json(run, 3)
    before = everything_under(run)
    result = shardrun("run", "--config", str(small["config"]), "--full", "--shard", "0/2", flag, str(run),
                      cwd=small["root"], check=False)
    assert result.returncode == 2, result.stderr
    assert "K=3" in result.stderr and "--shard i/3" in result.stderr and "Traceback" not in result.stderr
    assert everything_under(run) == before  # nothing written


@pytest.mark.parametrize("damage", ["{not json", "", "[1, 2]", '{"config_hash": "x"}'])
def test_resume_of_a_shard_with_a_damaged_shard_json_is_a_refusal_with_the_fix(small, damage):
    run = small["root"] / "run"
    run_json(run, 2)
    shard_dir = run / "shard-1-of-2"
    (shard_dir / "results").mkdir(parents=True)
    (shard_dir / "shard.json").write_text(damage)
    for where in (["--resume", str(shard_dir)], ["--resume", str(run), "--shard", "1/2"]):
        result = shardrun("run", "--config", str(small["config"]), "--full", *where, cwd=small["root"],
                          check=False)
        assert result.returncode == 2, result.stdout + result.stderr
        assert "Traceback" not in result.stderr + result.stdout
        (error,) = [line for line in result.stderr.splitlines() if line.startswith("error:")]
        assert "shard.json is damaged" in error and "shard-1-of-2.damaged" in error and f"--resume {run}" in error


def test_a_damaged_run_json_is_a_refusal_with_the_fix(small):
    run = small["root"] / "run"
    run.mkdir()
    (run / "run.json").write_text("{trunc")
    result = shardrun("run", "--config", str(small["config"]), "--full", "--shard", "0/2", "--out", str(run),
                      cwd=small["root"], check=False)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "run.json is damaged" in result.stderr and "Delete it" in result.stderr


def test_a_new_run_dir_is_named_after_the_config(small):
    result = shardrun("run", "--config", str(small["config"]), "--pilot", "1", "--shard", "0/2",
                      cwd=small["root"], check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    (run_dir,) = (small["root"] / "out").iterdir()
    assert run_dir.name.startswith("tiny_study_pilot1_bins4_"), run_dir.name


def test_a_refused_preflight_leaves_no_run_dir(small, monkeypatch):
    """jvm.xmx auto is preflighted after the run dir is named: the refusal must leave nothing behind."""
    raw = yaml.safe_load(small["config"].read_text())
    raw["jvm"]["xmx"] = "auto"
    small["config"].write_text(yaml.safe_dump(raw))
    real_load_task = prepare_module.load_task

    class Refusing:
        def __init__(self, task):
            self._task = task

        def __getattr__(self, name):
            return getattr(self._task, name)

        def preflight(self, settings, heap_bytes):
            return ["the test refuses every heap"]

    monkeypatch.setattr(prepare_module, "load_task", lambda spec: Refusing(real_load_task(spec)))
    options = ShardOptions(shard=ShardSpec(0, 2), pilot=None)
    with pytest.raises(ConfigError, match="the test refuses every heap"):
        run_shard(load_config(small["config"]), options)
    assert not (small["root"] / "out").exists() or not any((small["root"] / "out").iterdir())
