"""The SLURM backend's rules, without a cluster: the scripts it writes, what it resubmits, how it reads squeue.

The scripts are checked by bash itself (`bash -n`) and by running the element's command line through
the real argument parser of run_production; one dry run of a --retry-failed resubmission is made on a
real run, with a named stand-in for SLURM's commands (`scontrol_only`). tests/scheduler/test_slurm.py submits
the same scripts to a real slurmctld, a --retry-failed resubmission included.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from shardrun.cli.run_production import parser as run_production_parser
from shardrun.cli.validate_outputs import parser as validate_outputs_parser
from shardrun.config import load_config
from shardrun.errors import UsageError
from shardrun.launch.cluster import ClusterOptions, submit_run
from shardrun.launch.slurm_script import (
    ElementJob,
    WarningSignal,
    array_script,
    element_memory_mib,
    index_ranges,
    merge_memory_mib,
    merge_script,
    shards_to_submit,
    split_for_array_size,
    time_limit_lines,
    time_limit_seconds,
    users_over_time_limit,
)
from shardrun.results.tolerance import FailedTolerance
from shardrun.scheduler.slurm import SlurmCommands, parse_max_array_size, parse_queue, scheduler_view
from shardrun.task import load_task
from shardrun.units import MIB

from e2e_support import faulty_task_config, shardrun


def job(**changes) -> ElementJob:
    values = dict(run_dir=Path("/runs/r 1"), config_path=Path("/cfg/proposal.yaml"), shards=4, array_ids=(0, 1, 2, 3),
                  index_offset=0, python="/venv/bin/python", workdir=Path("/work dir"), log_dir=Path("/logs"),
                  pilot=None, xmx="1g", cpus=2, mem_mib=1600, signal=WarningSignal("USR1", 120), requeue_limit=3,
                  max_parallel=2, time_limit="1-00:00:00", sbatch_options=("--partition=short",))
    values.update(changes)
    return ElementJob(**values)


@pytest.mark.parametrize("indices, text", [
    ([0, 1, 2, 3], "0-3"), ([3, 0, 2], "0,2-3"), ([0, 1, 2, 5, 7, 8], "0-2,5,7-8"), ([9], "9"), ([], ""),
])
def test_index_ranges(indices, text):
    assert index_ranges(indices) == text


def test_runs_larger_than_max_array_size_become_several_arrays_with_offsets():
    assert split_for_array_size(range(10), 4) == [(0, [0, 1, 2, 3]), (4, [0, 1, 2, 3]), (8, [0, 1])]
    assert split_for_array_size([1, 9], 4) == [(0, [1]), (8, [1])]
    for _offset, ids in split_for_array_size(range(2500), 1001):
        assert max(ids) < 1001


def test_the_array_script_is_valid_bash_with_every_sbatch_line(tmp_path):
    script = array_script(job(), "shardrun-r1")
    path = tmp_path / "array.sh"
    path.write_text(script)
    assert subprocess.run(["bash", "-n", str(path)]).returncode == 0
    directives = [line.removeprefix("#SBATCH ") for line in script.splitlines() if line.startswith("#SBATCH ")]
    assert "--array=0-3%2" in directives and "--cpus-per-task=2" in directives and "--mem=1600M" in directives
    assert "--signal=B:USR1@120" in directives and "--requeue" in directives and "--open-mode=append" in directives
    assert "--output=/logs/shard%a.log" in directives and "--time=1-00:00:00" in directives
    assert "--partition=short" in directives
    assert "SHARDRUN_INDEX_OFFSET" not in script and "export SHARDRUN_SHARDS=4" in script


def test_an_offset_array_exports_its_offset_and_logs_apart():
    script = array_script(job(array_ids=(0, 1), index_offset=1001), "shardrun-r1")
    assert "export SHARDRUN_INDEX_OFFSET=1001" in script and "slurm-%A_%a.log" in script
    assert 'exec >>/logs/"shard$((SLURM_ARRAY_TASK_ID + 1001)).log" 2>&1' in script
    assert job(array_ids=(0, 1), index_offset=1001).shard_indices == [1001, 1002]


def test_the_element_command_is_one_that_run_production_accepts_with_auto_shard_and_k_from_the_run():
    script = array_script(job(pilot=5), "x")
    exec_line = next(line for line in script.splitlines() if line.startswith("exec "))
    argv = shlex.split(exec_line)[5:]  # exec python -m shardrun run
    args = run_production_parser().parse_args(argv)
    assert args.shard == "auto" and args.out == Path("/runs/r 1") and args.pilot == 5
    assert args.preempt_signal == "USR1" and args.preempt_lead == 120 and args.requeue_limit == 3
    assert "--shards" not in argv and "--resume" not in argv
    assert args.commit_interval == 1.0 and "--commit-interval" not in argv  # the shard's own default


def test_the_element_command_carries_the_launchers_commit_interval():
    script = array_script(job(commit_interval_seconds=30.0), "x")
    exec_line = next(line for line in script.splitlines() if line.startswith("exec "))
    assert run_production_parser().parse_args(shlex.split(exec_line)[5:]).commit_interval == 30.0


def test_the_merge_script_merges_then_validates_and_is_valid_bash(tmp_path):
    script = merge_script(Path("/runs/r1"), Path("/cfg/c.yaml"), "/venv/bin/python", Path("/w"), Path("/logs"), "m")
    path = tmp_path / "merge.sh"
    path.write_text(script)
    assert subprocess.run(["bash", "-n", str(path)]).returncode == 0
    assert script.index("shardrun merge --run /runs/r1 --output /runs/r1/merged --overwrite") < script.index(
        "shardrun validate --dir /runs/r1/merged --config /cfg/c.yaml")


def test_the_merge_script_validates_with_the_launchers_max_failed(tmp_path):
    script = merge_script(Path("/runs/r1"), Path("/cfg/c.yaml"), "/venv/bin/python", Path("/w"), Path("/logs"), "m",
                          max_failed="2.5%")
    validate_line = next(line for line in script.splitlines() if "shardrun validate" in line)
    argv = shlex.split(validate_line)[5:]  # exec python -m shardrun validate
    assert validate_outputs_parser().parse_args(argv).max_failed == FailedTolerance(percent=2.5)
    default = merge_script(Path("/runs/r1"), Path("/cfg/c.yaml"), "/venv/bin/python", Path("/w"), Path("/logs"), "m")
    assert default.rstrip().endswith("--max-failed 0")


def test_a_retry_element_resumes_the_run_and_retries_its_failed_users():
    script = array_script(job(retry_failed=True, fail_fast=3), "x")
    exec_line = next(line for line in script.splitlines() if line.startswith("exec "))
    args = run_production_parser().parse_args(shlex.split(exec_line)[5:])
    assert args.shard == "auto" and args.resume == Path("/runs/r 1") and args.out is None
    assert args.retry_failed and args.fail_fast == 3
    plain = run_production_parser().parse_args(shlex.split(next(
        line for line in array_script(job(), "x").splitlines() if line.startswith("exec ")))[5:])
    assert not plain.retry_failed and plain.fail_fast == 5  # the shard's own default


@pytest.mark.parametrize("text, name, lead", [
    ("USR1@120", "USR1", 120), ("B:USR2@300", "USR2", 300), ("SIGTERM@60", "TERM", 60), ("usr1", "USR1", 60),
])
def test_warning_signal_parses_sbatch_syntax(text, name, lead):
    assert WarningSignal.parse(text) == WarningSignal(name, lead)


@pytest.mark.parametrize("text", ["KILL@60", "USR1@5", "USR1@x", ""])
def test_warning_signal_refuses_what_a_shard_cannot_drain_on(text):
    with pytest.raises(UsageError):
        WarningSignal.parse(text)


def test_only_shards_neither_complete_nor_queued_are_resubmitted():
    assert shards_to_submit(6, complete=[0, 2], queued=[1, 2]) == [3, 4, 5]
    assert shards_to_submit(3, complete=[0, 1, 2], queued=[]) == []


def test_retry_failed_resubmits_complete_shards_with_failed_users_unless_queued():
    assert shards_to_submit(5, complete=[0, 1, 2], queued=[3], retry=[1, 3]) == [1, 4]
    assert shards_to_submit(3, complete=[0, 1, 2], queued=[], retry=[]) == []


def test_squeue_lines_become_elements_and_later_arrays_win():
    text = "\n".join([
        "100|0|101|COMPLETED|None", "100|1|102|FAILED|NonZeroExitCode", "100|2|103|PENDING|Resources",
        "200|1|201|RUNNING|None", "300|N/A|300|PENDING|Dependency", "garbage",
    ])
    elements = parse_queue(text)
    assert [(e.array_job_id, e.array_task_id, e.state) for e in elements] == [
        ("100", 0, "COMPLETED"), ("100", 1, "FAILED"), ("100", 2, "PENDING"), ("200", 1, "RUNNING")]
    view = scheduler_view(elements, {"100": 0, "200": 0})
    assert view[1].job_id == "201" and view[2].waiting_or_running and not view[0].waiting_or_running
    assert scheduler_view(parse_queue("7|3|8|RUNNING|None"), {"7": 1001})[1004].job_id == "8"
    assert str(view[2]) == "pending (Resources) 103" and str(view[1]) == "running 201"


def test_max_array_size_from_scontrol_show_config():
    assert parse_max_array_size("Foo = 1\nMaxArraySize            = 40\n") == 40
    assert parse_max_array_size("nothing") == 1001


def test_element_memory_counts_heap_overhead_and_data():
    assert element_memory_mib(1024 * MIB, 0) > 1024
    assert element_memory_mib(1024 * MIB, 500 * MIB) == element_memory_mib(1024 * MIB, 0) + 500


def test_the_merge_jobs_memory_grows_with_the_result_sets_cells_from_a_floor():
    small = merge_memory_mib(60, 2, 32)
    assert 512 <= small < 1024
    # 10^6 users x 2 rows x 32 columns peaked at 2.4 GiB in the merge and 0.5 GiB in its picture
    # (docs/dev/PERFORMANCE.md): the default leaves room above that sum.
    assert merge_memory_mib(10**6, 2, 32) > (2433 + 505) * 1.2
    assert (merge_memory_mib(2 * 10**6, 2, 32) - small
            == pytest.approx(2 * (merge_memory_mib(10**6, 2, 32) - small), abs=2))


def test_the_merge_script_asks_for_its_memory():
    script = merge_script(Path("/runs/r1"), Path("/cfg/c.yaml"), "/venv/bin/python", Path("/w"), Path("/logs"), "m",
                          mem_mib=3000)
    assert "#SBATCH --mem=3000M" in script.splitlines()


@pytest.mark.parametrize("text, seconds", [
    ("90", 5400), ("1:30", 90), ("4:00:00", 14400), ("2-00:00:00", 172800), ("1-12", 129600), ("1-0:30", 88200),
    ("UNLIMITED", None),
])
def test_slurm_time_limits_in_every_form(text, seconds):
    assert time_limit_seconds(text) == seconds


@pytest.mark.parametrize("text", ["", "1h", "0", "1:2:3:4", "-5"])
def test_a_time_limit_slurm_would_not_take_is_refused(text):
    with pytest.raises(UsageError):
        time_limit_seconds(text)


def test_users_that_cannot_finish_before_the_warning_are_named_longest_first():
    predicted = {"a": 10.0, "b": 3700.0, "c": 3590.0, "d": 9000.0}
    assert users_over_time_limit(predicted, limit_seconds=3600, lead_seconds=120) == [("d", 9000.0), ("b", 3700.0),
                                                                                        ("c", 3590.0)]
    lines = time_limit_lines(predicted, 3600, 120)
    assert "user 'd'" in lines[1] and "raise --time above 2h32m" in lines[-1]
    assert time_limit_lines(None, 3600, 120) == [
        "time: the task estimates no user's time; nothing checked against --time"]
    assert time_limit_lines(predicted, None, 120) == []


def scontrol_only(command, **_):
    """A named stand-in for SLURM's commands, so that the resubmission rule is checked here without a
    cluster (the real submission, its elements and its merge job: tests/scheduler/test_slurm.py's
    test_retry_failed_resubmits_only_the_shard_with_failed_users_and_runs_only_them_again). It answers
    `scontrol show config` with a MaxArraySize and fails the test on any other command: a dry run must
    not submit (sbatch), and a run never submitted to SLURM has no queue to read (squeue)."""
    assert command[:3] == ["scontrol", "show", "config"], command
    return subprocess.CompletedProcess(command, 0, stdout="MaxArraySize            = 1001\n", stderr="")


@pytest.mark.e2e
def test_a_retry_resubmits_the_shards_with_failed_users_and_their_elements_retry(workspace, tmp_path):
    """A real run of two local shards, one of them with two failed users (faulty_task.py), then the dry run
    of `launch_shards --scheduler slurm --out RUN --retry-failed`: that shard alone, retrying, then the
    merge with the run's --max-failed; without --retry-failed, nothing to submit."""
    path, env = faulty_task_config(workspace, tmp_path)
    run = tmp_path / "run"
    for shard in ("0/2", "1/2"):  # user-03 and user-05 fail, both of shard 1
        done = shardrun("run", "--config", str(path), "--full", "--shard", shard, "--out", str(run),
                        cwd=workspace["root"], check=False, env=env)
        assert done.returncode == (0 if shard == "0/2" else 1), done.stderr
    said: list[str] = []
    options = ClusterOptions(config_path=path, shards=2, signal=WarningSignal("USR1", 120), out=run, dry_run=True,
                             retry_failed=True, max_failed=FailedTolerance(1))
    submission = submit_run(load_config(path), options, SlurmCommands(run=scontrol_only), said.append)
    assert submission.to_submit == [1]
    text = "\n".join(said)
    assert "  shard 1: to submit, to run its 2 failed users again (completed_with_failures)" in text
    assert "shard 0:" not in text  # complete, nothing failed: not submitted
    (exec_line,) = [line for line in text.splitlines() if line.startswith("exec ") and "shardrun run" in line]
    args = run_production_parser().parse_args(shlex.split(exec_line)[5:])
    assert args.resume == run and args.retry_failed and args.shard == "auto"
    assert "#SBATCH --array=1" in text and "--max-failed 1" in text

    plain = submit_run(load_config(path), replace(options, retry_failed=False), SlurmCommands(run=scontrol_only),
                       said.append)
    assert plain.to_submit == []  # without --retry-failed a complete shard stays as it is


