"""The scheduler's warning signal (run_production --preempt-signal): real processes, real signals, the real JVM.

A user's analysis here spends seconds inside one Java call (tests/faulty_task.py, "slow:<s>"), as a
long JIDT computation does, so Python's own signal handler cannot run until the call returns: the
lead time must still be kept.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import pytest

from shardrun.errors import EXIT_OK, EXIT_PREEMPTED, SchedulerError
from shardrun.scheduler.slurm import JobRecord, SlurmCommands, job_record_of, own_slurm_job, parse_job_record
from shardrun.shard.lifecycle import (
    PreemptionNotice,
    decide_requeue,
    grace_seconds_left,
    read_own_job,
    requeue_slurm_job,
    requeued_by_slurm,
    restart_count,
)

from e2e_support import analysis_values, faulty_task_config, read_status, shardrun, wait_for
from store_support import committed_users


def record_of(text: str):
    """scontrol's text of one job -> what a stopping element decides on."""
    return job_record_of(parse_job_record(text))

pytestmark = pytest.mark.e2e


def start_shard(config: Path, env: dict, out: Path, *flags: str) -> subprocess.Popen:
    command = [sys.executable, "-m", "shardrun", "run", "--config", str(config), "--full", "--shard", "0/2",
               "--out", str(out), "--heartbeat", "0.5", *flags]
    return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def committed(shard_dir: Path) -> set[str]:
    return set(committed_users(shard_dir))


def in_flight(shard_dir: Path) -> str | None:
    return read_status(shard_dir).get("current_user")


@pytest.mark.parametrize("signal_name", ["USR1", "USR2", "TERM"])
def test_warning_signal_drains_within_the_lead_and_says_preempted(workspace, tmp_path, signal_name):
    """The user in flight (2 s) ends well within the lead (60 s): it is committed, then the shard stops as
    `preempted` (exit 7) without asking anyone to requeue it (no SLURM job); the same command finishes it.
    USR2 counts only because the JVM is kept off it (platforms.keep_usr2_from_jvm)."""
    config, env = faulty_task_config(workspace, tmp_path)
    out = tmp_path / "run"
    shard_dir = out / "shard-0-of-2"
    slow = {**env, "FAULTY_TASK": "slow:2"}
    process = start_shard(config, slow, out, "--preempt-signal", signal_name, "--preempt-lead", "60")
    first = wait_for(lambda: in_flight(shard_dir), timeout=120, process=process)
    process.send_signal(getattr(signal, f"SIG{signal_name}"))
    output, _ = process.communicate(timeout=60)
    assert process.returncode == EXIT_PREEMPTED, output
    status = read_status(shard_dir)
    assert status["state"] == "preempted" and status["requeues"] == 0, status
    assert first in committed(shard_dir), "the user in flight ended in time: kept"
    assert status["users_todo"] > 0 and "not a SLURM job" in output

    again = shardrun("run", "--config", str(config), "--full", "--shard", "0/2", "--out", str(out), cwd=tmp_path,
                     env={**env, "FAULTY_TASK": "healed"})
    assert again.returncode == EXIT_OK and read_status(shard_dir)["state"] == "completed"


def test_a_user_that_cannot_end_within_the_lead_is_abandoned_uncommitted(workspace, tmp_path):
    """Each user spends 60 s in one Java call; the lead is 4 s (abandoned after 2 s). The shard leaves
    in time, the user in flight uncommitted and the status `preempted`; the run, finished afterwards,
    equals the uninterrupted reference."""
    config, env = faulty_task_config(workspace, tmp_path)
    out = tmp_path / "run"
    shard_dir = out / "shard-0-of-2"
    process = start_shard(config, {**env, "FAULTY_TASK": "slow:60"}, out, "--preempt-signal", "USR1",
                          "--preempt-lead", "4")
    user = wait_for(lambda: in_flight(shard_dir), timeout=120, process=process)
    sent = time.monotonic()
    process.send_signal(signal.SIGUSR1)
    output, _ = process.communicate(timeout=30)
    took = time.monotonic() - sent
    assert process.returncode == EXIT_PREEMPTED, output
    assert took < 4, f"left {took:.1f} s after the warning: past the lead"
    status = read_status(shard_dir)
    assert status["state"] == "preempted" and status["current_user"] is None
    assert "abandoned uncommitted" in status["last_error"] and user in status["last_error"]
    assert committed(shard_dir) == set(), "nothing of the abandoned user may be committed"

    healed = {**env, "FAULTY_TASK": "healed"}
    for index in (0, 1):
        shardrun("run", "--config", str(config), "--full", "--shard", f"{index}/2", "--out", str(out),
                 cwd=tmp_path, env=healed)
    shardrun("merge", "--run", str(out), "--output", str(out / "merged"), cwd=tmp_path, env=env)
    assert analysis_values(out / "merged").equals(workspace["reference"])


