"""SLURM's own preemption, live: a real SLURM (tests/slurm_cluster.py) configured as an admin would for
preemption (docs/CLUSTER.md, "Preemption"): PreemptType=preempt/partition_prio, PreemptMode=REQUEUE, a
low partition with a GraceTime and a high one on the same nodes.

A run is submitted to the low partition with the project's own command; once every element is busy,
a one-CPU job of the high partition pinned to one node preempts exactly one element: on two nodes of
2 and 1 CPUs (filled in that order), the element alone on nodeb. That element must drain, keep every
user it committed, be requeued exactly once (by SLURM or by itself, never both: SLURM's Restarts and
status.json's requeues both say 1), run again and complete; its siblings run on undisturbed; the
merged result equals the uninterrupted local K=1 reference.

- With SlurmctldParameters=preempt_send_user_signal, the element's --signal (USR1) comes at the
  preemption; the shard drains within the grace time and requeues itself (SLURM would not: a job that
  ends during its grace time is left COMPLETED, measured in docs/dev/CLUSTER_TESTS.md).
- Without it, the element hears nothing until the grace time ends, then SIGTERM, with SLURM's requeue
  already under way: the shard drains as for any TERM, says preempted, counts SLURM's requeue and
  asks for none.
"""

from __future__ import annotations

import os
import signal
import time

import pytest

from e2e_support import read_status, wait_for
from slurm_cluster import SlurmCluster, started_for_test
from test_slurm import (
    RUN_TIMEOUT,
    assert_equals_reference,
    batch_files,
    faulty_env,
    launch,
    own_config,
    pending_after_requeue,
    submitted,
    wait_for_run,
)

pytestmark = pytest.mark.e2e


def preemption_config(grace_seconds: int, user_signal: bool, nodes: str) -> str:
    """The slurm.conf lines of docs/CLUSTER.md's "Preemption" for the test's nodes."""
    return "\n".join([
        "PreemptType=preempt/partition_prio",
        "PreemptMode=REQUEUE",
        *(["SlurmctldParameters=preempt_send_user_signal"] if user_signal else []),
        f"PartitionName=low Nodes={nodes} PriorityTier=1 PreemptMode=REQUEUE GraceTime={grace_seconds}"
        " MaxTime=INFINITE State=UP",
        f"PartitionName=high Nodes={nodes} PriorityTier=10 PreemptMode=OFF MaxTime=INFINITE State=UP",
        "",
    ])


@pytest.fixture()
def preemption_cluster():
    """Starts a cluster of this test's own (cpus, grace time, with or without the user signal) and stops
    it at the end. A requeued element may start again 6 s after its requeue (cred_expire=5)."""
    started = []

    def start(cpus: int | dict[str, int], grace_seconds: int, user_signal: bool, kill_wait: int = 5) -> SlurmCluster:
        nodes = cpus if isinstance(cpus, dict) else None
        cluster = SlurmCluster(cpus=None if nodes else cpus, nodes=nodes, cred_expire=5, kill_wait=kill_wait,
                               extra_config=preemption_config(grace_seconds, user_signal,
                                                              ",".join(nodes) if nodes else "localhost"))
        started.append(cluster)
        return started_for_test(cluster)

    yield start
    for cluster in started:
        cluster.stop()


def preempt_one_element(cluster, workspace, tmp_path, shards: int, signal: str, slow: str,
                        node: str = "localhost") -> dict:
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
                          f"--nodelist={node}", f"--output={tmp_path / 'high.log'}", "--wrap=sleep 5")
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
    cluster = preemption_cluster(cpus={"nodea": 2, "nodeb": 1}, grace_seconds=20, user_signal=True)
    seen = preempt_one_element(cluster, workspace, tmp_path, shards=3, signal="USR1@60", slow="slow:4", node="nodeb")
    assert " on nodeb, restart 0" in seen["logs"][seen["index"]], "the element alone on nodeb was the one preempted"
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


