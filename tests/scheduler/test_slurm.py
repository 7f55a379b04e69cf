"""launch_shards --scheduler slurm against a real single-node SLURM (tests/slurm_cluster.py: munged,
slurmctld and slurmd from the Debian packages, started by the test session and stopped by PID).

Every run is submitted with the project's own command, as a user would, and its merged result must
equal the uninterrupted local K=1 reference of the same config: no user twice, none lost, no element
running another's users, whatever SLURM did to the elements on the way (a cancel and a resubmission
by index, a time-limit warning answered by a drain and a self-requeue, the same
warning to the array's last element, whose siblings must run on undisturbed), or after users that
failed for real were run again with --retry-failed. (A requeue mid-run, continued on another node, and
a node failure are in test_slurm_two_nodes.py.)
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from shardrun.scheduler.slurm import SlurmSubmission
from shardrun.storage.commits import decode_batch
from shardrun.storage.paths import ShardPaths

from e2e_support import analysis_values, read_status, wait_for
from slurm_cluster import SlurmCluster, started_for_test

pytestmark = pytest.mark.e2e

RUN_TIMEOUT = 420
# Below the largest run's K, so that a run of 4 shards must be submitted as two arrays (an index offset).
MAX_ARRAY_SIZE = 3


@pytest.fixture(scope="module")
def slurm_cluster():
    """This module's own cluster, with MaxArraySize 3, whose requeued jobs may start again 11 s after the requeue
    (cred_expire=10) instead of SLURM's default 121 s: requeues are left to SLURM, as on a real
    cluster, without making the tests wait two minutes each. (`scontrol update StartTime=now`
    does not do for array elements: slurmd refuses the revoked credential, "Job credential revoked".)"""
    cluster = started_for_test(SlurmCluster(shared=True, cred_expire=10, max_array_size=MAX_ARRAY_SIZE))
    yield cluster
    cluster.stop()


def own_config(workspace: dict, tmp_path: Path, faulty: bool = False) -> Path:
    """The workspace config with this test's own log dir (the elements' logs are checked)."""
    config = yaml.safe_load(workspace["config"].read_text())
    config["output"]["log_dir"] = str(tmp_path / "logs")
    if faulty:
        config["task"] = "faulty_task:task"
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def submission_command(config: Path, run: Path, shards: int, *flags: str) -> list[str]:
    return [sys.executable, "-m", "shardrun", "launch", "--scheduler", "slurm", "--config", str(config),
            "--shards", str(shards), "--out", str(run), *flags]


def launch(cluster, config: Path, run: Path, shards: int, *flags: str, env: dict | None = None):
    return subprocess.run(submission_command(config, run, shards, *flags), env={**cluster.env, **(env or {})},
                          cwd=run.parent, capture_output=True, text=True, timeout=300)


def submitted(run: Path) -> tuple[list[str], str | None]:
    """The array job ids and the newest merge job id that RUN/slurm.json records."""
    submissions = json.loads((run / "slurm.json").read_text())["submissions"]
    assert all(submission.keys() == SlurmSubmission.__annotations__.keys() for submission in submissions)
    arrays = [array["job_id"] for submission in submissions for array in submission["arrays"]]
    return arrays, submissions[-1]["merge_job_id"]


def wait_for_run(cluster, run: Path) -> None:
    arrays, merge = submitted(run)
    cluster.wait_until_gone([*arrays, merge], timeout=RUN_TIMEOUT)


def assert_equals_reference(run: Path, workspace: dict, shards: int) -> None:
    validation = json.loads((run / "merged" / "validation.json").read_text())
    assert validation["valid"], validation["problems"]
    report = json.loads((run / "merged" / "merge_report.json").read_text())
    assert report["identical_duplicates"] == 0, "some user was computed twice"
    assert analysis_values(run / "merged").equals(workspace["reference"])
    assert sorted(p.name for p in run.glob("shard-*")) == sorted(f"shard-{i}-of-{shards}" for i in range(shards))


def pending_after_requeue(cluster, element: str, before=lambda: None) -> dict:
    """The requeued element's record once it is pending again, with `before()` read at that moment.
    SLURM starts it again by itself once its begin time (cred_expire + 1 s) has passed."""
    record = cluster.wait_for_state(element, "PENDING", timeout=120)
    return {**record, "_state_before": before()}


def batch_files(shard_dir: Path) -> dict[str, bytes]:
    """The shard's committed batch files, name -> bytes."""
    return {path.name: path.read_bytes() for path in ShardPaths(shard_dir).batch_files()}