def test_requeue_is_asked_while_users_are_left_and_bounded():
    env = {"SLURM_JOB_ID": "42"}
    assert decide_requeue(users_todo=3, requeues_done=0, limit=3, env=env).requeue
    assert not decide_requeue(users_todo=0, requeues_done=0, limit=3, env=env).requeue
    bounded = decide_requeue(users_todo=3, requeues_done=3, limit=3, env=env)
    assert not bounded.requeue and "launch_shards --scheduler slurm" in bounded.reason
    assert not decide_requeue(users_todo=3, requeues_done=0, limit=3, env={}).requeue


@pytest.mark.parametrize("env, job", [
    ({"SLURM_JOB_ID": "42"}, "42"),  # a plain job
    ({"SLURM_JOB_ID": "43", "SLURM_ARRAY_JOB_ID": "40", "SLURM_ARRAY_TASK_ID": "0"}, "40_0"),  # an element
    # The array's last element keeps the array's id: that id alone would requeue every element.
    ({"SLURM_JOB_ID": "40", "SLURM_ARRAY_JOB_ID": "40", "SLURM_ARRAY_TASK_ID": "3"}, "40_3"),
    ({"SLURM_JOB_ID": "43", "SLURM_ARRAY_JOB_ID": "40"}, "43"),  # no task id: the job's own id
    ({"SLURM_JOB_ID": "43", "SLURM_ARRAY_TASK_ID": "3"}, "43"),  # no array id: likewise
    ({"SLURM_ARRAY_JOB_ID": "40", "SLURM_ARRAY_TASK_ID": "3"}, "40_3"),
    ({"SLURM_JOB_ID": "", "SLURM_ARRAY_JOB_ID": "", "SLURM_ARRAY_TASK_ID": ""}, None),
    ({}, None),  # not a SLURM job
])
def test_an_element_names_itself_alone(env, job):
    assert own_slurm_job(env) == job
    assert decide_requeue(users_todo=3, requeues_done=0, limit=3, env=env).requeue == (job is not None)


def test_the_last_element_requeues_itself_not_its_array():
    """Stands in for scontrol (the real one is exercised by tests/scheduler/test_slurm.py): the command it is given."""
    commands = []

    def recording_scontrol(command, **_kwargs):
        commands.append(command)
        return subprocess.CompletedProcess(command, 0, "", "")

    env = {"SLURM_JOB_ID": "40", "SLURM_ARRAY_JOB_ID": "40", "SLURM_ARRAY_TASK_ID": "3"}
    assert requeue_slurm_job(env, SlurmCommands(run=recording_scontrol)) == "40_3"
    assert commands == [["scontrol", "requeue", "40_3"]]


def test_a_refused_requeue_names_the_scheduler_s_words():
    """Stands in for scontrol (the real one is exercised by tests/scheduler/test_slurm.py): its refusal is reported."""
    def refusing_scontrol(command, **_kwargs):
        return subprocess.CompletedProcess(command, 1, "", "scontrol: error: Requested operation is disabled\n")

    with pytest.raises(SchedulerError, match="Requested operation is disabled"):
        requeue_slurm_job({"SLURM_JOB_ID": "42"}, SlurmCommands(run=refusing_scontrol))


# `scontrol --oneliner show job 1_0` as SLURM 22.05 printed it (shortened) for a preempted element of
# a low partition with GraceTime=20: during the grace time, and once the grace time had ended.
DURING_GRACE = ("JobId=2 ArrayJobId=1 ArrayTaskId=0 JobName=x JobState=RUNNING Reason=None Dependency=(null)"
                " Requeue=1 Restarts=0 BatchFlag=1 RunTime=00:00:04 TimeLimit=UNLIMITED"
                " StartTime=2026-12-07T11:42:56 EndTime=2026-12-07T11:42:20 PreemptEligibleTime=2026-12-07T11:38:22"
                " PreemptTime=2026-12-07T11:42:00 SuspendTime=None Partition=low")
GRACE_ENDED = ("JobId=2 ArrayJobId=1 ArrayTaskId=0 JobName=x JobState=COMPLETING Reason=None Dependency=(null)"
               " Requeue=1 Restarts=1 BatchFlag=1 EndTime=Unknown PreemptEligibleTime=2026-12-07T11:38:22"
               " PreemptTime=None SuspendTime=None Partition=low")
