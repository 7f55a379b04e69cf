"""The original workflow's commands, as written: `python tools/<command>.py ...` (thin shims over the console
scripts) and ./run_parallel_4shards.sh's argument handling."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def tool(name: str, *args: str, python: list[str] | None = None, cwd: Path = REPO, env=None):
    return subprocess.run([*(python or [sys.executable]), str(REPO / "tools" / f"{name}.py"), *args], cwd=cwd,
                          capture_output=True, text=True, timeout=300, env=env)


@pytest.mark.jvm
def test_run_production_as_in_the_original_workflow_dry_run():
    # No --config: config/proposal.yaml, as the original command line.
    result = tool("run_production", "--full", "--shard", "0/4", "--dry-run")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "shard 0/4:" in result.stdout and "java accepts the flags" in result.stdout


@pytest.mark.jvm
def test_a_python_without_shardrun_runs_the_shim_with_the_projects_venv():
    # -S: no site-packages, so shardrun (and its dependencies) cannot be imported by this Python.
    env = {k: v for k, v in os.environ.items() if k != "SHARDRUN_SHIM_REEXEC"}
    result = tool("run_production", "--full", "--shard", "1/4", "--dry-run", python=[sys.executable, "-S"], env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "shard 1/4:" in result.stdout


@pytest.mark.parametrize("name", ["run_production", "launch_shards", "merge_shard_results", "validate_outputs",
                                  "monitor_progress", "stop_shards"])
def test_every_shim_answers_version_and_help(name):
    assert "shardrun" in tool(name, "--version").stdout
    assert tool(name, "--help").returncode == 0


@pytest.mark.e2e
def test_merge_and_validate_shims_on_a_small_run(workspace, tmp_path):
    shards = sorted(str(p) for p in (workspace["root"] / "reference").glob("shard-*-of-*"))
    merged = tmp_path / "merged"
    result = tool("merge_shard_results", "--shards", *shards, "--output", str(merged), cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert (merged / "results.csv").is_file()
    result = tool("validate_outputs", "--dir", str(merged), cwd=tmp_path)
    assert result.returncode == 0 and "valid" in result.stdout, result.stdout + result.stderr


def test_run_parallel_help_prints_usage_and_the_launchers_flags(tmp_path):
    result = subprocess.run([str(REPO / "run_parallel_4shards.sh"), "--help"], cwd=tmp_path, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    assert "usage: ./run_parallel_4shards.sh [CONFIG] [K]" in result.stdout and "--max-parallel" in result.stdout


def test_run_parallel_refuses_a_config_that_is_nowhere(tmp_path):
    result = subprocess.run([str(REPO / "run_parallel_4shards.sh"), "--pilot", "1", "missing.yaml", "2"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "missing.yaml not found" in result.stderr


@pytest.mark.e2e
def test_run_parallel_takes_a_config_relative_to_the_caller_with_flags_around_it(workspace, tmp_path):
    (tmp_path / "cfg").mkdir()
    config = tmp_path / "cfg" / "mine.yaml"
    config.write_text(workspace["config"].read_text().replace(str(workspace["root"] / "out"), str(tmp_path / "out")))
    result = subprocess.run([str(REPO / "run_parallel_4shards.sh"), "--pilot", "1", "cfg/mine.yaml", "--no-live", "2",
                             "--progress-every", "5"], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    runs = list((tmp_path / "out").glob("mine_pilot1_*"))
    assert len(runs) == 1 and sorted(p.name for p in runs[0].glob("shard-*")) == ["shard-0-of-2", "shard-1-of-2"]