def element_starts(log: Path) -> int:
    """How many times an element ran for this shard (the array script's first line, once per start)."""
    return sum(line.startswith("=== ") and "SLURM job" in line for line in log.read_text().splitlines())


def faulty_env(mode: str) -> dict:
    """The environment in which tests/faulty_task.py is found and runs in `mode` ("slow:<seconds>", "fail", ...)."""
    return {"PYTHONPATH": str(Path(__file__).resolve().parents[1]), "FAULTY_TASK": mode}


def test_an_array_of_four_and_its_merge_job_equal_a_local_k1_run(slurm_cluster, workspace, tmp_path):
    config = own_config(workspace, tmp_path)
    run = tmp_path / "run"
    dry = launch(slurm_cluster, config, run, 4, "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "#SBATCH --array=0-2\n" in dry.stdout and "SHARDRUN_INDEX_OFFSET=3" in dry.stdout, dry.stdout
    assert "not submitted" in dry.stdout and not run.exists(), "a dry run writes nothing"

    result = launch(slurm_cluster, config, run, 4, "--time", "10")
    assert result.returncode == 0, result.stderr
    assert "submitted shards 0-2 of 4 as array job" in result.stdout and "submitted shards 3 of 4" in result.stdout
    assert "merge + validate job" in result.stdout
    assert len(submitted(run)[0]) == 2, "MaxArraySize 3: two arrays"
    wait_for_run(slurm_cluster, run)
    assert_equals_reference(run, workspace, 4)
    for index in range(4):
        log = (tmp_path / "logs" / f"shard{index}.log").read_text()
        assert "=== " in log and f"shard {index}/4 done (exit 0)" in log, "the element's own log: shard<i>.log"
    assert "merged" in (tmp_path / "logs" / "merge.log").read_text()

    again = launch(slurm_cluster, config, run, 4)
    assert again.returncode == 0 and "nothing to submit" in again.stdout, again.stdout


def test_two_submissions_of_one_new_run_at_once_submit_each_shard_once(slurm_cluster, workspace, tmp_path):
    """Two `launch_shards --scheduler slurm --out RUN` started together: whichever order the machine gives
    them, one submits the run and the other is refused naming it (exit 4), or finds every shard already
    in the queue; never both submit, never a record of slurm.json lost."""
    config = own_config(workspace, tmp_path)
    run = tmp_path / "run"
    both = [subprocess.Popen(submission_command(config, run, 3), env=slurm_cluster.env, cwd=tmp_path,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    said = [(p.returncode, out, err) for p in both for out, err in [p.communicate(timeout=300)]]
    assert sorted(code for code, _, _ in said) in ([0, 0], [0, 4]), "\n\n".join(
        err[err.find("error:"):] for _, _, err in said)
    for code, out, err in said:
        if code == 4:
            # the run is named whichever of the two refusals came: held right now, or started a moment ago
            held = f"launch_shards of the run {run}" in err and "already running" in err
            assert held or f"started the run {run} a moment ago" in err, err
            assert "Traceback" not in err
        elif "nothing to submit" not in out:
            assert "submitted shards 0-2 of 3" in out, out
    submissions = json.loads((run / "slurm.json").read_text())["submissions"]
    indices = sorted(i for submission in submissions for array in submission["arrays"] for i in array["indices"])
    assert indices == [0, 1, 2], submissions
    wait_for_run(slurm_cluster, run)
    assert_equals_reference(run, workspace, 3)


def test_a_submission_is_refused_while_a_local_launcher_runs_the_run_naming_it(slurm_cluster, workspace, tmp_path):
    config = own_config(workspace, tmp_path, faulty=True)
    run = tmp_path / "run"
    local = subprocess.Popen([sys.executable, "-m", "shardrun", "launch", "--config", str(config), "--shards", "2",
                              "--out", str(run), "--no-merge"], env={**os.environ, **faulty_env("slow:2")},
                             cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: (run / "run.json").is_file(), timeout=300, process=local)
        submission = launch(slurm_cluster, config, run, 2, env=faulty_env("slow:2"))
        assert submission.returncode == 4, submission.stdout + submission.stderr
        assert f'"pid": {local.pid}' in submission.stderr and "Traceback" not in submission.stderr, submission.stderr
        assert not (run / "slurm.json").exists(), "nothing may be submitted while the run runs here"
        assert local.poll() is None, "the refused submission must leave the running launcher alone"
    finally:
        local.send_signal(signal.SIGTERM)
        local.wait(timeout=300)
    assert local.returncode == 3


def test_a_cancelled_element_is_resubmitted_by_index_with_the_same_command(slurm_cluster, workspace, tmp_path):
    config = own_config(workspace, tmp_path, faulty=True)
    run = tmp_path / "run"
    env = faulty_env("slow:0.5")
    result = launch(slurm_cluster, config, run, 3, env=env)
    assert result.returncode == 0, result.stderr
    (array,), first_merge = submitted(run)
    # Cancelled once running: a pending element cancelled before SLURM gave it a job record of its own
    # leaves the queue at once, and the monitor could only say "not in the queue".
    slurm_cluster.wait_for_state(f"{array}_1", "RUNNING", timeout=120)
    slurm_cluster.scancel(f"{array}_1")
    wait_for_run(slurm_cluster, run)
    assert not (run / "merged" / "validation.json").is_file() or not json.loads(
        (run / "merged" / "validation.json").read_text())["valid"], "an incomplete run must not pass as complete"

    monitor = subprocess.run([sys.executable, "-m", "shardrun", "monitor", str(run)], env=slurm_cluster.env,
                             capture_output=True, text=True, timeout=120)
    lines = {line.split()[0]: line for line in monitor.stdout.splitlines() if line[:1].isdigit()}
    assert set(lines) == {"0/3", "1/3", "2/3"} and "slurm" in monitor.stdout, monitor.stdout
    assert "cancelled" in lines["1/3"] and "/5" in lines["1/3"], "every shard shows, with SLURM's view"
    assert "completed" in lines["0/3"], monitor.stdout

    dry = launch(slurm_cluster, config, run, 3, "--dry-run", env=env)
    assert "shard 1: to submit" in dry.stdout and "#SBATCH --array=1\n" in dry.stdout, dry.stdout
    again = launch(slurm_cluster, config, run, 3, env=env)
    assert again.returncode == 0, again.stderr
    assert "submitted shards 1 of 3 as array job" in again.stdout, again.stdout
    arrays, merge = submitted(run)
    assert len(arrays) == 2 and merge != first_merge
    wait_for_run(slurm_cluster, run)
    assert_equals_reference(run, workspace, 3)


def test_retry_failed_resubmits_only_the_shard_with_failed_users_and_runs_only_them_again(
        slurm_cluster, workspace, tmp_path):
    """Two users fail for real (faulty_task.py: user-03 and user-05, both of shard 1): the merge job's
    validation exits 5 and says so. Once the cause is gone, the same command with --retry-failed
    submits shard 1 alone, its element runs those two users again and no other, and a new merge job
    makes the run whole and valid."""
    config = own_config(workspace, tmp_path, faulty=True)
    run = tmp_path / "run"
    result = launch(slurm_cluster, config, run, 2, env=faulty_env("fail"))
    assert result.returncode == 0, result.stderr
    _arrays, first_merge = submitted(run)
    wait_for_run(slurm_cluster, run)
    assert slurm_cluster.job(first_merge)["ExitCode"] == "5:0", "the merge job's validation fails the run"
    merge_log = (tmp_path / "logs" / "merge.log").read_text()
    assert "validation passed" not in merge_log, merge_log
    assert "2 users of 14 failed (--max-failed 0): 1 HeapTooSmall" in merge_log, merge_log
    assert (f"run only them again: launch_shards --scheduler slurm --config {config} --shards 2 --out {run}"
            " --retry-failed") in merge_log, "the command run below"
    validation = json.loads((run / "merged" / "validation.json").read_text())
    assert validation["verdict"] == "failed" and validation["users"]["failed_by_class"] == {
        "HeapTooSmall": 1, "java.lang.ArrayIndexOutOfBoundsException": 1}, validation
    shard_0, shard_1 = run / "shard-0-of-2", run / "shard-1-of-2"
    assert (read_status(shard_0)["users_failed"], read_status(shard_1)["users_failed"]) == (0, 2)
    shard_0_before, shard_1_batches = read_status(shard_0), batch_files(shard_1)

    retry = launch(slurm_cluster, config, run, 2, "--retry-failed", env=faulty_env("healed"))
    assert retry.returncode == 0, retry.stderr
    assert "shard 1: to submit, to run its 2 failed users again" in retry.stdout, retry.stdout
    assert "shard 0:" not in retry.stdout and "submitted shards 1 of 2 as array job" in retry.stdout, retry.stdout
    arrays, merge = submitted(run)
    assert len(arrays) == 2 and merge != first_merge
    wait_for_run(slurm_cluster, run)
    assert slurm_cluster.job(merge)["ExitCode"] == "0:0", (tmp_path / "logs" / "merge.log").read_text()

    assert read_status(shard_0) == shard_0_before and element_starts(tmp_path / "logs" / "shard0.log") == 1
    status = read_status(shard_1)
    assert (status["resumed_with_done"], status["users_ok"], status["users_failed"]) == (5, 7, 0), status
    assert element_starts(tmp_path / "logs" / "shard1.log") == 2
    after = batch_files(shard_1)
    assert {name: after[name] for name in shard_1_batches} == shard_1_batches, "the first batches are kept as they were"
    retried = [record["user_id"] for name in sorted(after.keys() - shard_1_batches.keys())
               for record in decode_batch(after[name]).records]
    assert sorted(retried) == ["user-03", "user-05"], "only the failed users ran again"
    assert_equals_reference(run, workspace, 2)


def test_the_time_limit_warning_drains_says_preempted_and_requeues_the_element(slurm_cluster, workspace, tmp_path):
    """SLURM's `--signal=B:USR1@30` warning, sent to the batch step by scancel as SLURM does before a
    time limit: the shard finishes its user, says `preempted`, requeues its own job and, started
    again, completes."""
    config = own_config(workspace, tmp_path, faulty=True)
    run = tmp_path / "run"
    result = launch(slurm_cluster, config, run, 2, "--signal", "USR1@30", "--requeue-limit", "1",
                    env=faulty_env("slow:1.5"))
    assert result.returncode == 0, result.stderr
    (array,), _merge = submitted(run)
    shard_dir = run / "shard-0-of-2"
    wait_for(lambda: read_status(shard_dir).get("users_done", 0) >= 1, timeout=RUN_TIMEOUT)
    element = f"{array}_0"
    slurm_cluster.scancel("--batch", "--signal=USR1", element)
    wait_for(lambda: read_status(shard_dir).get("requeues") == 1, timeout=60)
    record = pending_after_requeue(slurm_cluster, element, before=lambda: read_status(shard_dir)["state"])
    assert record["Restarts"] == "1" and record["_state_before"] == "preempted", record
    wait_for_run(slurm_cluster, run)
    status = read_status(shard_dir)
    assert status["state"] == "completed" and status["requeues"] == 1, status
    assert "preempted" in (tmp_path / "logs" / "shard0.log").read_text()
    assert_equals_reference(run, workspace, 2)


@pytest.fixture()
def three_cpu_cluster():
    """A cluster of its own whose node has three CPUs, so that an array of three elements runs all at
    once (the module's cluster has the machine's CPUs, two here); requeued jobs start 11 s later."""
    cluster = started_for_test(SlurmCluster(cpus=3, cred_expire=10))
    yield cluster
    cluster.stop()


def test_the_last_element_preempted_requeues_itself_and_no_sibling(three_cpu_cluster, workspace, tmp_path):
    """The array's last element to start keeps the array's own id as its SLURM_JOB_ID, and
    `scontrol requeue <array id>` requeues every element. Warned alone (USR1 to its batch shell, as
    for a preemption), that element drains, says preempted and requeues itself alone; its siblings,
    busy at that moment, run on undisturbed: no signal, no start but their first, no requeue."""
    cluster = three_cpu_cluster
    config = own_config(workspace, tmp_path, faulty=True)
    run = tmp_path / "run"
    result = launch(cluster, config, run, 3, "--signal", "USR1@30", "--requeue-limit", "1", env=faulty_env("slow:2"))
    assert result.returncode == 0, result.stderr
    (array,), _merge = submitted(run)
    shard_dirs = [run / f"shard-{index}-of-3" for index in range(3)]
    wait_for(lambda: all(read_status(shard_dir).get("users_done", 0) >= 1 for shard_dir in shard_dirs),
             timeout=RUN_TIMEOUT)
    last = [record["ArrayTaskId"] for record in cluster.jobs(array) if record["JobId"] == array]
    assert len(last) == 1 and last[0].isdigit(), cluster.jobs(array)
    preempted = int(last[0])
    siblings = [index for index in range(3) if index != preempted]
    assert all(cluster.state(f"{array}_{index}") == "RUNNING" for index in range(3)), cluster.jobs(array)

    cluster.scancel("--batch", "--signal=USR1", f"{array}_{preempted}")
    wait_for(lambda: read_status(shard_dirs[preempted]).get("requeues") == 1, timeout=60)
    record = pending_after_requeue(cluster, f"{array}_{preempted}",
                                   before=lambda: [read_status(shard_dirs[index])["state"] for index in siblings])
    assert record["Restarts"] == "1", record
    assert record["_state_before"] == ["running", "running"], "the siblings were busy when it requeued itself"
    wait_for_run(cluster, run)

    for index in siblings:
        status, log = read_status(shard_dirs[index]), (tmp_path / "logs" / f"shard{index}.log").read_text()
        assert cluster.job(f"{array}_{index}")["Restarts"] == "0", f"shard {index}'s element was requeued:\n{log}"
        assert "SIGTERM" not in log and "stopping" not in log and "preempted" not in log, log
        assert element_starts(tmp_path / "logs" / f"shard{index}.log") == 1, log
        assert (status["state"], status["requeues"], status["resumed_with_done"]) == ("completed", 0, 0), status
    status, log = read_status(shard_dirs[preempted]), (tmp_path / "logs" / f"shard{preempted}.log").read_text()
    assert status["state"] == "completed" and status["requeues"] == 1, status
    assert element_starts(tmp_path / "logs" / f"shard{preempted}.log") == 2, log
    assert f"requeue it, job {array}_{preempted} " in log, "it named itself, not its array"
    assert_equals_reference(run, workspace, 3)


def test_the_dry_run_names_the_users_that_cannot_finish_within_the_time_limit(slurm_cluster, workspace, tmp_path):
    """Each user takes 100 s more than usual (and the task's estimate says so); an element has 1 minute
    less the 10 s warning: every user is named, and so is the time limit that would do."""
    config = own_config(workspace, tmp_path, faulty=True)
    run = tmp_path / "run"
    dry = launch(slurm_cluster, config, run, 2, "--time", "1", "--signal", "USR1@10", "--dry-run",
                 env=faulty_env("slow:100"))
    assert dry.returncode == 0, dry.stderr
    named = [line for line in dry.stdout.splitlines() if "cannot finish within --time" in line]
    assert len(named) == 14 and "user 'user-00'" in dry.stdout, dry.stdout
    assert "14 users would be abandoned at every requeue: raise --time above" in dry.stdout
    fine = launch(slurm_cluster, config, run, 2, "--time", "10", "--dry-run", env=faulty_env("slow:1"))
    assert "cannot finish" not in fine.stdout and "the longest user is estimated at" in fine.stdout
    refused = launch(slurm_cluster, config, run, 2, "--time", "1", "--signal", "USR1@60", "--dry-run")
    assert refused.returncode == 2 and "not longer than the warning's lead" in refused.stderr