def test_the_field_check_on_two_nodes_preemption_a_killed_element_continuing_elsewhere_and_the_same_command(
        preemption_cluster, workspace, tmp_path):
    """The issue's check as a user would run it, on two nodes (nodea of 3 CPUs, nodeb of 2) with preemption
    configured and the lease as the shard lock (SHARDRUN_LOCK=lease, as on a filesystem without locks):
    `launch_shards --scheduler slurm --shards 4 --partition low`; an element on nodea SIGKILLed, requeued
    and started at once on nodeb (its lease's holder is judged by SLURM, not by the 120 s heartbeat); one
    element on nodeb preempted by a high job pinned there; then the same command again. The merged result
    equals the local K=1 run, exactly 4 shard dirs, no sibling signalled or requeued, and only the
    preempted element's requeues rose."""
    cluster = preemption_cluster(cpus={"nodea": 3, "nodeb": 2}, grace_seconds=30, user_signal=True)
    config = own_config(workspace, tmp_path, faulty=True)
    run = tmp_path / "run"
    # Every element keeps running (its users after the first held) until the high job has preempted one:
    # on a busy machine an element on nodeb could otherwise end before the high job comes, leaving it a
    # free CPU and nothing to preempt.
    hold = tmp_path / "hold"
    hold.touch()
    env = {**faulty_env("slow:3"), "SHARDRUN_LOCK": "lease", "FAULTY_HOLD": str(hold)}
    result = launch(cluster, config, run, 4, "--partition", "low", "--signal", "USR1@60", env=env)
    assert result.returncode == 0, result.stderr
    (array,), _merge = submitted(run)
    shard_dirs = [run / f"shard-{index}-of-4" for index in range(4)]
    wait_for(lambda: all(read_status(shard_dir).get("users_done", 0) >= 1 for shard_dir in shard_dirs),
             timeout=RUN_TIMEOUT)
    nodes = {int(record["ArrayTaskId"]): record["NodeList"] for record in cluster.jobs(array)}
    assert sorted(nodes.values()) == ["nodea", "nodea", "nodea", "nodeb"], nodes

    killed = next(index for index, node in nodes.items() if node == "nodea")
    element = f"{array}_{killed}"
    committed = batch_files(shard_dirs[killed])
    os.kill(read_status(shard_dirs[killed])["pid"], signal.SIGKILL)
    cluster.wait_for_state(element, ("FAILED", "COMPLETED", "PENDING"), timeout=60)
    cluster.scontrol("requeue", element)
    cluster.wait_for_state(element, "PENDING", timeout=60)
    cluster.scontrol("update", f"JobId={element}", "ReqNodeList=nodeb")
    cluster.start_now(element)
    moved = time.monotonic()
    wait_for(lambda: read_status(shard_dirs[killed]).get("host") == "nodeb"
             and read_status(shard_dirs[killed]).get("resumed_with_done", 0) >= len(committed), timeout=120)
    continued_after = time.monotonic() - moved
    assert continued_after < 60, f"the killed element continued on nodeb {continued_after:.0f} s after its requeue"

    high = cluster.sbatch("--partition=high", "--ntasks=1", "--cpus-per-task=1", "--mem=100M", "--nodelist=nodeb",
                          f"--output={tmp_path / 'high.log'}", "--wrap=sleep 5")
    preempted = wait_for(lambda: [int(record["ArrayTaskId"]) for record in cluster.jobs(array)
                                  if record.get("PreemptTime", "None") != "None"], timeout=60, every=0.2)
    hold.unlink()
    assert len(preempted) == 1, cluster.jobs(array)
    wait_for_run(cluster, run)
    assert cluster.job(high)["JobState"] == "COMPLETED"

    again = launch(cluster, config, run, 4, "--partition", "low", "--signal", "USR1@60", env=env)
    assert again.returncode == 0 and "nothing to submit" in again.stdout, again.stdout + again.stderr
    assert_equals_reference(run, workspace, 4)
    after = batch_files(shard_dirs[killed])
    assert {name: after[name] for name in committed} == committed, "the killed element's commits were kept"
    for index, shard_dir in enumerate(shard_dirs):
        status, log = read_status(shard_dir), (tmp_path / "logs" / f"shard{index}.log").read_text()
        expected = 1 if index == preempted[0] else 0
        assert status["state"] == "completed" and status["requeues"] == expected, (index, status)
        if index not in (preempted[0], killed):
            assert "SIGTERM" not in log and "SIGUSR1" not in log and cluster.job(f"{array}_{index}")["Restarts"] == "0"