NOT_PREEMPTED = DURING_GRACE.replace("PreemptTime=2026-12-07T11:42:00", "PreemptTime=None")
ELEMENT = {"SLURM_JOB_ID": "2", "SLURM_ARRAY_JOB_ID": "1", "SLURM_ARRAY_TASK_ID": "0"}


def test_scontrol_s_record_says_preempted_and_requeued():
    assert record_of(DURING_GRACE) == JobRecord("RUNNING", 0, "2026-12-07T11:42:00", "2026-12-07T11:42:20")
    assert record_of(GRACE_ENDED) == JobRecord("COMPLETING", 1, None, None)
    assert record_of(NOT_PREEMPTED).preempt_time is None
    assert record_of("") is None and record_of("slurm_load_jobs error: Invalid job id") is None


def test_the_grace_time_left_is_read_from_a_preempted_job_s_end_time_only():
    """EndTime is the preemption + GraceTime once SLURM preempts; before, it is the time limit's end,
    which the warning's lead already stands for."""
    now = datetime(2026, 12, 7, 11, 42, 5)
    assert grace_seconds_left(record_of(DURING_GRACE), now) == 15.0
    assert grace_seconds_left(record_of(NOT_PREEMPTED), now) is None
    assert grace_seconds_left(record_of(GRACE_ENDED), now) is None
    assert grace_seconds_left(None, now) is None
    assert grace_seconds_left(JobRecord("RUNNING", 0, "2026-12-07T11:42:00", "soon"), now) is None


@pytest.mark.parametrize("record, restart, by_slurm", [
    (GRACE_ENDED, None, True),  # SLURM's record counts a run newer than this one (the first)
    (GRACE_ENDED, "1", False),  # this run is the one it counts
    (DURING_GRACE, None, False),
    (None, None, False),  # no record: not known
])
def test_a_requeue_by_slurm_is_told_by_the_restart_count(record, restart, by_slurm):
    env = {**ELEMENT, **({"SLURM_RESTART_COUNT": restart} if restart else {})}
    assert restart_count(env) == int(restart or 0)
    assert requeued_by_slurm(record_of(record) if record else None, env) == by_slurm


def test_a_requeue_slurm_does_itself_is_never_asked_again_and_its_preemption_is_requeued_past_the_limit():
    """Measured (docs/dev/CLUSTER_TESTS.md): SLURM requeues a preempted job itself only when its grace time
    ends with the job running, and refuses a second requeue then; a job that ends during the grace
    time is not requeued (COMPLETED or FAILED), so a shard that drained in time asks."""
    ended = decide_requeue(users_todo=3, requeues_done=0, limit=3, env=ELEMENT, record=record_of(GRACE_ENDED))
    assert not ended.requeue and ended.requeued_by_slurm and "runs again without asking" in ended.reason
    during = decide_requeue(users_todo=3, requeues_done=3, limit=3, env=ELEMENT, record=record_of(DURING_GRACE))
    assert during.requeue and not during.requeued_by_slurm and "preempted by SLURM" in during.reason
    warned = decide_requeue(users_todo=3, requeues_done=3, limit=3, env=ELEMENT, record=record_of(NOT_PREEMPTED))
    assert not warned.requeue and "--requeue-limit 3" in warned.reason, "a time-limit warning stays bounded"
    done = decide_requeue(users_todo=0, requeues_done=0, limit=3, env=ELEMENT, record=record_of(DURING_GRACE))
    assert not done.requeue and not done.requeued_by_slurm


def test_the_element_reads_its_own_record_and_goes_on_without_it_when_scontrol_fails():
    """Stands in for scontrol (the real one is exercised by tests/scheduler/test_slurm_preemption.py)."""
    commands = []

    def answering_scontrol(command, **kwargs):
        commands.append((command, kwargs["timeout"]))
        return subprocess.CompletedProcess(command, 0, GRACE_ENDED + "\n", "")

    def failing_scontrol(command, **_kwargs):
        return subprocess.CompletedProcess(command, 1, "", "slurm_load_jobs error: Unable to contact slurm controller")

    assert read_own_job(ELEMENT, SlurmCommands(run=answering_scontrol)) == JobRecord("COMPLETING", 1, None)
    (command, timeout), = commands
    assert command == ["scontrol", "--oneliner", "show", "job", "1_0"] and timeout <= 30
    assert read_own_job(ELEMENT, SlurmCommands(run=failing_scontrol)) is None
    assert read_own_job({}, SlurmCommands(run=failing_scontrol)) is None


@pytest.mark.parametrize("lead, after", [(120.0, 108.0), (30.0, 25.0), (4.0, 2.0)])
def test_the_drain_keeps_a_margin_before_the_kill(lead, after):
    assert PreemptionNotice(signal.SIGUSR1, lead).abandon_after == pytest.approx(after)
