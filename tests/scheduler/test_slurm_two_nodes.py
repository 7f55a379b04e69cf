"""launch_shards --scheduler slurm on a real TWO-node SLURM (tests/slurm_cluster.py with nodes=: each node a
slurmd in its own network and UTS namespace, its own address and hostname, on this one machine; the
filesystem and the kernel are shared, as on a cluster with a shared filesystem).

What one node cannot show: an array's elements run on different hosts and the run still merges equal to
the local K=1 reference; an element requeued mid-run continues its shard on the other host; a node that
fails mid-run (its slurmd and its jobs' processes killed at once,
the node marked down by the admin) costs its elements nothing committed: SLURM requeues them, they run
again on the other node and continue their shards, every user exactly once. And the cluster itself
leaves nothing behind: no process, no namespace, no link.
"""

from __future__ import annotations

import ipaddress
import secrets
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from shardrun.storage.commits import decode_batch

from e2e_support import read_status, wait_for
from node_network import NodeNetwork, NodeNetworkError, free_subnet
from slurm_cluster import SlurmCluster, SlurmClusterError, started_for_test
from test_slurm import (
    assert_equals_reference,
    batch_files,
    element_starts,
    faulty_env,
    launch,
    own_config,
    pending_after_requeue,
    submitted,
    wait_for_run,
)

pytestmark = pytest.mark.e2e

# As the fixture two_node_cluster's (tests/conftest.py): one element per node at a time, so both nodes take
# part in every run; a job requeued (by a node failure) may start again cred_expire + 1 s later, 6 s.
NODES = {"nodea": 1, "nodeb": 1}
CRED_EXPIRE = 5


def hosts_of(batches: dict[str, bytes]) -> dict[str, str]:
    """user id -> the host that computed it, from committed batches' attempt records."""
    return {record["user_id"]: record["attempt"]["host"] for content in batches.values()
            for record in decode_batch(content).records}


def test_each_node_has_its_own_hostname_and_address_and_elements_spread_over_both(two_node_cluster, tmp_path):
    cluster = two_node_cluster
    assert cluster.node_states() == {"nodea": "idle", "nodeb": "idle"}
    assert cluster.startup_seconds < 30  # measured: about 1.3 s
    addresses = cluster.network.addresses
    assert len(set(addresses.values())) == 2 and cluster.network.gateway not in addresses.values()
    for node in NODES:
        record = cluster.node(node)
        assert (record["NodeHostName"], record["NodeAddr"]) == (node, addresses[node]), record

    job = cluster.sbatch("--array=0-3", f"--output={tmp_path}/%a.out",
                         script="#!/bin/bash\necho $(hostname) $SLURMD_NODENAME $(hostname -I)\nsleep 1\n")
    cluster.wait_until_gone([job], timeout=120)
    ran = {}
    for record in cluster.jobs(job):
        assert record["JobState"] == "COMPLETED", record
        hostname, node_name, *own_addresses = (tmp_path / f"{record['ArrayTaskId']}.out").read_text().split()
        assert hostname == node_name == record["NodeList"], "each job runs under its node's hostname"
        assert own_addresses == [addresses[hostname]], "and sees its node's address only"
        ran[record["ArrayTaskId"]] = hostname
    assert len(ran) == 4 and set(ran.values()) == {"nodea", "nodeb"}, ran


def test_a_four_shard_run_on_two_nodes_equals_a_local_k1_run(two_node_cluster, workspace, tmp_path):
    config = own_config(workspace, tmp_path)
    run = tmp_path / "run"
    result = launch(two_node_cluster, config, run, 4)
    assert result.returncode == 0, result.stderr
    wait_for_run(two_node_cluster, run)
    assert_equals_reference(run, workspace, 4)
    hosts = {index: read_status(run / f"shard-{index}-of-4")["host"] for index in range(4)}
    assert set(hosts.values()) == {"nodea", "nodeb"}, f"the elements ran on both nodes: {hosts}"
    for index, host in hosts.items():
        assert f" on {host}, restart 0" in (tmp_path / "logs" / f"shard{index}.log").read_text()
        assert set(hosts_of(batch_files(run / f"shard-{index}-of-4")).values()) == {host}


