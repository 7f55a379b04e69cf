"""merged/trace.tsv and the merge report's memory section, from shard dirs written with the real store
functions and the shard's real attempt recorder (clocks and memory probes injected); no processes.
A real run with the JVM and a failing user is in test_trace_run.py."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pytest

from shardrun.config import parse_config
from shardrun.partition import ShardSpec
from shardrun.results.merge import merge_result_set
from shardrun.results.read import read_shard, shard_dirs_of_run
from shardrun.results.timeline import (
    TRACE_COLUMNS,
    TRACE_SCHEMA,
    shard_memory,
    trace_and_memory,
    write_trace,
)
from shardrun.shard.attempts import Attempts, carried_memory, error_class, scheduler_memory_bytes
from shardrun.storage.atomic import write_json_atomic
from shardrun.storage.commits import read_errors, recorded_attempts, scan_committed
from shardrun.storage.paths import MergedPaths, RunPaths
from shardrun.storage.status import ShardStatus

from e2e_support import read_trace
from store_support import append_error, commit_user
from task_double import USERS, make_run, raw_config, rows_of, task_double  # noqa: F401

T0 = datetime(2026, 12, 7, 8, 0, 0, tzinfo=UTC)


class Clocks:
    """The monotonic, CPU and wall clocks of a process whose users take `step` seconds each."""

    def __init__(self, step: float = 1.25):
        self.elapsed = 0.0
        self.step = step
        self.reads = 0

    def monotonic(self) -> float:
        self.reads += 1
        if self.reads % 2 == 0:  # every second read is an attempt's end
            self.elapsed += self.step
        return self.elapsed

    def wall(self) -> datetime:
        return T0 + timedelta(seconds=self.elapsed)


def recorder(earlier=None, heap: int = 3 * 2**20, rss: int = 200 * 2**20) -> Attempts:
    clocks = Clocks()
    return Attempts(earlier or {}, heap_used=lambda: heap, rss=lambda: rss, clock=clocks.monotonic,
                    cpu_clock=lambda: 0.0, now=clocks.wall)


def run_user(shard, attempts: Attempts, user_id: str, status: str = "ok", failure: BaseException | None = None,
             replaces: bool = False, commit: bool = True) -> dict:
    """What ShardLoop._run_user does with an attempt: the errors.jsonl line of a failure first, then the commit."""
    attempt = attempts.start(user_id)
    attempt.stop()
    record = attempt.record(status, failure)
    if failure is not None:
        append_error(shard, {"user_id": user_id, "error_type": type(failure).__name__, "attempt": record})
    if commit:
        rows = rows_of(user_id, ShardSpec(0, 1), parse_config(raw_config()).hash, status=status,
                       seconds=attempt.seconds)
        commit_user(shard, user_id, rows, replaces=replaces, attempt=record)
    return record


def empty_run(tmp_path: Path) -> tuple[Path, object]:
    run = make_run(tmp_path / "run", count=1, skip_users=USERS)
    return run, RunPaths(run).shard(ShardSpec(0, 1))


def test_every_committed_user_and_every_failed_attempt_has_one_row(tmp_path):
    run, shard = empty_run(tmp_path)
    first = recorder()
    run_user(shard, first, "u00")
    run_user(shard, first, "u01", status="skipped")
    run_user(shard, first, "u02", status="failed", failure=ValueError("bad"))
    run_user(shard, first, "u03", status="failed", failure=KeyError("lost"), commit=False)  # killed before its commit
    # the next process, as run.py starts it: the attempts counted from errors.jsonl and the committed records
    committed = scan_committed(shard)
    earlier = recorded_attempts(read_errors(shard), {"u02": committed["u02"].records})
    assert earlier == {"u02": 1, "u03": 1}
    second = recorder(earlier, heap=5 * 2**20)
    for user_id in ("u02", "u03", "u04", "u05", "u06", "u07"):
        run_user(shard, second, user_id, replaces=user_id == "u02")

    out = tmp_path / "merged"
    merged = merge_result_set(shard_dirs_of_run(run), out)
    trace = read_trace(MergedPaths(out).trace)
    assert list(trace.columns) == list(TRACE_COLUMNS)
    assert sorted(trace["user_id"]) == sorted([*USERS, "u02", "u03"])
    by_attempt = trace.set_index(["user_id", "attempt"])
    assert list(by_attempt.loc[("u02", 1), ["status", "error_class", "committed"]]) == ["failed", "ValueError",
                                                                                         "replaced"]
    assert list(by_attempt.loc[("u02", 2), ["status", "committed"]]) == ["ok", "yes"]
    assert list(by_attempt.loc[("u03", 1), ["status", "error_class", "committed"]]) == ["failed", "KeyError", "no"]
    assert list(by_attempt.loc[("u03", 2), ["status", "committed"]]) == ["ok", "yes"]
    assert by_attempt.loc[("u01", 1), "status"] == "skipped"
    # every user standing in the results has exactly one row that is its result
    standing = trace[trace["committed"] == "yes"]
    assert sorted(standing["user_id"]) == sorted(set(merged.frame["user_id"])) == USERS
    assert set(trace.loc[trace["status"] != "failed", "error_class"].isna()) == {True}
    start = pd.to_datetime(trace["start"], format="ISO8601")
    end = pd.to_datetime(trace["end"], format="ISO8601")
    assert ((end - start).dt.total_seconds().round(3) == trace["seconds"]).all() and (trace["seconds"] > 0).all()
    assert set(trace["heap_used_bytes"]) == {3 * 2**20, 5 * 2**20} and set(trace["peak_rss_bytes"]) == {200 * 2**20}
    memory = merged.report.shards[0]["memory"]
    assert memory["peak_heap_used_bytes"] == 5 * 2**20 and memory["peak_rss_bytes"] == 200 * 2**20
    assert memory["processes"] == 1  # both "processes" of this test are this one


def test_a_shard_read_in_columns_keeps_its_rows_unchanged(tmp_path):
    _run, shard = empty_run(tmp_path)
    attempts = recorder()
    for user_id in USERS:
        run_user(shard, attempts, user_id)
    read = read_shard(shard.dir)
    assert "attempt" not in read.table.column_names
    rows = read.table.drop_columns(["__user"]).to_pylist()
    committed = scan_committed(shard)  # the resume scan's reading, record by record
    assert rows == [row for user_id in USERS for row in committed[user_id].rows]
    assert read.attempts.num_rows == len(USERS)


def test_records_of_older_runs_still_give_a_row_each(tmp_path):
    """Batches and errors.jsonl lines written before attempts were recorded: no attempt record."""
    run = make_run(tmp_path / "run", count=2, overrides={"u02": {"status": "failed", "reason": "boom"}}, seconds=2.5)
    shard0 = RunPaths(run).shard(ShardSpec(0, 2))  # u00, u02, u04, u06
    # u02's committed failure
    append_error(shard0, {"user_id": "u02", "error_type": "RuntimeError", "java_class": None})
    # an attempt whose commit was lost, before the one committed (errors.jsonl's times are whole seconds)
    append_error(shard0, {"user_id": "u04", "error_type": "OSError", "time": "2025-01-01T00:00:00+00:00"})
    commit_user(shard0, "u02", rows_of("u02", ShardSpec(0, 2), parse_config(raw_config()).hash, seconds=2.5),
                replaces=True)

    table, memory = trace_and_memory([read_shard(d) for d in shard_dirs_of_run(run)])
    write_trace(table, tmp_path / "trace.tsv")
    trace = read_trace(tmp_path / "trace.tsv")

    assert sorted(trace["user_id"]) == sorted([*USERS, "u02", "u04"])
    assert trace["host"].isna().all() and trace["pid"].isna().all() and trace["heap_used_bytes"].isna().all()
    u02 = trace[trace["user_id"] == "u02"].sort_values("attempt")
    assert list(u02["status"]) == ["failed", "ok"] and list(u02["committed"]) == ["replaced", "yes"]
    u04 = trace[trace["user_id"] == "u04"].sort_values("attempt")
    assert list(u04["committed"]) == ["no", "yes"] and list(u04["attempt"]) == [1, 2]
    assert u04["error_class"].iloc[0] == "OSError" and pd.isna(u04["error_class"].iloc[1])
    ok = trace[(trace["committed"] == "yes")]
    assert (ok["seconds"] == 2.5).all() and ok["start"].notna().all()
    assert [m["processes"] for m in memory] == [0, 0] and memory[0]["peak_rss_bytes"] is None


def test_trace_tsv_gives_untrusted_ids_back_exactly(tmp_path):
    ids = ["tab\there", "new\nline", 'a "quoted" id', 'all\tof\r\n"them"', "NA", "007", " padded "]
    table = pa.Table.from_pylist([{"user_id": user_id, "attempt": 1, "seconds": 0.25} for user_id in ids],
                                 schema=TRACE_SCHEMA)
    path = tmp_path / "trace.tsv"
    write_trace(table, path)
    assert path.read_text(encoding="utf-8").count("\n") > len(ids) + 1  # newlines inside ids are kept, quoted
    assert list(pd.read_csv(path, sep="\t", dtype={"user_id": str}, keep_default_na=False)["user_id"]) == ids
    assert list(pd.read_csv(path, sep="\t")["user_id"][:4]) == ids[:4]  # the plain call, for ids that are text
    back = read_trace(path)
    assert list(back["user_id"]) == ids and list(back["seconds"]) == [0.25] * len(ids)
    assert back["host"].isna().all() and list(back.columns) == list(TRACE_COLUMNS)


def test_attempt_numbers_go_on_from_what_the_shard_dir_records():
    numbered = {"attempt": {"number": 3}}
    assert recorded_attempts([], {}) == {}
    assert recorded_attempts([{"user_id": "a"}, {"user_id": "a"}], {}) == {"a": 2}
    # a task that reports a failure in its rows without raising leaves no error line: its record counts
    assert recorded_attempts([], {"b": [{"rows": []}]}) == {"b": 1}
    # a failure leaves both: one attempt, not two
    assert recorded_attempts([{"user_id": "c", "attempt": {"number": 1}}],
                             {"c": [{"attempt": {"number": 1}}]}) == {"c": 1}
    assert recorded_attempts([{"user_id": "d", **numbered}], {}) == {"d": 3}
    attempts = Attempts({"d": 3}, heap_used=lambda: None, rss=lambda: 1)
    assert [attempts.start("d").number, attempts.start("d").number, attempts.start("e").number] == [4, 5, 1]


def test_an_attempt_record_says_where_when_and_what_failed():
    attempts = recorder(heap=123)
    attempt = attempts.start("u")
    attempt.stop()
    record = attempt.record("failed", ZeroDivisionError("x"))
    assert record["number"] == 1 and record["error_class"] == "ZeroDivisionError" and record["heap_used_bytes"] == 123
    assert record["start"] == "2026-12-07T08:00:00.000+00:00" and record["end"] == "2026-12-07T08:00:01.250+00:00"
    assert record["seconds"] == 1.25 and record["status"] == "failed"
    assert error_class(KeyError("k")) == "KeyError"
    with pytest.raises(RuntimeError):
        attempts.start("v").record("ok", None)  # recorded before it stopped: a bug, said


def test_status_keeps_the_peaks_over_users_and_processes(tmp_path):
    _, shard = empty_run(tmp_path)
    rss = iter([100, 300, 200, 250])
    status = ShardStatus(shard, {"peak_rss_bytes": 150}, peak_rss=lambda: next(rss))
    status.update(state="running")
    assert status.snapshot()["peak_rss_bytes"] == 150  # an earlier process's peak stands above this one's
    status.end_user(heap_used_bytes=40)
    status.end_user(heap_used_bytes=30)
    status.update(state="running")
    assert status.snapshot()["peak_rss_bytes"] == 300 and status.snapshot()["peak_heap_used_bytes"] == 40
    # the next process of the shard starts from these peaks
    assert carried_memory(shard.status) == {"peak_rss_bytes": 300, "peak_heap_used_bytes": 40}
    write_json_atomic(shard.status, ["not", "a", "status"])
    assert carried_memory(shard.status) == {}


def test_the_memory_section_names_what_was_requested_and_what_was_used(tmp_path):
    run, shard = empty_run(tmp_path)
    run_user(shard, recorder(heap=7 * 2**20, rss=900 * 2**20), "u00")
    write_json_atomic(shard.status, {"state": "completed", "jvm": ["-Xms64m", "-Xmx1g", "-Xmx2g"],
                                     "peak_rss_bytes": 1000 * 2**20, "peak_heap_used_bytes": 6 * 2**20,
                                     "slurm_mem_bytes": None})
    trace, [memory] = trace_and_memory([read_shard(shard.dir)])
    assert memory == {"xmx": "2g", "xmx_bytes": 2 * 2**30, "budget_bytes": None, "budget_source": None,
                      "peak_rss_bytes": 1000 * 2**20, "peak_heap_used_bytes": 7 * 2**20, "processes": 1}
    write_json_atomic(RunPaths(run).launcher_json, {"shards": [{"shard": "0/1", "memory_budget_bytes": 3 * 2**30}]})
    assert shard_memory(read_shard(shard.dir), trace)["budget_bytes"] == 3 * 2**30
    assert shard_memory(read_shard(shard.dir), trace)["budget_source"] == "launcher admission"
    write_json_atomic(shard.status, {"state": "completed", "slurm_mem_bytes": 4 * 2**30})
    memory = shard_memory(read_shard(shard.dir), trace)
    assert (memory["budget_bytes"], memory["budget_source"], memory["xmx"]) == (4 * 2**30, "slurm --mem", None)


def test_slurm_memory_comes_from_the_jobs_environment():
    assert scheduler_memory_bytes({}) is None
    assert scheduler_memory_bytes({"SLURM_MEM_PER_NODE": "2048"}) == 2 * 2**30
    assert scheduler_memory_bytes({"SLURM_MEM_PER_CPU": "512", "SLURM_CPUS_ON_NODE": "4"}) == 2 * 2**30
    assert scheduler_memory_bytes({"SLURM_MEM_PER_NODE": "lots"}) is None
