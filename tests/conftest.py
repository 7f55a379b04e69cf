"""Shared fixtures. A JVM cannot be restarted in a process, so the tests share one."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import psutil
import pytest

from shardrun.config import JvmConfig
from shardrun.infodynamics.jidt import find_jidt_jar
from shardrun.shard.jvm import start_jvm

from e2e_support import analysis_values, shardrun, write_categorical_data, write_config
from slurm_cluster import SlurmCluster, running_clusters, started_for_test


@pytest.fixture(scope="session", autouse=True)
def console_scripts_on_path():
    """The commands the tests start are those of a user whose venv is activated: its bin dir first on PATH,
    so their hints name the bare console scripts (cli/common.command_spelling). Tests of the other ways
    in (a shim, a console script by its path) take .venv/bin off PATH themselves."""
    patch = pytest.MonkeyPatch()
    patch.setenv("PATH", os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]))
    yield
    patch.undo()


@pytest.fixture(scope="session")
def jvm():
    """Start this pytest process's JVM with the JIDT jar, once, for the tests that ask for it."""
    import jpype

    if not jpype.isJVMStarted():
        start_jvm(JvmConfig(xms=None, xmx="512m"), [str(find_jidt_jar())])


@pytest.fixture(scope="session")
def workspace(tmp_path_factory):
    """Categorical test data, a config for it, and the reference: one uninterrupted K=1 run, merged."""
    root = tmp_path_factory.mktemp("e2e")
    data = root / "users.csv"
    write_categorical_data(data, n_users=14, n_rows=700)
    config = write_config(root / "config.yaml", data, root)
    reference = root / "reference"
    shardrun("run", "--config", str(config), "--full", "--shard", "0/1", "--out", str(reference), cwd=root)
    shardrun("merge", "--run", str(reference), "--output", str(reference / "merged"), cwd=root)
    return {"root": root, "config": config, "data": data, "reference": analysis_values(reference / "merged")}


@pytest.fixture(scope="session")
def slurm_cluster():
    """A private single-node SLURM cluster (tests/slurm_cluster.py: munged, slurmctld, slurmd in a temporary
    dir), started when a test first asks for it and stopped at the session's end. A test submits with
    `slurm_cluster.sbatch(...)`, or runs SLURM commands (and shardrun's) with `env=slurm_cluster.env`.
    If SLURM cannot start here (not installed: tools/install_slurm.sh), the tests that need it fail."""
    cluster = started_for_test(SlurmCluster(shared=True))
    yield cluster
    cluster.stop()


@pytest.fixture(scope="module")
def two_node_cluster():
    """A private two-node SLURM cluster for one test module (tests/slurm_cluster.py with nodes=: nodea and nodeb,
    one CPU each, each in network and UTS namespaces of its own, its own hostname and address), started when
    a test of the module first asks for it and stopped, namespaces and links included, after its last test.
    A requeued job may start again 6 s after the requeue (cred_expire=5, SLURM's minimum), not 121 s.
    Needs root; if it cannot start, the tests that need it fail with the reason (docs/dev/CLUSTER_TESTS.md)."""
    cluster = started_for_test(SlurmCluster(shared=True, nodes={"nodea": 1, "nodeb": 1}, cred_expire=5))
    yield cluster
    cluster.stop()


@pytest.fixture(autouse=True)
def no_process_outlives_its_test():
    """Every process a test started (shards, launchers, helpers; the launchers' shards too) is killed
    when the test ends, passed or failed, so a failed test never leaves a shard writing into the
    next one's files. Only this pytest process's own descendants are touched, by their pids.
    A running test cluster's daemons (and their children) are spared; the jobs a test submitted to it
    are cancelled, and a cluster the test started for itself and left running is stopped."""
    me = psutil.Process()
    before = {child.pid for child in me.children(recursive=True)}
    clusters_before = running_clusters()
    jobs_before = {id(cluster): cluster.queued_job_ids() for cluster in clusters_before}
    yield
    for cluster in running_clusters():
        if cluster not in clusters_before and not cluster.shared:
            cluster.stop()
            continue
        left_jobs = cluster.queued_job_ids() - jobs_before.get(id(cluster), set())
        if left_jobs:
            cluster.scancel(*sorted(left_jobs))
            cluster.wait_until_gone(left_jobs, timeout=cluster.kill_wait + 30)
    spared = set().union(*(cluster.daemon_pids() for cluster in running_clusters()))
    left = [child for child in me.children(recursive=True) if child.pid not in before and child.pid not in spared]
    for child in left:
        try:
            child.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(left, timeout=30)
