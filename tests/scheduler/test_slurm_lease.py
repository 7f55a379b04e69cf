"""A shard's lease held by a SLURM job, on a real cluster (tests/slurm_cluster.py): the newcomer asks SLURM
(scontrol, through scheduler/slurm.py) instead of waiting out the heartbeat (storage/lock.py).

- A holder paused with SIGSTOP while its job still runs on its node is never taken over, even once
  its heartbeat is older than the stale time; once its job is requeued (or cancelled) a newcomer takes
  the lease over at once, with a stale time (600 s) that the heartbeat could not have reached.
- The same element restarted after a requeue takes its own earlier run's lease over at once.

The processes are tests/lease_contender.py: a shard's lock as shard/run.py builds it, SHARDRUN_LOCK=lease,
with flock failing as on NFS without locks (a stand-in: on one kernel flock works across the test
cluster's "nodes" and would refuse the newcomer by itself, so the lease's rule would not be tested).

Where they run is each scenario's parameters: `holder_node`, `newcomer_node` (None: a process on this
machine outside SLURM, as a resume from a login node) and `pretend`. On this single-node cluster every
process is on node `localhost`, on this machine under its own host name, so `pretend` gives each
contender's lease a host name of its own (a stand-in for another host). On a two-node cluster
(nodes `nodea` and `nodeb` with their own host names) the same scenarios run with holder_node="nodea",
newcomer_node="nodeb", pretend=False, and the restarted element moved to nodeb (`restart_on`).
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path

import psutil
import pytest

from shardrun.storage.lock import read_lease

from slurm_cluster import SlurmCluster, started_for_test

pytestmark = pytest.mark.e2e

CONTENDER = Path(__file__).resolve().parents[1] / "lease_contender.py"
PYTHON = sys.executable
SHORT_STALE, LONG_STALE = 2, 600  # seconds: a heartbeat that goes stale in the test, and one that cannot


@pytest.fixture(scope="module")
def slurm_cluster():
    """This module's own single-node cluster, whose requeued jobs may start again 6 s after the requeue
    (cred_expire=5, SLURM's minimum) instead of 121 s, so a restarted element comes back by itself."""
    cluster = started_for_test(SlurmCluster(shared=True, cred_expire=5))
    yield cluster
    cluster.stop()


def reports(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def wait_for_reports(path: Path, count: int, timeout: float, cluster: SlurmCluster) -> list[dict]:
    deadline = time.monotonic() + timeout
    while len(seen := reports(path)) < count:
        if time.monotonic() > deadline:
            raise AssertionError(f"{len(seen)} of {count} contenders reported after {timeout:.0f} s: {seen}\n"
                                 f"{cluster.squeue('--array', '--states=all')}\n{cluster.log_tail(30)}")
        time.sleep(0.2)
    return seen


def contender_command(shard: Path, report: Path, *, hold: bool, pretend: str | None) -> str:
    return " ".join([PYTHON, str(CONTENDER), str(shard), str(report), *(["--hold"] if hold else []),
                     *([f"--pretend-host '{pretend}'"] if pretend else [])])


def submit_holder(cluster: SlurmCluster, tmp_path: Path, shard: Path, report: Path, node: str, stale: float,
                  pretend: str | None) -> str:
    """An array of one element (index 3) on `node` that takes the lease and holds it; the element's id."""
    script = (f"#!/bin/bash\nexport SHARDRUN_LEASE_STALE_SECONDS={stale}\n"
              f"exec {contender_command(shard, report, hold=True, pretend=pretend)}\n")
    array = cluster.sbatch("--array=3", "--requeue", f"--nodelist={node}", f"--output={tmp_path / 'holder-%A_%a.out'}",
                           script=script)
    return f"{array}_3"


def newcomer(cluster: SlurmCluster, tmp_path: Path, shard: Path, report: Path, node: str | None, stale: float,
             pretend: str | None) -> dict:
    """A newcomer's attempt at the lease, as a SLURM job on `node` or (None) a process here outside SLURM
    (a resume from the login node); its report."""
    before = len(reports(report))
    command = contender_command(shard, report, hold=False, pretend=pretend)
    if node is None:
        cluster.command("bash", "-c", f"SHARDRUN_LEASE_STALE_SECONDS={stale} exec {command}", timeout=120)
    else:
        job = cluster.sbatch(f"--nodelist={node}", f"--output={tmp_path / 'newcomer-%j.out'}",
                             script=f"#!/bin/bash\nexport SHARDRUN_LEASE_STALE_SECONDS={stale}\nexec {command}\n")
        cluster.wait_until_gone([job], timeout=120)
    return wait_for_reports(report, before + 1, 30, cluster)[-1]


def paused_holder_then_its_job_ends(cluster: SlurmCluster, tmp_path: Path, how: str, holder_node: str,
                                    newcomer_node: str | None, pretend: bool) -> None:
    shard, report = tmp_path / "shard-0-of-1", tmp_path / "contenders.jsonl"
    shard.mkdir()
    element = submit_holder(cluster, tmp_path, shard, report, holder_node, SHORT_STALE,
                            "holder-host" if pretend else None)
    (held,) = wait_for_reports(report, 1, 120, cluster)
    assert held["outcome"] == "held" and held["why"] is None, held
    assert held["job"] == f"slurm job {element} (run 0) on {holder_node}"
    lease = read_lease(shard / "lease")
    assert (lease.holder.pid, lease.holder.job.cluster) == (held["pid"], cluster.name)

    os.kill(held["pid"], signal.SIGSTOP)  # paused: alive, its job RUNNING on its node, its heartbeat ageing
    deadline = time.monotonic() + 60
    while time.time() - read_lease(shard / "lease").heartbeat <= SHORT_STALE + 1:
        assert time.monotonic() < deadline, "the paused holder's heartbeat did not age"
        time.sleep(0.2)
    refused = newcomer(cluster, tmp_path, shard, report, newcomer_node, SHORT_STALE, "newcomer" if pretend else None)
    assert refused["outcome"] == "refused", refused
    assert f"its slurm job {element} is RUNNING on {holder_node} (run 0): the holder is alive" in refused["why"]
    assert read_lease(shard / "lease").holder == lease.holder

    if how == "requeue":  # requeued and held, so that it does not start again before the newcomer looks
        cluster.scontrol("requeuehold", element)
        cluster.wait_for_state(element, "PENDING", timeout=60)
        reason = f"its slurm job {element} is PENDING (no longer running on {holder_node})"
    else:
        cluster.scancel(element)
        cluster.wait_until_gone([element], timeout=60)
        reason = f"its slurm job {element} has ended (CANCELLED)"
    assert not psutil.pid_exists(held["pid"]), "SLURM ended the paused holder"
    left = read_lease(shard / "lease")
    assert left.holder == lease.holder and time.time() - left.heartbeat < LONG_STALE  # left behind, not stale by age

    took = newcomer(cluster, tmp_path, shard, report, newcomer_node, LONG_STALE, "newcomer" if pretend else None)
    assert (took["outcome"], took["why"]) == ("held", reason), took
    assert not (shard / "lease").exists() and not list(shard.glob("lease.taken-*"))  # released, nothing left


@pytest.mark.parametrize(("how", "newcomer_node"), [("requeue", None), ("cancel", "localhost")],
                         ids=["requeued-newcomer-outside-slurm", "cancelled-newcomer-in-a-job"])
def test_a_paused_holder_is_kept_while_its_job_runs_and_taken_over_at_once_when_it_ends(slurm_cluster, tmp_path, how,
                                                                                       newcomer_node):
    paused_holder_then_its_job_ends(slurm_cluster, tmp_path, how, holder_node="localhost", newcomer_node=newcomer_node,
                                    pretend=True)


def the_same_element_restarted(cluster: SlurmCluster, tmp_path: Path, holder_node: str, restart_on: str,
                               pretend: bool) -> None:
    shard, report = tmp_path / "shard-0-of-1", tmp_path / "contenders.jsonl"
    shard.mkdir()
    element = submit_holder(cluster, tmp_path, shard, report, holder_node, LONG_STALE,
                            "run{restart}-host" if pretend else None)
    (first,) = wait_for_reports(report, 1, 120, cluster)
    assert first["outcome"] == "held" and first["job"] == f"slurm job {element} (run 0) on {holder_node}", first

    cluster.scontrol("requeue", element)  # run 0 is killed and leaves its lease; run 1 starts 6 s later
    cluster.wait_for_state(element, "PENDING", timeout=60)
    if restart_on != holder_node:
        cluster.scontrol("update", f"JobId={element}", f"ReqNodeList={restart_on}")
    second = wait_for_reports(report, 2, 120, cluster)[1]
    assert second["job"] == f"slurm job {element} (run 1) on {restart_on}", second
    if restart_on == holder_node:
        why = f"its slurm job {element} is at run 1 on {holder_node}, after the holder's run 0"
    else:
        why = f"its slurm job {element} now runs on {restart_on}, not on {holder_node}"
    assert (second["outcome"], second["why"]) == ("held", f"{why} (this process is that job's run 1)"), second
    assert read_lease(shard / "lease").holder.pid == second["pid"]
    cluster.scancel(element)
    cluster.wait_until_gone([element], timeout=60)


def test_the_same_element_restarted_takes_its_earlier_runs_lease_over_at_once(slurm_cluster, tmp_path):
    the_same_element_restarted(slurm_cluster, tmp_path, holder_node="localhost", restart_on="localhost", pretend=True)


# --- the same on two nodes of their own host names (conftest's two_node_cluster): no stand-in host name ---------

def test_on_two_nodes_a_paused_holder_on_nodea_is_kept_and_taken_over_from_nodeb_once_its_job_ends(
        two_node_cluster, tmp_path):
    paused_holder_then_its_job_ends(two_node_cluster, tmp_path, "cancel", holder_node="nodea", newcomer_node="nodeb",
                                    pretend=False)


def test_on_two_nodes_an_element_killed_on_nodea_continues_at_once_on_nodeb(two_node_cluster, tmp_path):
    the_same_element_restarted(two_node_cluster, tmp_path, holder_node="nodea", restart_on="nodeb", pretend=False)