@pytest.mark.e2e
def test_a_new_runs_merge_job_asks_for_the_default_memory_or_merge_mem(workspace, tmp_path):
    """The dry run of a new run: the merge job's --mem is the default for the data's users (two feature
    modes, so two rows a user), and --merge-mem replaces it."""
    said: list[str] = []
    options = ClusterOptions(config_path=workspace["config"], shards=2, signal=WarningSignal("USR1", 120),
                             out=tmp_path / "run", dry_run=True)
    config = load_config(workspace["config"])
    submit_run(config, options, SlurmCommands(run=scontrol_only), said.append)
    text = "\n".join(said)
    merge_part = text[text.index("--- merge job"):]
    users = len({line.split(",")[0] for line in workspace["data"].read_text().splitlines()[1:]})
    expected = merge_memory_mib(users, len(config.settings.feature_modes), len(load_task(config.task).result_columns(
        config.settings)))
    assert f"#SBATCH --mem={expected}M" in merge_part
    assert f"memory of the merge job: {expected} MiB" in text

    said.clear()
    submit_run(config, replace(options, merge_mem_mib=9000), SlurmCommands(run=scontrol_only), said.append)
    assert "#SBATCH --mem=9000M" in "\n".join(said)


def test_a_slurm_that_does_not_answer_is_named_with_the_fix(tmp_path):
    """A machine with SLURM's commands but no reachable controller: launch_shards --scheduler slurm ends with
    exit 2, SLURM's own words and what to do (sinfo, a login node, or --scheduler local), no traceback. The
    stand-in scontrol (a real executable on PATH) answers as an unconfigured one does."""
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    scontrol = fake_bin / "scontrol"
    scontrol.write_text("#!/bin/sh\necho 'scontrol: fatal: Could not establish a configuration source' >&2\nexit 1\n")
    scontrol.chmod(0o755)
    config = tmp_path / "config.yaml"
    config.write_text((Path(__file__).resolve().parents[2] / "config" / "small.yaml").read_text().replace(
        "data/sample_users.csv", str(Path(__file__).resolve().parents[2] / "data" / "sample_users.csv")))
    env = dict(os.environ, PATH=f"{fake_bin}{os.pathsep}{os.environ['PATH']}")
    result = subprocess.run([sys.executable, "-m", "shardrun", "launch", "--scheduler", "slurm",
                             "--config", str(config), "--shards", "2", "--out", str(tmp_path / "run"), "--dry-run"],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    assert "Could not establish a configuration source. That is SLURM's own answer" in result.stderr
    assert "sinfo" in result.stderr and "--scheduler local" in result.stderr
    assert not (tmp_path / "run").exists()