def test_an_element_requeued_mid_run_continues_its_shard_on_the_other_node(two_node_cluster, workspace, tmp_path):
    """Two elements, one per node. The one on nodea is requeued mid-run (`scontrol requeue <array>_<index>`)
    and kept off nodea while it waits (ExcNodeList), so it runs again on nodeb once its sibling is done
    there: it continues its shard from the users committed on nodea, and the run merges equal to the
    local K=1 run. (The shard's lock is flock, default: the nodes share one kernel, and a requeued
    element's process is gone before it runs again.)"""
    cluster = two_node_cluster
    config = own_config(workspace, tmp_path, faulty=True)
    run = tmp_path / "run"
    result = launch(cluster, config, run, 2, env=faulty_env("slow:1"))
    assert result.returncode == 0, result.stderr
    (array,), _merge = submitted(run)

    def on_nodea_with_two_users_done():
        for record in cluster.jobs(array):
            if record["JobState"] == "RUNNING" and record["NodeList"] == "nodea":
                index = int(record["ArrayTaskId"])
                if read_status(run / f"shard-{index}-of-2").get("users_done", 0) >= 2:
                    return [index]  # a list: index 0 is falsy, and wait_for waits for a truthy value
        return None

    (index,) = wait_for(on_nodea_with_two_users_done, timeout=300, every=0.2)
    shard_dir, element = run / f"shard-{index}-of-2", f"{array}_{index}"
    cluster.scontrol("requeue", element)
    record = pending_after_requeue(cluster, element)
    assert record["Restarts"] == "1", record
    cluster.scontrol("update", f"JobId={element}", "ExcNodeList=nodea")
    committed_on_nodea = batch_files(shard_dir)
    wait_for_run(cluster, run)

    assert cluster.job(element)["NodeList"] == "nodeb"
    log = (tmp_path / "logs" / f"shard{index}.log").read_text()
    assert " on nodea, restart 0" in log and " on nodeb, restart 1" in log, log
    status = read_status(shard_dir)
    assert status["host"] == "nodeb" and status["resumed_with_done"] >= 2, "it continued, not restarted"
    assert status["requeues"] == 1 and "SLURM requeued its job itself" in log, "an admin's requeue: counted, not asked"
    after = batch_files(shard_dir)
    assert {name: after[name] for name in committed_on_nodea} == committed_on_nodea
    assert set(hosts_of(after).values()) == {"nodea", "nodeb"}
    assert_equals_reference(run, workspace, 2)


def test_a_node_failure_mid_run_requeues_its_element_which_continues_on_the_other_node(workspace, tmp_path):
    """nodea fails while one element computes there: its slurmd and every process of its jobs die at
    once (tests/slurm_cluster.py kill_node: frozen, then killed, so nothing reports to slurmctld),
    and the admin marks the node down, as one does when a node is known dead (else slurmctld would
    wait SlurmdTimeout, 300 s by default, before it notices). SLURM requeues the element by itself
    (the array is submitted with --requeue); cred_expire + 1 s later it runs on nodeb, keeps the users
    committed on nodea and computes only the rest: every user exactly once, the merge equal to the
    local K=1 run. Once stopped, the cluster leaves no process, namespace or link."""
    cluster = started_for_test(SlurmCluster(nodes=NODES, cred_expire=CRED_EXPIRE))
    network, daemons = cluster.network, [psutil.Process(process.pid) for process in cluster.processes.values()]
    try:
        config = own_config(workspace, tmp_path, faulty=True)
        run = tmp_path / "run"
        result = launch(cluster, config, run, 4, env=faulty_env("slow:2"))
        assert result.returncode == 0, result.stderr
        (array,), _merge = submitted(run)

        def running_on_nodea_with_a_user_committed():
            for record in cluster.jobs(array):
                if record["JobState"] == "RUNNING" and record["NodeList"] == "nodea":
                    shard_dir = run / f"shard-{record['ArrayTaskId']}-of-4"
                    status = read_status(shard_dir)
                    # Two users still to do: the one in flight may end, the other is at least 2 s of work.
                    if status.get("host") == "nodea" and status.get("users_done", 0) >= 1 and status.get(
                            "users_todo", 0) >= 2 and hosts_of(batch_files(shard_dir)):
                        return int(record["ArrayTaskId"]), status
            return None

        index, status = wait_for(running_on_nodea_with_a_user_committed, timeout=300, every=0.2)
        shard_dir, element = run / f"shard-{index}-of-4", f"{array}_{index}"
        killed = cluster.kill_node("nodea")
        assert status["pid"] in killed, "the shard's process lived in nodea's namespaces"
        committed_on_nodea = batch_files(shard_dir)
        assert committed_on_nodea and not cluster.node_pids("nodea")
        cluster.scontrol("update", "NodeName=nodea", "State=DOWN", "Reason=node failure (test)")

        record = cluster.wait_for_state(element, "PENDING", timeout=60)
        assert record["Restarts"] == "1", "SLURM requeued the element of the failed node by itself"
        assert cluster.node_state("nodea").startswith("down")
        wait_for_run(cluster, run)

        assert cluster.job(element)["NodeList"] == "nodeb"
        log = (tmp_path / "logs" / f"shard{index}.log").read_text()
        assert " on nodea, restart 0" in log and " on nodeb, restart 1" in log, log
        assert element_starts(tmp_path / "logs" / f"shard{index}.log") == 2, log
        after = batch_files(shard_dir)
        assert {name: after[name] for name in committed_on_nodea} == committed_on_nodea, "nothing committed is lost"
        final = read_status(shard_dir)
        assert final["state"] == "completed" and final["host"] == "nodeb", final
        assert final["resumed_with_done"] == len(hosts_of(committed_on_nodea)), final
        hosts = hosts_of(batch_files(shard_dir))
        assert set(hosts.values()) == {"nodea", "nodeb"}, f"computed partly on each node: {hosts}"
        for other in set(range(4)) - {index}:
            assert cluster.job(f"{array}_{other}")["Restarts"] == "0", "only the failed node's element was requeued"
            assert element_starts(tmp_path / "logs" / f"shard{other}.log") == 1
        assert_equals_reference(run, workspace, 4)
    finally:
        cluster.stop()
    assert network.leftovers() == [], "stop() removes every namespace and link"
    assert not any(process.is_running() for process in daemons)
    assert not network.pids("nodea") and not network.pids("nodeb")


