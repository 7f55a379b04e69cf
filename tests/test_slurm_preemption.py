"""SLURM's own preemption, live: a real single-node SLURM (tests/slurm_cluster.py) configured as an
admin would for preemption (docs/CLUSTER.md, "Preemption"): PreemptType=preempt/partition_prio,
PreemptMode=REQUEUE, a low partition with a GraceTime and a high one on the same node.

A run is submitted to the low partition with the project's own command; once every element is busy,
a one-CPU job of the high partition preempts exactly one element. That element must drain, keep every
user it committed, be requeued exactly once (by SLURM or by itself, never both: SLURM's Restarts and
status.json's requeues both say 1), run again and complete; its siblings run on undisturbed; the
merged result equals the uninterrupted local K=1 reference.

- With SlurmctldParameters=preempt_send_user_signal, the element's --signal (USR1) comes at the
  preemption; the shard drains within the grace time and requeues itself (SLURM would not: a job that
  ends during its grace time is left COMPLETED, measured in docs/CLUSTER_TESTS.md).
- Without it, the element hears nothing until the grace time ends, then SIGTERM, with SLURM's requeue
  already under way: the shard drains as for any TERM, says preempted, counts SLURM's requeue and
  asks for none.
"""

from __future__ import annotations

import pytest

from e2e_support import read_status, wait_for
from slurm_cluster import SlurmCluster, SlurmClusterError
from test_slurm import (
    RUN_TIMEOUT, assert_equals_reference, batch_files, faulty_env, launch, own_config,
    pending_after_requeue, submitted, wait_for_run,
)

pytestmark = pytest.mark.e2e


def preemption_config(grace_seconds: int, user_signal: bool) -> str:
    """The slurm.conf lines of docs/CLUSTER.md's "Preemption" for the test node `localhost`."""
    return "\n".join([
        "PreemptType=preempt/partition_prio",
        "PreemptMode=REQUEUE",
        *(["SlurmctldParameters=preempt_send_user_signal"] if user_signal else []),
        f"PartitionName=low Nodes=localhost PriorityTier=1 PreemptMode=REQUEUE GraceTime={grace_seconds}"
        " MaxTime=INFINITE State=UP",
        "PartitionName=high Nodes=localhost PriorityTier=10 PreemptMode=OFF MaxTime=INFINITE State=UP",
        "",
    ])


@pytest.fixture()
def preemption_cluster():
    """Starts a cluster of this test's own (cpus, grace time, with or without the user signal) and stops
    it at the end. A requeued element may start again 6 s after its requeue (cred_expire=5)."""
    started = []

    def start(cpus: int, grace_seconds: int, user_signal: bool, kill_wait: int = 5) -> SlurmCluster:
        cluster = SlurmCluster(cpus=cpus, cred_expire=5, kill_wait=kill_wait,
                               extra_config=preemption_config(grace_seconds, user_signal))
        started.append(cluster)
        try:
            return cluster.start()
        except SlurmClusterError as error:
            pytest.fail(f"no SLURM cluster for this test: {error}", pytrace=False)

    yield start
    for cluster in started:
        cluster.stop()


def preempt_one_element(cluster, workspace, tmp_path, shards: int, signal: str, slow: str) -> dict:
    """Submit a run of `shards` elements to the low partition; once each has committed a user, a one-CPU
    high job preempts one of them. Returns what the test checks, the run complete."""
    config = own_config(workspace, tmp_path, faulty=True)
    run = tmp_path / "run"
    result = launch(cluster, config, run, shards, "--partition", "low", "--signal", signal, env=faulty_env(slow))
    assert result.returncode == 0, result.stderr
    (array,), _merge = submitted(run)
    shard_dirs = [run / f"shard-{index}-of-{shards}" for index in range(shards)]
    wait_for(lambda: all(read_status(shard_dir).get("users_done", 0) >= 1 for shard_dir in shard_dirs),
             timeout=RUN_TIMEOUT)
    assert all(cluster.state(f"{array}_{index}") == "RUNNING" for index in range(shards)), cluster.jobs(array)
    committed_before = [batch_files(shard_dir) for shard_dir in shard_dirs]

    high = cluster.sbatch("--partition=high", "--ntasks=1", "--cpus-per-task=1", "--mem=100M",
                          "--nodelist=localhost", f"--output={tmp_path / 'high.log'}", "--wrap=sleep 5")
    preempted = wait_for(lambda: [int(record["ArrayTaskId"]) for record in cluster.jobs(array)
                                  if record.get("PreemptTime", "None") != "None" or record.get("Restarts") != "0"],
                         timeout=60, every=0.2)
    assert len(preempted) == 1, f"one element preempted, not {preempted}: {cluster.jobs(array)}"
    index = preempted[0]
    element = f"{array}_{index}"
    record = pending_after_requeue(cluster, element, before=lambda: read_status(shard_dirs[index]))
    wait_for_run(cluster, run)
    assert cluster.job(high)["JobState"] == "COMPLETED", cluster.job(high)
    return {"run": run, "array": array, "index": index, "element": element, "shard_dirs": shard_dirs,
            "pending": record, "committed_before": committed_before,
            "logs": [(tmp_path / "logs" / f"shard{i}.log").read_text() for i in range(shards)]}


