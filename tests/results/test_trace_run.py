"""merged/trace.tsv and the memory section of merge_report.json on a real run: real shard processes,
the real JVM and JIDT, two users that fail for real in Java (faulty_task.py), then retried."""

from __future__ import annotations

import json
import socket
import subprocess
import sys

import pandas as pd
import pytest

from shardrun.results.timeline import TRACE_COLUMNS

from e2e_support import faulty_task_config, read_status, read_trace, shardrun

pytestmark = pytest.mark.e2e

FAILED = {"user-03": "java.lang.ArrayIndexOutOfBoundsException", "user-05": "HeapTooSmall"}


def run_worker(*args: str, cwd, env) -> tuple[int, int]:
    """A real run_production process: its pid and exit code."""
    process = subprocess.Popen([sys.executable, "-m", "shardrun", "run", *args], cwd=cwd, env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    _, stderr = process.communicate(timeout=600)
    assert process.returncode in (0, 1), stderr
    return process.pid, process.returncode


def test_a_real_run_traces_every_attempt_and_the_memory_each_shard_used(workspace, tmp_path):
    root = workspace["root"]
    path, env = faulty_task_config(workspace, tmp_path)
    run = tmp_path / "run"
    shard_dir = run / "shard-0-of-1"
    first_pid, code = run_worker("--config", str(path), "--full", "--shard", "0/1", "--out", str(run), cwd=root,
                                 env=env)
    assert code == 1  # two users failed
    retry_pid, code = run_worker("--config", str(path), "--full", "--resume", str(shard_dir), "--retry-failed",
                                 cwd=root, env={**env, "FAULTY_TASK": "healed"})
    assert code == 0
    shardrun("merge", "--run", str(run), "--output", str(run / "merged"), cwd=root, env=env)

    trace = read_trace(run / "merged" / "trace.tsv")
    results = pd.read_parquet(run / "merged" / "results.parquet")
    assert list(trace.columns) == list(TRACE_COLUMNS)
    # every committed user has exactly one row that is its result, every failed attempt a row of its own
    standing = trace[trace["committed"] == "yes"]
    assert sorted(standing["user_id"]) == sorted(set(results["user_id"])) and len(standing) == 14
    assert (standing["status"] == "ok").all() and standing["error_class"].isna().all()
    failed = trace[trace["status"] == "failed"].set_index("user_id")
    assert sorted(failed.index) == sorted(FAILED) and (failed["committed"] == "replaced").all()
    assert dict(failed["error_class"]) == FAILED
    assert (failed["attempt"] == 1).all() and (failed["pid"] == first_pid).all()
    retried = standing.set_index("user_id").loc[sorted(FAILED)]
    assert (retried["attempt"] == 2).all() and (retried["pid"] == retry_pid).all()
    others = standing[~standing["user_id"].isin(list(FAILED))]
    assert (others["attempt"] == 1).all() and (others["pid"] == first_pid).all()
    # where and when
    assert set(trace["host"]) == {socket.gethostname()} and set(trace["shard"]) == {"0/1"}
    start = pd.to_datetime(trace["start"], format="ISO8601")
    end = pd.to_datetime(trace["end"], format="ISO8601")
    assert (start <= end).all() and str(start.dt.tz) == "UTC"
    assert (trace["seconds"] >= 0).all() and (trace["cpu_seconds"] >= 0).all()
    assert (trace.loc[trace["status"] == "ok", "heap_used_bytes"] > 0).all()
    assert (trace["peak_rss_bytes"] > 0).all()
    # the failed attempt's errors.jsonl line carries the same attempt as its committed record
    errors = [json.loads(line) for line in (shard_dir / "errors.jsonl").read_text().splitlines()]
    assert {(e["user_id"], e["attempt"]["number"], e["attempt"]["pid"]) for e in errors} == {
        (user_id, 1, first_pid) for user_id in FAILED}

    report = json.loads((run / "merged" / "merge_report.json").read_text())
    [memory] = [shard["memory"] for shard in report["shards"]]
    assert memory["xmx"] == "256m" and memory["xmx_bytes"] == 256 * 2**20  # the config's jvm.xmx
    assert memory["budget_bytes"] is None and memory["budget_source"] is None  # no launcher, no SLURM
    status = read_status(shard_dir)
    assert memory["peak_rss_bytes"] == status["peak_rss_bytes"] >= trace["peak_rss_bytes"].max() > 0
    assert memory["peak_heap_used_bytes"] == trace["heap_used_bytes"].max() > 0
    assert memory["processes"] == 2


def test_a_launched_run_reports_the_admissions_budget_against_the_peak(workspace, tmp_path):
    root = workspace["root"]
    run = tmp_path / "launched"
    shardrun("launch", "--config", str(workspace["config"]), "--shards", "2", "--out", str(run), cwd=root)
    launcher = json.loads((run / "launcher.json").read_text())
    report = json.loads((run / "merged" / "merge_report.json").read_text())
    trace = read_trace(run / "merged" / "trace.tsv")
    assert len(trace) == 14 and (trace["committed"] == "yes").all() and (trace["attempt"] == 1).all()
    for slot, shard in zip(launcher["shards"], report["shards"]):
        memory = shard["memory"]
        assert shard["shard"] == slot["shard"] and memory["xmx"] == slot["xmx"] == "256m"
        assert memory["budget_source"] == "launcher admission"
        assert memory["budget_bytes"] == slot["memory_budget_bytes"] > memory["xmx_bytes"]
        assert memory["peak_rss_bytes"] > 0 and memory["peak_heap_used_bytes"] > 0 and memory["processes"] == 1
        mine = trace[trace["shard"] == slot["shard"]]
        assert set(mine["pid"]) == {slot["pid"]} and memory["peak_heap_used_bytes"] == mine["heap_used_bytes"].max()
