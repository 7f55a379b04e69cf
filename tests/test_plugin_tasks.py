"""A plug-in task (a module outside shardrun, found through PYTHONPATH when the run was made): the run
remembers where it was imported from, so merge and validate find it again without PYTHONPATH; where it
is gone, they say so with the fix (exit 2), and a validation that could not run leaves the verdict alone."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from e2e_support import analysis_values

PLUGIN = """from shardrun.infodynamics import task  # the default analysis, under a plug-in's name\n"""


def command(sub: str, *args: str, cwd: Path, pythonpath: Path | None = None) -> subprocess.CompletedProcess:
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    if pythonpath is not None:
        env["PYTHONPATH"] = str(pythonpath)
    return subprocess.run([sys.executable, "-m", "shardrun", sub, *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=600)


@pytest.mark.e2e
def test_a_plugin_task_is_found_from_the_run_and_named_with_the_fix_when_gone(workspace, tmp_path):
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "lab_task.py").write_text(PLUGIN)
    config = tmp_path / "config.yaml"
    config.write_text(workspace["config"].read_text().replace("task: shardrun.infodynamics:task", "")
                      + "task: lab_task:task\n")
    run, merged = tmp_path / "run", tmp_path / "run" / "merged"
    made = command("run", "--config", str(config), "--full", "--shard", "0/1", "--out", str(run),
                   cwd=workspace["root"], pythonpath=plugins)
    assert made.returncode == 0, made.stderr
    assert json.loads((run / "run.json").read_text())["task_origin"] == str(plugins.resolve())

    # without PYTHONPATH: found where the run imported it from
    merge = command("merge", "--run", str(run), "--output", str(merged), cwd=tmp_path)
    assert merge.returncode == 0, merge.stderr
    check = command("validate", "--dir", str(merged), cwd=tmp_path)
    assert check.returncode == 0, check.stdout + check.stderr
    pd.testing.assert_frame_equal(analysis_values(merged), workspace["reference"], check_exact=True)
    verdict = (merged / "validation.json").read_bytes()

    plugins.rename(tmp_path / "plugins-moved")
    check = command("validate", "--dir", str(merged), cwd=tmp_path)
    assert check.returncode == 2, check.stdout + check.stderr
    assert "module 'lab_task', which cannot be imported" in check.stderr and "which is gone" in check.stderr
    assert f"PYTHONPATH={plugins.resolve()}" in check.stderr and "Traceback" not in check.stderr
    assert (merged / "validation.json").read_bytes() == verdict  # a check that could not run is no verdict
    merge = command("merge", "--run", str(run), "--output", str(tmp_path / "again"), cwd=tmp_path)
    assert merge.returncode == 2 and "PYTHONPATH=" in merge.stderr and "shardrun version" not in merge.stderr

    # the fix the message names
    check = command("validate", "--dir", str(merged), cwd=tmp_path, pythonpath=tmp_path / "plugins-moved")
    assert check.returncode == 0, check.stdout + check.stderr