def test_stop_leaves_no_process_namespace_or_link_even_after_a_failed_start(tmp_path):
    """A running cluster with a job that left a program behind (setsid: no longer the job's) is stopped:
    its daemons, that program and every namespace and link are gone. A cluster whose slurmctld refuses
    its config stops what it had started (munged, the namespaces) before it raises."""
    cluster = started_for_test(SlurmCluster(nodes=NODES, cred_expire=CRED_EXPIRE))
    network = cluster.network
    orphan = tmp_path / "orphan"
    job = cluster.sbatch("-w", "nodeb", "--output=/dev/null",
                         script=f"#!/bin/bash\nsetsid sleep 300 </dev/null >/dev/null 2>&1 &\necho $! > {orphan}\n")
    cluster.wait_until_gone([job], timeout=60)
    sleeper = psutil.Process(int(orphan.read_text()))
    assert sleeper.pid in cluster.node_pids("nodeb") and sleeper.pid in cluster.job_pids()
    daemons = [psutil.Process(process.pid) for process in cluster.processes.values()]
    cluster.stop()
    _gone, alive = psutil.wait_procs([sleeper, *daemons], timeout=5)
    assert alive == [] and network.leftovers() == []
    cluster.stop()  # again: nothing to do, no error

    broken = SlurmCluster(nodes=NODES, extra_config="NoSuchOption=1")
    with pytest.raises(SlurmClusterError) as error:
        broken.start()
    assert "unrecognized key: NoSuchOption" in str(error.value)
    assert broken.network.leftovers() == [] and broken.processes == {} and broken.root is None


def test_what_a_killed_session_left_is_removed_by_the_next_network(tmp_path):
    """A process that made the nodes' network and died without a teardown (SIGKILL) leaves namespaces and a
    bridge; the next network made on the machine removes them (no process lives in them any more)."""
    script = ("import sys, time; sys.path.insert(0, sys.argv[1]); from node_network import NodeNetwork; "
              "network = NodeNetwork(sys.argv[2], ['nodea', 'nodeb']).create(); print(flush=True); time.sleep(300)")
    tag = "x" + secrets.token_hex(4)
    maker = subprocess.Popen([sys.executable, "-c", script, str(Path(__file__).resolve().parents[1]), tag],
                             stdout=subprocess.PIPE)
    assert maker.stdout.readline() == b"\n"
    abandoned = NodeNetwork(tag, ["nodea", "nodeb"])
    abandoned.netns = {node: f"shardrun-{tag}-{maker.pid}-{node}" for node in abandoned.nodes}
    assert len(abandoned.leftovers()) == 5, "two namespaces, two veth, one bridge"
    maker.kill()
    maker.wait()
    network = NodeNetwork("y" + secrets.token_hex(4), ["nodea", "nodeb"])
    try:
        network.create()
        assert abandoned.leftovers() == []
        assert len(network.leftovers()) == 5
    finally:
        network.remove()
    assert network.leftovers() == []


def test_the_nodes_subnet_overlaps_no_network_of_the_machine():
    """The /24 is redrawn while it overlaps an address or a route of the machine; a default route is no overlap."""
    in_use = [ipaddress.ip_network(network) for network in ("0.0.0.0/0", "10.7.0.0/16", "10.8.9.0/24", "10.9.9.1/32")]
    draws = iter([7, 200, 8, 9, 9, 9, 9, 10])  # 10.7.200.0/24, 10.8.9.0/24, 10.9.9.0/24: taken; then 10.9.10.0/24
    assert free_subnet(in_use, draw=lambda low, high: next(draws)) == ipaddress.ip_network("10.9.10.0/24")
    assert free_subnet([ipaddress.ip_network("0.0.0.0/0")], draw=lambda low, high: 5) == ipaddress.ip_network(
        "10.5.5.0/24")
    with pytest.raises(NodeNetworkError, match="no free 10.x.y.0/24"):
        free_subnet([ipaddress.ip_network("10.0.0.0/8")])