def assert_requeued_once_and_siblings_undisturbed(cluster, seen: dict, workspace, shards: int) -> None:
    index, shard_dirs, logs = seen["index"], seen["shard_dirs"], seen["logs"]
    before_restart = seen["pending"]["_state_before"]
    assert seen["pending"]["Restarts"] == "1", seen["pending"]
    assert before_restart.get("users_todo", 0) > 0, "no users were left to preempt: make the users slower"
    assert before_restart["state"] == "preempted" and before_restart["requeues"] == 1, before_restart
    assert "second SIGTERM" not in logs[index] and "abandoned" not in logs[index], "it drained in time"

    for shard, shard_dir in enumerate(shard_dirs):
        after = batch_files(shard_dir)
        kept = {name: after.get(name) for name in seen["committed_before"][shard]}
        assert kept == seen["committed_before"][shard], f"shard {shard} lost or changed a committed batch"
    status = read_status(shard_dirs[index])
    assert cluster.job(seen["element"])["Restarts"] == "1", "requeued once: by SLURM or by itself, not both"
    assert (status["state"], status["requeues"]) == ("completed", 1), status
    assert status["resumed_with_done"] >= 1 and element_starts_in(logs[index]) == 2, logs[index]
    for sibling in (shard for shard in range(shards) if shard != index):
        status, log = read_status(shard_dirs[sibling]), logs[sibling]
        assert cluster.job(f"{seen['array']}_{sibling}")["Restarts"] == "0", f"shard {sibling} was requeued:\n{log}"
        assert "SIGTERM" not in log and "SIGUSR1" not in log and "preempted" not in log, log
        assert element_starts_in(log) == 1, log
        assert (status["state"], status["requeues"], status["resumed_with_done"]) == ("completed", 0, 0), status
    assert_equals_reference(seen["run"], workspace, shards)


def element_starts_in(log_text: str) -> int:
    return sum(line.startswith("=== ") and "SLURM job" in line for line in log_text.splitlines())


def test_a_high_job_preempts_one_element_which_drains_on_its_signal_and_requeues_itself_once(
        preemption_cluster, workspace, tmp_path):
    """preempt_send_user_signal: USR1 at the preemption, a grace time of 20 s, shorter than the
    signal's lead (60 s), which the shard reads from SLURM's record of its job and drains within;
    users of 4 s each. The element finishes its user in flight, commits, and requeues itself (its log
    says so) well before the grace time's end, so SLURM's own requeue never comes."""
    cluster = preemption_cluster(cpus=3, grace_seconds=20, user_signal=True)
    seen = preempt_one_element(cluster, workspace, tmp_path, shards=3, signal="USR1@60", slow="slow:4")
    log = seen["logs"][seen["index"]]
    assert "SIGUSR1 received" in log and "SLURM's grace time for this preemption ends in" in log, log
    assert f"asks SLURM to requeue it, job {seen['element']} (" in log, log
    assert "preempted by SLURM at" in log, "it knew the preemption from SLURM's record of its job"
    assert "SLURM requeued its job itself" not in log, log
    assert_requeued_once_and_siblings_undisturbed(cluster, seen, workspace, shards=3)


def test_without_the_user_signal_the_grace_time_s_sigterm_alone_drains_and_slurm_requeues(
        preemption_cluster, workspace, tmp_path):
    """No preempt_send_user_signal: nothing at the preemption, SIGTERM when the grace time (5 s) ends,
    which slurmctld notices within 30 s, the KILL KillWait (15 s) later. The element finishes its user
    in flight (8 s), commits, says preempted and counts SLURM's requeue without asking for another.
    Two elements of 7 users on two CPUs, so that the preempted one still has users left (48 s of them)
    when the TERM comes."""
    cluster = preemption_cluster(cpus=2, grace_seconds=5, user_signal=False, kill_wait=15)
    seen = preempt_one_element(cluster, workspace, tmp_path, shards=2, signal="USR1@60", slow="slow:8")
    log = seen["logs"][seen["index"]]
    assert "SIGUSR1" not in log and "SIGTERM received" in log, log
    assert "SLURM requeued its job itself" in log and "asks SLURM to requeue" not in log, log
    assert_requeued_once_and_siblings_undisturbed(cluster, seen, workspace, shards=2)
