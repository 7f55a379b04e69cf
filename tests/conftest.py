"""Shared fixtures. A JVM cannot be restarted in a process, so the tests share one."""

from __future__ import annotations

import psutil
import pytest

from e2e_support import analysis_values, shardrun, write_categorical_data, write_config
from shardrun.config import JvmConfig
from shardrun.infodynamics.jidt import find_jidt_jar
from shardrun.shard.jvm import start_jvm


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
    shardrun("worker", "--config", str(config), "--full", "--shard", "0/1", "--out", str(reference), cwd=root)
    shardrun("merge", "--run", str(reference), "--output", str(reference / "merged"), cwd=root)
    return {"root": root, "config": config, "data": data, "reference": analysis_values(reference / "merged")}


@pytest.fixture(autouse=True)
def no_process_outlives_its_test():
    """Every process a test started (shards, launchers, helpers; the launchers' shards too) is killed
    when the test ends, passed or failed, so a failed test never leaves a shard writing into the
    next one's files. Only this pytest process's own descendants are touched, by their pids."""
    me = psutil.Process()
    before = {child.pid for child in me.children(recursive=True)}
    yield
    left = [child for child in me.children(recursive=True) if child.pid not in before]
    for child in left:
        try:
            child.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(left, timeout=30)
