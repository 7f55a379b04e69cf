"""launch_shards with real processes and signals: restarts, deaths, --max-parallel (and its default from the cores),
--cpu-limit, --nice, orphans."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import psutil
import pytest
import yaml

from e2e_support import (
    analysis_values,
    faulty_task_config,
    read_status,
    shardrun,
    wait_for,
    write_categorical_data,
    write_config,
)
from faulty_task import MISSING_CLASS

pytestmark = pytest.mark.e2e


def start_launcher(workspace, *flags: str, config: Path | None = None,
                   env: dict | None = None) -> tuple[subprocess.Popen, Path]:
    root = workspace["root"]
    earlier = set((root / "out").glob("*_full_*"))
    launcher = subprocess.Popen(
        [sys.executable, "-m", "shardrun", "launch", "--config", str(config or workspace["config"]), *flags],
        cwd=root, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
    )

    def new_run():
        runs = [p for p in set((root / "out").glob("*_full_*")) - earlier if (p / "launcher.json").is_file()]
        return runs[0] if runs else None

    return launcher, wait_for(new_run, process=launcher)


def launcher_doc(run_dir: Path) -> dict:
    try:
        return json.loads((run_dir / "launcher.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {"shards": []}


def shard_pid_after_first_user(run_dir: Path, index: int, count: int, launcher: subprocess.Popen) -> int:
    shard_dir = run_dir / f"shard-{index}-of-{count}"
    wait_for(lambda: read_status(shard_dir).get("users_done", 0) >= 1, process=launcher)
    return launcher_doc(run_dir)["shards"][index]["pid"]


def test_a_sigkilled_shard_is_restarted_by_resuming_and_the_result_is_whole(workspace):
    launcher, run_dir = start_launcher(workspace, "--shards", "2", "--restarts", "1")
    os.kill(shard_pid_after_first_user(run_dir, 1, 2, launcher), signal.SIGKILL)
    output, _ = launcher.communicate(timeout=300)
    assert launcher.returncode == 0, output
    assert "shard 1/2 killed by SIGKILL (likely the OOM killer" in output
    assert "restarting shard 1/2 by resuming its dir (restart 1 of 1" in output
    doc = launcher_doc(run_dir)["shards"][1]
    assert doc["restarts"] == 1 and doc["exits"] == [-signal.SIGKILL, 0]
    status = read_status(run_dir / "shard-1-of-2")
    assert status["state"] == "completed" and status["resumed_with_done"] >= 1
    pd.testing.assert_frame_equal(analysis_values(run_dir / "merged"), workspace["reference"], check_exact=True)


def test_a_jvm_crash_is_recorded_with_its_report_and_the_shard_restarted(workspace, tmp_path):
    """A real JVM crash (SIGSEGV in the JVM, see faulty_task.py) at one user, once."""
    config, env = faulty_task_config(workspace, tmp_path)
    env["FAULTY_TASK"] = f"crash-once:{tmp_path / 'crashed'}"
    launcher, run_dir = start_launcher(workspace, "--shards", "2", "--restarts", "1", config=config, env=env)
    output, _ = launcher.communicate(timeout=300)
    assert launcher.returncode == 0, output
    shard_dir = run_dir / "shard-0-of-2"  # user-08 is the 9th user: index 8, shard 0 of 2
    reports = list(shard_dir.glob("hs_err_pid*.log"))
    assert len(reports) == 1 and "SIGSEGV" in reports[0].read_text()
    assert ("shard 0/2 killed by SIGABRT (a JVM crash: see hs_err_pid*.log in the shard dir);"
            f" JVM crash report: {reports[0]}") in output
    assert launcher_doc(run_dir)["shards"][0]["restarts"] == 1
    status = read_status(shard_dir)
    assert status["state"] == "completed" and status["jvm_crash_logs"] == [str(reports[0])]
    merged = analysis_values(run_dir / "merged")
    pd.testing.assert_frame_equal(merged, workspace["reference"], check_exact=True)


def test_without_restarts_the_death_is_written_into_the_shards_status(workspace):
    launcher, run_dir = start_launcher(workspace, "--shards", "2")
    os.kill(shard_pid_after_first_user(run_dir, 0, 2, launcher), signal.SIGKILL)
    output, _ = launcher.communicate(timeout=300)
    assert launcher.returncode == 70, output
    status = read_status(run_dir / "shard-0-of-2")
    assert status["state"] == "killed" and status["exit_code"] == -signal.SIGKILL
    assert "likely the OOM killer" in status["last_error"]
    assert read_status(run_dir / "shard-1-of-2")["state"] == "completed"
    # the hint is a command that works as printed
    hint = output.split("not merging: the run is incomplete. Continue it with: shardrun launch ")[1].splitlines()[0]
    assert hint == f"--config {workspace['config']} --shards 2 --out {run_dir}"
    shardrun("launch", *hint.split(), cwd=workspace["root"])
    pd.testing.assert_frame_equal(analysis_values(run_dir / "merged"), workspace["reference"], check_exact=True)


def test_max_parallel_runs_at_most_m_shards_at_once(workspace):
    launcher, run_dir = start_launcher(workspace, "--shards", "3", "--max-parallel", "1", "--nice", "7")
    most_running = 0
    niceness = set()
    while launcher.poll() is None:
        shards = launcher_doc(run_dir)["shards"]
        running = [s for s in shards if s["phase"] == "running"]
        most_running = max(most_running, len(running))
        for shard in running:
            index, count = shard["shard"].split("/")
            if read_status(run_dir / f"shard-{index}-of-{count}").get("pid") != shard["pid"]:
                continue  # not yet past its start-up, where it lowers its own priority
            try:
                niceness.add(psutil.Process(shard["pid"]).nice())
            except psutil.NoSuchProcess:
                pass
    output, _ = launcher.communicate()
    assert launcher.returncode == 0, output
    assert most_running == 1
    assert niceness == {7}
    pd.testing.assert_frame_equal(analysis_values(run_dir / "merged"), workspace["reference"], check_exact=True)


def test_on_one_core_the_shards_run_one_at_a_time_unless_max_parallel_says_otherwise(workspace, tmp_path):
    """The launcher under `taskset -c 0`: one core available, so two shards run one after the other."""
    root, config = workspace["root"], workspace["config"]
    on_core_zero = ["taskset", "-c", "0", sys.executable, "-m", "shardrun", "launch", "--config", str(config),
                    "--shards", "2"]
    out = tmp_path / "run"
    launcher = subprocess.Popen([*on_core_zero, "--out", str(out)], cwd=root, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)
    most_running = 0
    while launcher.poll() is None:
        most_running = max(most_running, sum(s["phase"] == "running" for s in launcher_doc(out)["shards"]))
    output, _ = launcher.communicate()
    assert launcher.returncode == 0, output
    assert ("cores: 2 shards on 1 core available (affinity 1; cgroup quota " in output
            and ": running at most 1 at once, 1 thread each (jvm.threads auto), the others as earlier ones finish;"
                " pass --max-parallel 2 to run all at once\n" in output), output
    assert most_running == 1 and launcher_doc(out)["max_parallel"] == 1
    pd.testing.assert_frame_equal(analysis_values(out / "merged"), workspace["reference"], check_exact=True)

    explicit = subprocess.run([*on_core_zero, "--out", str(tmp_path / "explicit"), "--max-parallel", "2", "--dry-run"],
                              cwd=root, capture_output=True, text=True, timeout=120)
    assert explicit.returncode == 0, explicit.stdout + explicit.stderr
    assert (": running at most 2 at once (--max-parallel 2), 1 thread each (jvm.threads auto);"
            " 2 threads share 1 core\n") in explicit.stdout, explicit.stdout
    assert "dry run: started no shard and wrote nothing" in explicit.stdout
    assert not (tmp_path / "explicit").exists()


def busy_config(workspace, tmp_path) -> Path:
    """The workspace config with many surrogates: shards busy for several throttle periods (2 s each)."""
    config = yaml.safe_load(workspace["config"].read_text())
    config["surrogates"] = 1500
    path = tmp_path / "busy.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def on_one_cpu(workspace, tmp_path, *flags: str) -> tuple[subprocess.Popen, Path]:
    """The launcher under `taskset -c 0` with two shards on that CPU (--max-parallel 2): whenever both run,
    the CPU is 100% busy, whatever else runs on the machine and however many CPUs it has. Its output goes
    to tmp_path/launcher.out (a pipe nobody reads while it runs could fill and block it)."""
    run_dir = tmp_path / "run"
    with open(tmp_path / "launcher.out", "w") as output:
        launcher = subprocess.Popen(
            ["taskset", "-c", "0", sys.executable, "-m", "shardrun", "launch", "--config",
             str(busy_config(workspace, tmp_path)), "--shards", "2", "--max-parallel", "2", "--out", str(run_dir),
             *flags],
            cwd=workspace["root"], stdout=output, stderr=subprocess.STDOUT)
    wait_for(lambda: (run_dir / "launcher.json").is_file(), process=launcher)
    return launcher, run_dir


def a_stopped_shard(run_dir: Path) -> int | None:
    """The pid of a shard the launcher suspended whose process is stopped, or None."""
    for shard in launcher_doc(run_dir)["shards"]:
        try:
            if shard["phase"] == "suspended" and psutil.Process(shard["pid"]).status() == psutil.STATUS_STOPPED:
                return shard["pid"]
        except psutil.NoSuchProcess:
            continue
    return None


def test_cpu_limit_suspends_down_to_one_shard_never_none_and_the_run_completes(workspace, tmp_path):
    """Two shards on one CPU keep it busier than --cpu-limit: one is suspended (its process stopped), the
    other runs on, and when it ends the suspended one is resumed and ends too. At every moment a shard
    runs; the progress line says what is suspended and why. Other programs' load only adds to the CPU's
    use, so this holds on a busy machine as on an idle one."""
    launcher, run_dir = on_one_cpu(workspace, tmp_path, "--cpu-limit", "60", "--progress-every", "1")
    suspended_pid = wait_for(lambda: a_stopped_shard(run_dir), timeout=300, process=launcher)
    suspended = [shard["pid"] for shard in launcher_doc(run_dir)["shards"]].index(suspended_pid)
    phases_seen = []
    while launcher.poll() is None:
        phases = [shard["phase"] for shard in launcher_doc(run_dir)["shards"]]
        if phases:
            phases_seen.append(phases)
        time.sleep(0.05)
    output = (tmp_path / "launcher.out").read_text()
    assert launcher.wait() == 0, output
    assert "validation passed" in output
    merged = analysis_values(run_dir / "merged")
    assert len(merged) == 28 and set(merged["status"]) == {"ok"}
    none_running = [p for p in phases_seen if "suspended" in p and "running" not in p]
    assert not none_running, f"no shard running while one was suspended: {none_running[0]}"
    assert "running" in [p[suspended] for p in phases_seen], "the suspended shard was never seen running again"
    assert launcher_doc(run_dir)["shards"][suspended]["exits"] == [0]  # resumed, not restarted
    assert " suspended by --cpu-limit 60% (the CPUs are " in output, output


def test_a_suspended_shard_does_not_outlive_a_sigkilled_launcher(workspace, tmp_path):
    launcher, run_dir = on_one_cpu(workspace, tmp_path, "--cpu-limit", "60", "--no-merge")
    wait_for(lambda: a_stopped_shard(run_dir), timeout=300, process=launcher)
    pids = [s["pid"] for s in launcher_doc(run_dir)["shards"] if s["pid"]]
    launcher.kill()
    launcher.wait()
    for pid in pids:
        wait_for(lambda pid=pid: not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE,
                 timeout=60, every=0.1)


def test_shards_die_with_a_sigkilled_launcher(workspace):
    launcher, run_dir = start_launcher(workspace, "--shards", "2", "--no-merge")
    pids = [shard_pid_after_first_user(run_dir, i, 2, launcher) for i in range(2)]
    launcher.kill()
    launcher.communicate()
    for pid in pids:
        wait_for(lambda pid=pid: not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE,
                 timeout=60, every=0.1)
    statuses = {d.name: read_status(d) for d in run_dir.glob("shard-*")}
    logs = {d.name: (d / "shard.log").read_text()[-2000:] for d in run_dir.glob("shard-*")}
    assert {doc.get("state") for doc in statuses.values()} <= {"interrupted", "completed"}, (statuses, logs)


def test_retry_failed_runs_failed_users_again(workspace, tmp_path):
    """Users that failed (real Java errors, faulty_task.py) are retried once the cause is gone."""
    root = workspace["root"]
    path, env = faulty_task_config(workspace, tmp_path)
    run = tmp_path / "run"
    first = shardrun("run", "--config", str(path), "--full", "--shard", "0/1", "--out", str(run), cwd=root,
                     check=False, env=env)
    assert first.returncode == 1
    shard_dir = run / "shard-0-of-1"
    plain = shardrun("run", "--config", str(path), "--full", "--resume", str(shard_dir), cwd=root,
                     check=False, env=env)
    assert plain.returncode == 1 and read_status(shard_dir)["users_failed"] == 2  # resume alone skips them
    healed = {**env, "FAULTY_TASK": "healed"}
    shardrun("run", "--config", str(path), "--full", "--resume", str(shard_dir), "--retry-failed", cwd=root,
             env=healed)
    status = read_status(shard_dir)
    assert (status["users_failed"], status["users_ok"], status["users_done"]) == (0, 14, 14)
    shardrun("merge", "--run", str(run), "--output", str(run / "merged"), cwd=root, env=env)
    merged = analysis_values(run / "merged")
    pd.testing.assert_frame_equal(merged, workspace["reference"], check_exact=True)


def test_failed_users_fail_the_run_and_retry_failed_runs_only_them_again(workspace, tmp_path):
    """Two users fail for real (faulty_task.py): the run exits 5 with the count by error class and the fix;
    once the cause is gone, --retry-failed runs only those two again and the run is whole and valid."""
    root = workspace["root"]
    path, env = faulty_task_config(workspace, tmp_path)
    run = tmp_path / "run"
    command = ["--config", str(path), "--shards", "2", "--out", str(run)]
    failed = shardrun("launch", *command, cwd=root, check=False, env=env)
    output = failed.stdout
    assert failed.returncode == 5, output + failed.stderr
    assert "validation passed" not in output and f"validation FAILED (1 problem(s) above): {run}/merged" in output
    assert ("2 users of 14 failed (--max-failed 0): 1 HeapTooSmall (raise jvm.xmx in the config, or --xmx),"
            " 1 java.lang.ArrayIndexOutOfBoundsException (e.g. user 'user-03': ") in output, output
    assert f"see {run}/shard-*/errors.jsonl" in output
    assert f"run only them again: launch_shards --config {path} --shards 2 --out {run} --retry-failed" in output
    assert "users: 14 in the result set: 12 ok, 0 skipped, 2 failed\n  failed by error class: 1 HeapTooSmall" in output
    written = json.loads((run / "merged" / "validation.json").read_text())
    assert written["verdict"] == "failed" and written["users"]["failed_by_class"] == {
        "HeapTooSmall": 1, "java.lang.ArrayIndexOutOfBoundsException": 1}

    tolerated = shardrun("validate", "--dir", str(run / "merged"), "--max-failed", "2", cwd=root, env=env)
    assert "12 ok, 0 skipped, 2 failed (within --max-failed 2)" in tolerated.stdout
    assert json.loads((run / "merged" / "validation.json").read_text())["verdict"] == "passed"

    healed = shardrun("launch", *command, "--retry-failed", cwd=root, env={**env, "FAULTY_TASK": "healed"})
    assert "validation passed" in healed.stdout and "14 ok, 0 skipped, 0 failed" in healed.stdout
    # user-03 and user-05 are shard 1's: it ran those two again; shard 0 had nothing to retry
    assert read_status(run / "shard-1-of-2")["resumed_with_done"] == 5
    assert read_status(run / "shard-0-of-2")["resumed_with_done"] == 7
    pd.testing.assert_frame_equal(analysis_values(run / "merged"), workspace["reference"], check_exact=True)


def test_shards_that_fail_fast_are_not_restarted_and_the_run_fails_until_retried(workspace, tmp_path):
    """Every user fails alike (a class on no classpath, as when a task's jar is missing): each shard stops
    after its first 3 users, the launcher does not restart them, and the run is not valid."""
    root = workspace["root"]
    path, env = faulty_task_config(workspace, tmp_path)
    run = tmp_path / "run"
    command = ["--config", str(path), "--shards", "2", "--out", str(run)]
    stopped = shardrun("launch", *command, "--fail-fast", "3", "--restarts", "2", cwd=root, check=False,
                       env={**env, "FAULTY_TASK": "missing-class"})
    output = stopped.stdout
    assert stopped.returncode == 5, output + stopped.stderr
    assert "validation passed" not in output and "restarting" not in output
    for index in range(2):
        assert (f"shard {index}/2: stopped early: its first users all failed alike (fail fast); 3/7 users (0 ok,"
                f" 0 skipped, 3 failed)") in output, output
        assert (f"      shard {index}/2 stopped (fail fast): its first 3 users all failed with TypeError (e.g."
                f" TypeError: Class {MISSING_CLASS} is not found)") in output
        assert launcher_doc(run)["shards"][index]["exits"] == [1]
    assert "6 users of 6 failed (--max-failed 0): 6 TypeError" in output
    assert "user 'user-13' has no results (planned in shard 1/2)" in output  # never run: not a result either

    healed = shardrun("launch", *command, "--retry-failed", cwd=root, env={**env, "FAULTY_TASK": "healed"})
    assert "validation passed" in healed.stdout
    pd.testing.assert_frame_equal(analysis_values(run / "merged"), workspace["reference"], check_exact=True)


def test_a_run_whose_every_user_was_skipped_is_not_valid(workspace, tmp_path):
    """Three observations per user, fewer than the analysis needs: every user skipped, nothing analysed."""
    data = tmp_path / "short.csv"
    write_categorical_data(data, n_users=6, n_rows=3)
    config = write_config(tmp_path / "short.yaml", data, tmp_path)
    done = shardrun("launch", "--config", str(config), "--shards", "2", cwd=tmp_path, check=False)
    assert done.returncode == 5, done.stdout + done.stderr
    assert "validation passed" not in done.stdout
    assert "nothing was analysed: every one of the 6 users was skipped (6 'only 3 observations; needs at least" \
        in done.stdout, done.stdout
    assert "users: 6 in the result set: 0 ok, 6 skipped, 0 failed\n  skipped by reason: 6 'only 3 observations;" \
        in done.stdout
    (run_dir,) = (tmp_path / "out").iterdir()
    written = json.loads((run_dir / "merged" / "validation.json").read_text())
    assert written["valid"] is False and written["users"]["skipped"] == 6 and written["users"]["ok"] == 0
