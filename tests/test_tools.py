"""The original workflow's commands, as written: `python tools/<command>.py ...` (thin shims over the console
scripts) and ./run_parallel_4shards.sh's argument handling."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from shardrun.cli.run_parallel import config_and_shards
from shardrun.errors import UsageError

from e2e_support import analysis_values, faulty_task_config, read_status, wait_for, write_config

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


@pytest.mark.parametrize("words, config, shards, expected", [
    ([], None, None, (None, None)),
    (["8"], None, None, (None, 8)),
    (["c.yaml"], None, None, (Path("c.yaml"), None)),
    (["c.yaml", "3"], None, None, (Path("c.yaml"), 3)),
    (["c.yaml", "3"], Path("flag.yaml"), 5, (Path("flag.yaml"), 5)),  # a flag wins over its positional twin
    (["8"], None, 2, (None, 2)),
])
def test_the_scripts_positional_config_and_shard_count(words, config, shards, expected):
    assert config_and_shards(words, config, shards) == expected


@pytest.mark.parametrize("words", [["a.yaml", "2", "b"], ["a.yaml", "two"]])
def test_the_script_refuses_positional_words_it_cannot_read(words):
    with pytest.raises(UsageError):
        config_and_shards(words, None, None)


@pytest.mark.jvm
def test_run_parallel_passes_every_launcher_flag_with_its_value(tmp_path):
    """No hand-kept list of the flags that take a value: the launcher's own parser reads them, so a flag's
    value is never taken for CONFIG or K, whichever flag it is."""
    result = subprocess.run([str(REPO / "run_parallel_4shards.sh"), "config/small.yaml", "--commit-interval", "3",
                             "2", "--fail-fast", "2", "--max-failed", "1", "--dry-run"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "this starts 2 shards" in result.stdout


@pytest.mark.e2e
def test_the_continue_hint_after_a_run_of_the_script_is_the_script_and_it_finishes_the_run(workspace, tmp_path):
    run = tmp_path / "run"
    script = str(REPO / "run_parallel_4shards.sh")
    config, env = faulty_task_config(workspace, tmp_path)
    env = {**env, "FAULTY_TASK": "slow:2"}  # users of 2 s: the kill after the first lands mid-run, whatever the load
    launcher = subprocess.Popen([script, str(config), "2", "--out", "run", "--no-live"], cwd=tmp_path, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    shard_dir = run / "shard-0-of-2"
    while read_status(shard_dir).get("users_done", 0) < 1:
        assert launcher.poll() is None, launcher.stdout.read()
        time.sleep(0.2)
    doc = json.loads((run / "launcher.json").read_text())
    os.kill(doc["shards"][0]["pid"], signal.SIGKILL)
    output, _ = launcher.communicate(timeout=300)
    assert launcher.returncode != 0, output
    hint = output.split("Continue it with: ")[1].splitlines()[0]
    assert hint.startswith(f"{script} --config "), hint
    again = subprocess.run(hint.split(), cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stdout + again.stderr
    pd.testing.assert_frame_equal(analysis_values(run / "merged"), workspace["reference"], check_exact=True)


@pytest.mark.e2e
def test_the_continue_hint_of_a_launcher_started_by_its_path_runs_without_the_venv_on_path(workspace, tmp_path):
    """`.venv/bin/launch_shards` from a shell whose PATH lacks .venv/bin (a venv not activated): the hint
    after a shard's death names the console script by its path, and that command finishes the run."""
    run = tmp_path / "run"
    config, env = faulty_task_config(workspace, tmp_path)
    env = {**env, "FAULTY_TASK": "slow:2"}  # users of 2 s: the kill after the first lands mid-run, whatever the load
    venv_bin = Path(sys.executable).parent
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep)
                                  if not (Path(p) / "launch_shards").exists())
    launcher = subprocess.Popen([str(venv_bin / "launch_shards"), "--config", str(config), "--shards", "2", "--out",
                                 "run", "--no-live"], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)
    wait_for(lambda: read_status(run / "shard-0-of-2").get("users_done", 0) >= 1, timeout=300, process=launcher)
    os.kill(json.loads((run / "launcher.json").read_text())["shards"][0]["pid"], signal.SIGKILL)
    output, _ = launcher.communicate(timeout=300)
    assert launcher.returncode != 0, output
    hint = output.split("Continue it with: ")[1].splitlines()[0]
    assert hint.startswith(f"{venv_bin / 'launch_shards'} --config "), hint
    again = subprocess.run(hint.split(), cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stdout + again.stderr
    pd.testing.assert_frame_equal(analysis_values(run / "merged"), workspace["reference"], check_exact=True)


@pytest.mark.e2e
def test_shards_started_by_hand_without_out_become_one_set_as_each_says(workspace, tmp_path):
    """The original workflow: K run_production processes by hand, no --out, so K run dirs. Each says how
    they become one set; the merge it names (its pattern expanded as a shell would) equals a K=1 run."""
    config = tmp_path / "config.yaml"
    config.write_text(workspace["config"].read_text().replace(str(workspace["root"] / "out"), str(tmp_path / "out")))
    said = []
    for index in range(2):
        done = tool("run_production", "--config", str(config), "--full", "--shard", f"{index}/2", cwd=tmp_path)
        assert done.returncode == 0, done.stderr
        said.append(done.stdout.splitlines()[-1])
    assert len(list((tmp_path / "out").iterdir())) == 2
    merge = said[-1].split("merge them into one set with: ")[1].split(" (the shell")[0].split()
    pattern = merge[merge.index("--shards") + 1]
    shard_dirs = sorted(str(path) for path in Path("/").glob(pattern.lstrip("/")))
    assert len(shard_dirs) == 2
    merged = tool("merge_shard_results", "--shards", *shard_dirs, "--output", str(tmp_path / "merged"), cwd=tmp_path)
    assert merged.returncode == 0, merged.stderr
    pd.testing.assert_frame_equal(analysis_values(tmp_path / "merged"), workspace["reference"], check_exact=True)


@pytest.mark.e2e
def test_a_shard_started_by_the_shim_hints_commands_that_run_without_the_venv_on_path(workspace, tmp_path):
    """The original workflow: `python tools/run_production.py` from a shell whose PATH lacks .venv/bin. The
    shard interrupted after its first user names the command that continues it, and the merge that joins
    the hand-started shards, each spelled so that this shell runs it (the shim), never a bare console
    script it cannot find; the continue command completes the shard."""
    env = {k: v for k, v in os.environ.items() if k != "SHARDRUN_SHIM_REEXEC"}
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep)
                                  if not (Path(p) / "run_production").exists())
    config = write_config(tmp_path / "config.yaml", workspace["data"], tmp_path)  # its run dirs under tmp_path/out
    shard = subprocess.Popen([sys.executable, str(REPO / "tools" / "run_production.py"), "--config", str(config),
                              "--full", "--shard", "0/2", "--cooldown", "30"],
                             cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out_root = tmp_path / "out"

    def first_user_done():
        return any(read_status(d).get("users_done", 0) >= 1 and read_status(d).get("pid") == shard.pid
                   for d in out_root.glob("*/shard-0-of-2"))

    wait_for(first_user_done, timeout=300, process=shard)
    shard.send_signal(signal.SIGTERM)
    stdout, stderr = shard.communicate(timeout=300)
    assert shard.returncode == 3, stdout + stderr
    continue_line = next(line for line in stdout.splitlines() if line.startswith("continue it with: "))
    command = continue_line.removeprefix("continue it with: ")
    assert command.split()[1] == str(REPO / "tools" / "run_production.py")
    merge = stdout.split("merge them into one set with: ")[1].split(" --shards ")[0]
    assert merge.split()[1] == str(REPO / "tools" / "merge_shard_results.py")
    assert subprocess.run([*merge.split(), "--version"], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=120).returncode == 0
    resumed = subprocess.run(command.split(), cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
