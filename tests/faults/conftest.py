"""The fixtures of the fault table: the small workload's reference run (once a session) and a case's lab."""

from __future__ import annotations

import subprocess
import time

import pytest
from fault_lab import K_GRID, SURROGATES, Lab, Small, worker_command

from e2e_support import analysis_values, shardrun, write_categorical_data, write_config

pytestmark = pytest.mark.e2e

@pytest.fixture(scope="session")
def small(tmp_path_factory) -> Small:
    root = tmp_path_factory.mktemp("faults-small")
    data = root / "users.csv"
    write_categorical_data(data, n_users=10, n_rows=600)
    config = write_config(root / "config.yaml", data, root, surrogates=SURROGATES, k_grid=K_GRID)
    run = root / "reference"
    started = time.monotonic()
    # One user per batch file: the cases that damage a copy of this run aim at one user's batch.
    process = subprocess.Popen(
        worker_command(config, "--shard", "0/1", "--out", str(run), "--commit-interval", "0"),
        cwd=root, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    results = run / "shard-0-of-1" / "results"
    first = None
    while process.poll() is None:
        if first is None and results.is_dir() and any(results.glob("b-*.jsonl")):
            first = time.monotonic() - started
        time.sleep(0.005)
    output = process.communicate()[0]
    assert process.returncode == 0 and first is not None, output
    shardrun("merge", "--run", str(run), "--output", str(run / "merged"), cwd=root)
    return Small(root, data, run, analysis_values(run / "merged"), first)


@pytest.fixture
def lab(small, tmp_path, tmp_path_factory):
    lab = Lab(root=tmp_path, small=small, basetemp=tmp_path_factory.getbasetemp())
    lab.writable = [lab.out, lab.logs]
    yield lab
    for cleanup in reversed(lab.cleanups):
        cleanup()
