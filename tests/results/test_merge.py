"""merge_shards on real shard dirs written with the real store functions; the task is a test double."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys

import pandas as pd
import pytest

from shardrun.config import parse_config
from shardrun.errors import MergeError
from shardrun.partition import ShardSpec
from shardrun.results.frame import typed_column
from shardrun.results.merge import merge_result_set, merge_shards
from shardrun.results.read import shard_dirs_of_run
from shardrun.storage.atomic import write_json_atomic
from shardrun.storage.paths import MergedPaths, RunPaths

from e2e_support import analysis_values, read_trace, shardrun, wait_for
from store_support import commit_user
from task_double import (  # noqa: F401  (task_double: the autouse fixture that makes the double loadable)
    COLUMNS,
    MODES,
    USERS,
    ais_of,
    make_run,
    raw_config,
    read_both,
    read_report,
    task_double,
)

# --- tests ----------------------------------------------------------------------------------


def test_one_run_merge_is_complete_sorted_and_in_schema_order(tmp_path):
    run = make_run(tmp_path / "run", count=4)
    write_json_atomic(RunPaths(run).shard(ShardSpec(0, 4)).status, {"state": "completed"})
    out = tmp_path / "merged"

    report = merge_shards(shard_dirs_of_run(run), out)

    assert report.complete and report.rows == 16 and report.users == 8
    _, frame = read_both(out)
    assert list(frame.columns) == COLUMNS + ["shard", "seconds", "config_hash"]
    assert list(zip(frame.user_id, frame.feature_mode)) == [(u, m) for u in USERS for m in MODES]
    assert frame["te_bits"].isna().all()
    assert frame["n_obs"].dtype == "int64"
    on_disk = read_report(out)
    assert on_disk["complete"] is True
    assert on_disk["config_hash"] == parse_config(raw_config()).hash
    assert on_disk["identical_duplicates"] == 0
    assert on_disk["conflicts"] == [] and on_disk["missing_users"] == [] and on_disk["missing_shards"] == []
    assert [s["shard"] for s in on_disk["shards"]] == ["0/4", "1/4", "2/4", "3/4"]
    assert on_disk["shards"][0]["state"] == "completed" and on_disk["shards"][1]["state"] is None
    assert on_disk["shards"][0]["users_planned"] == 2 and on_disk["shards"][0]["users_committed"] == 2
    assert len(on_disk["provenance"]) == 1
    assert on_disk["provenance"][0]["config"] == raw_config()
    assert on_disk["provenance"][0]["versions"] == {"shardrun": "test"}


def test_separately_started_runs_combine(tmp_path):
    dirs = []
    for index in range(4):  # four runs, each with one shard of the same 4-way split
        run = make_run(tmp_path / f"run{index}", count=4, indices=[index])
        dirs += shard_dirs_of_run(run)

    report = merge_shards(dirs, tmp_path / "merged")

    assert report.complete and report.rows == 16 and report.identical_duplicates == 0
    assert len(report.provenance) == 4
    assert sorted(s["shard"] for s in report.shards) == ["0/4", "1/4", "2/4", "3/4"]


def test_identical_duplicates_are_dropped(tmp_path):
    # the same users computed by a 2-way and a 1-way run: values agree, bookkeeping differs
    first = make_run(tmp_path / "a", count=2, seconds=1.0)
    second = make_run(tmp_path / "b", count=1, seconds=9.0)
    out = tmp_path / "merged"

    report = merge_shards(shard_dirs_of_run(first) + shard_dirs_of_run(second), out)

    assert report.complete
    assert report.rows == 16 and report.identical_duplicates == 16
    _, frame = read_both(out)
    assert not frame.duplicated(["user_id", "feature_mode"]).any()
    assert set(frame["shard"]) == {"0/2", "1/2"}  # the first dir by sorted path is kept


def test_same_dir_given_twice_is_read_once(tmp_path):
    run = make_run(tmp_path / "run", count=2)
    dirs = shard_dirs_of_run(run)

    report = merge_shards(dirs + dirs, tmp_path / "merged")

    assert report.complete and report.rows == 16 and report.identical_duplicates == 0


def test_conflicting_duplicates_are_reported_and_first_kept(tmp_path):
    first = make_run(tmp_path / "a", count=1)
    second = make_run(tmp_path / "b", count=1, overrides={"u03": {"ais_bits": 99.0, "modes": ("activity",)}})
    out = tmp_path / "merged"

    report = merge_shards(shard_dirs_of_run(first) + shard_dirs_of_run(second), out)

    assert not report.complete
    assert report.rows == 16 and report.identical_duplicates == 14  # 15 rows in b, one of them differs
    assert report.conflicts == [
        {
            "key": {"user_id": "u03", "feature_mode": "activity"},
            "dirs": [str((first / "shard-0-of-1").resolve()), str((second / "shard-0-of-1").resolve())],
            "differences": [{"column": "ais_bits", "values": [ais_of("u03", "activity"), 99.0]}],
        }
    ]
    assert read_report(out)["complete"] is False
    _, frame = read_both(out)
    kept = frame[(frame.user_id == "u03") & (frame.feature_mode == "activity")]
    assert kept["ais_bits"].tolist() == [ais_of("u03", "activity")]


def test_config_hash_mismatch_is_refused_unless_forced(tmp_path):
    first = make_run(tmp_path / "a", count=1)
    second = make_run(tmp_path / "b", count=1, raw=raw_config(modes=["activity"]))
    dirs = shard_dirs_of_run(first) + shard_dirs_of_run(second)
    hash_a, hash_b = parse_config(raw_config()).hash, parse_config(raw_config(modes=["activity"])).hash

    with pytest.raises(MergeError) as refused:
        merge_shards(dirs, tmp_path / "merged")
    message = str(refused.value)
    assert "--force merges anyway" in message
    assert f"{dirs[0].resolve()}: config hash {hash_a}" in message
    assert f"{dirs[1].resolve()}: config hash {hash_b}" in message
    assert not (tmp_path / "merged").exists()

    report = merge_shards(dirs, tmp_path / "merged", force=True)
    assert not report.complete
    assert report.config_hash is None
    assert {m["config_hash"] for m in report.forced_mismatch} == {hash_a, hash_b}
    assert read_report(tmp_path / "merged")["forced_mismatch"] == report.forced_mismatch


def test_data_fingerprint_mismatch_is_refused(tmp_path):
    first = make_run(tmp_path / "a", count=1)
    second = make_run(tmp_path / "b", count=1, fingerprint="other-data")

    with pytest.raises(MergeError, match="data fingerprint other-data"):
        merge_shards(shard_dirs_of_run(first) + shard_dirs_of_run(second), tmp_path / "merged")


def test_missing_shard_missing_users_and_missing_modes_are_reported(tmp_path):
    run = make_run(
        tmp_path / "run",
        count=4,
        indices=[0, 1, 3],
        skip_users=["u05"],
        overrides={"u04": {"modes": ("activity",)}},
    )

    report = merge_shards(shard_dirs_of_run(run), tmp_path / "merged")

    assert not report.complete
    assert report.missing_shards == [
        {"shard": "2/4", "note": "no dir of this shard was given; which users it holds is unknown to merge"}
    ]
    assert report.missing_users == [
        {"user_id": "u05", "shards": ["1/4"], "dirs": [str((run / "shard-1-of-4").resolve())]}
    ]
    assert report.users_short_of_rows == [{"user_id": "u04", "rows": 1, "expected_rows": 2}]
    assert report.problem_lines() == [
        "user 'u05' has no results (planned in shard 1/4)",
        "shard 2/4 was not merged (its users are unknown)",
        "user 'u04' has 1 rows, others have 2",
    ]


HOSTILE_IDS = ["../x", "/abs", "a\x00b", "L" * 5000, "NA", "None", "007", "comma,quote\"\r\nnewline", "ü ümlaut"]


def test_hostile_user_ids_survive_under_their_own_ids(tmp_path):
    run = make_run(tmp_path / "run", count=3, raw=raw_config(users=HOSTILE_IDS))
    out = tmp_path / "merged"

    report = merge_shards(shard_dirs_of_run(run), out)

    assert report.complete and report.users == len(HOSTILE_IDS)
    csv_frame, parquet_frame = read_both(out)
    for frame in (csv_frame, parquet_frame):
        assert sorted(set(frame["user_id"])) == sorted(HOSTILE_IDS)
    # nothing was written outside the run dir and the output dir
    assert sorted(p.name for p in tmp_path.iterdir()) == ["merged", "run"]
    assert sorted(p.name for p in out.iterdir()) == ["merge_report.json", "results.csv", "results.parquet", "run.png",
                                                     "summary.png", "trace.tsv"]
    # the trace holds every id as it is: read back by pandas as the docs say, and by the plain call
    trace = read_trace(out / "trace.tsv")
    assert sorted(trace["user_id"]) == sorted(HOSTILE_IDS)
    plain = pd.read_csv(out / "trace.tsv", sep="\t", dtype={"user_id": str}, keep_default_na=False)
    assert sorted(plain["user_id"]) == sorted(HOSTILE_IDS)


def test_csv_and_parquet_agree(tmp_path):
    run = make_run(
        tmp_path / "run",
        count=2,
        raw=raw_config(users=HOSTILE_IDS),
        overrides={"/abs": {"status": "failed", "reason": "boom", "n_obs": None, "ais_bits": None}},
    )
    out = tmp_path / "merged"
    merge_shards(shard_dirs_of_run(run), out)

    csv_frame, parquet_frame = read_both(out)

    # CSV cannot tell an empty text from a missing one; compare text columns with both as "".
    def normalised(frame):
        frame = frame.copy()
        for column in ("user_id", "feature_mode", "status", "reason", "shard", "config_hash"):
            frame[column] = frame[column].astype(object).where(frame[column].notna(), "")
        return frame

    pd.testing.assert_frame_equal(normalised(csv_frame), normalised(parquet_frame), check_dtype=False)
    failed = parquet_frame[parquet_frame.user_id == "/abs"]
    assert failed["n_obs"].isna().all() and failed["ais_bits"].isna().all()
    assert math.isnan(csv_frame.loc[csv_frame.user_id == "/abs", "ais_bits"].iloc[0])


def test_remerge_removes_the_stale_validation(tmp_path):
    run = make_run(tmp_path / "run", count=1)
    out = tmp_path / "merged"
    merge_shards(shard_dirs_of_run(run), out)
    write_json_atomic(MergedPaths(out).validation, {"valid": True, "problems": []})

    merge_shards(shard_dirs_of_run(run), out, overwrite=True)

    assert not MergedPaths(out).validation.exists()


def test_without_run_json_columns_come_from_the_rows(tmp_path):
    run = make_run(tmp_path / "run", count=1)
    RunPaths(run).run_json.unlink()

    report = merge_shards(shard_dirs_of_run(run), tmp_path / "merged")

    assert report.provenance == []
    _, frame = read_both(tmp_path / "merged")
    expected_rest = sorted(set(COLUMNS) - {"user_id", "feature_mode"})
    assert list(frame.columns) == ["user_id", "feature_mode", *expected_rest, "shard", "seconds", "config_hash"]


def test_a_dir_that_is_not_a_shard_dir_is_refused(tmp_path):
    run = make_run(tmp_path / "run", count=1)
    (tmp_path / "plain").mkdir()

    with pytest.raises(MergeError, match="plain is not a shard dir .*no shard.json"):
        merge_shards([tmp_path / "plain"], tmp_path / "merged")
    with pytest.raises(MergeError, match="looks like a run dir: pass it with --run"):
        merge_shards([run], tmp_path / "merged")
    with pytest.raises(MergeError, match="holds no shard dirs"):
        shard_dirs_of_run(tmp_path / "plain")


# --- the typed frame: every kind of JSON value, through the merge ------------------------------

COLUMNS_OF_EVERY_KIND = {
    "ints": [1, 2, 3, 4],
    "ints_with_null": [1, None, 3, 4],
    "floats_with_nan": [1.5, math.nan, None, 2.0],
    "ints_and_floats": [1128, 1128.0, 3, 0.5],
    "bools": [True, False, True, True],
    "bools_with_null": [True, None, False, True],
    "strings": ["a", "007", "NA", ""],
    "strings_with_null": ["a", None, "b", "c"],
    "all_null": [None, None, math.nan, None],
    "bool_and_int": [True, 1, 0, False],
    "text_and_numbers": ["n/a", 1.5, 2, None],
    "arrays": [[1, 2], [3], None, []],
    "objects": [{"a": 1}, None, {"b": [2]}, {}],
    "huge_ints": [2**70, 1, None, 3],
}


def test_every_kind_of_json_value_is_typed_by_its_json_types(tmp_path):
    """Four users whose rows carry every kind of column (Arrow cannot type some of them: those are read
    by Python's json and typed value by value); each merged column is the rule's (frame.typed_column)."""
    run = make_run(tmp_path / "run", count=1, skip_users=USERS)
    RunPaths(run).run_json.unlink()  # the columns come from the rows
    [shard] = [RunPaths(run).shard(ShardSpec(0, 1))]
    for n, user_id in enumerate(USERS[:4]):
        extra = {column: values[n] for column, values in COLUMNS_OF_EVERY_KIND.items()}
        commit_user(shard, user_id, [{"user_id": user_id, "feature_mode": mode, **extra} for mode in MODES])

    merged = merge_result_set([shard.dir], tmp_path / "merged")

    for column, values in COLUMNS_OF_EVERY_KIND.items():
        expected = typed_column([value for value in values for _ in MODES])
        pd.testing.assert_series_equal(merged.frame[column], expected, check_names=False, obj=column)
    assert [m["column"] for m in merged.report.mixed_columns] == ["bool_and_int", "text_and_numbers"]
    assert merged.report.mixed_columns[0]["types"] == {"boolean": 4, "number": 4}
    frame = merged.frame
    assert frame["ints"].dtype == "int64" and frame["ints_with_null"].dtype == "Int64" and frame["bools"].dtype == bool
    assert frame["all_null"].dtype == "float64" and frame["ints_and_floats"].dtype == "float64"
    assert frame["huge_ints"].dtype == "float64" and frame["arrays"].tolist()[:2] == ["[1, 2]", "[1, 2]"]
    assert frame["bool_and_int"].tolist()[::2] == ["true", "1", "0", "false"]
    assert frame["objects"].tolist()[4] == '{"b": [2]}'


# --- duplicates and conflicts over whole columns ---------------------------------------------------


def test_duplicates_conflicts_and_types_across_shards(tmp_path):
    plain = make_run(tmp_path / "plain", count=3)
    conflicting = make_run(tmp_path / "conflicting", count=1,
                           overrides={"u03": {"ais_bits": 99.0}, "u05": {"n_obs": None}})
    report = merge_shards(shard_dirs_of_run(plain) + shard_dirs_of_run(conflicting), tmp_path / "duplicates")
    assert report.identical_duplicates == 12 and report.rows == 16
    assert sorted((c["key"]["user_id"], c["differences"][0]["column"]) for c in report.conflicts) == [
        ("u03", "ais_bits"), ("u03", "ais_bits"), ("u05", "n_obs"), ("u05", "n_obs")]
    # the first dir by sorted path is kept: "conflicting" before "plain"
    assert [c["differences"][0]["values"] for c in report.conflicts
            if c["key"]["user_id"] == "u05"] == [[None, 103]] * 2

    floats_here = make_run(tmp_path / "floats", count=1, overrides={"u01": {"n_obs": 1128.5}})
    report = merge_shards(shard_dirs_of_run(plain) + shard_dirs_of_run(floats_here), tmp_path / "floats-merged")
    assert {c["key"]["user_id"] for c in report.conflicts} == {"u01"} and report.mixed_columns == []
    assert read_both(tmp_path / "floats-merged")[1]["n_obs"].dtype == "float64"

    mixed = make_run(tmp_path / "mixed", count=1, overrides={"u02": {"n_obs": True}})
    report = merge_shards(shard_dirs_of_run(mixed), tmp_path / "mixed-merged")
    assert report.mixed_columns == [{"column": "n_obs", "types": {"number": 14, "boolean": 2}}]
    assert read_both(tmp_path / "mixed-merged")[1]["n_obs"].tolist()[4:6] == ["true", "true"]


# --- a task's columns of the whole set (Task.set_columns) ------------------------------------


def rank_in_mode(frame: pd.DataFrame) -> pd.Series:
    """A column that depends on the whole set: each row's rank of ais_bits among its mode's rows."""
    return frame.groupby("feature_mode")["ais_bits"].rank(method="min")


@pytest.fixture
def set_hooks(monkeypatch, task_double):
    """The double with set columns: rank_in_mode (in its schema, after ais_bits) and not_in_schema, its
    facts for merge_report.json, and the frame its summary panels were given."""
    seen: list[pd.DataFrame] = []
    schema = COLUMNS[:6] + ["rank_in_mode"] + COLUMNS[6:]
    monkeypatch.setattr(task_double, "result_columns", lambda settings: list(schema), raising=False)
    monkeypatch.setattr(task_double, "set_columns", lambda frame, settings: {
        "rank_in_mode": rank_in_mode(frame), "not_in_schema": frame["n_obs"] * 0, "shard": frame["n_obs"] * 0,
    }, raising=False)
    monkeypatch.setattr(task_double, "set_report", lambda frame, settings: {
        "top": sorted(frame.loc[frame["rank_in_mode"] == 1, "user_id"])}, raising=False)
    monkeypatch.setattr(task_double, "summary_panels", lambda frame, settings: seen.append(frame.copy()) or [],
                        raising=False)
    return schema, seen


def test_a_tasks_set_columns_are_filled_over_the_whole_set_before_the_picture(tmp_path, set_hooks):
    schema, seen = set_hooks
    run = make_run(tmp_path / "run", count=4)
    output = tmp_path / "set columns"
    report = merge_shards(shard_dirs_of_run(run), output)

    for frame in read_both(output):
        assert list(frame.columns) == schema + ["shard", "seconds", "config_hash"]
        expected = {(u, m): 1 + sum(ais_of(other, m) < ais_of(u, m) for other in USERS) for u in USERS for m in MODES}
        assert [expected[key] for key in zip(frame.user_id, frame.feature_mode)] == frame["rank_in_mode"].tolist()
        assert frame["shard"].str.endswith("/4").all()  # a bookkeeping column is never the task's to fill
    # the picture was given the frame with the set column already filled in
    assert seen and all(frame["rank_in_mode"].notna().all() for frame in seen)
    # a set column outside the schema is left out and said so; the task's facts are recorded
    assert report.dropped_columns == ["not_in_schema", "shard"]
    on_disk = read_report(output)
    best = {m: min(USERS, key=lambda u: (ais_of(u, m), u)) for m in MODES}
    assert on_disk["task"] == {"top": sorted(best.values())}

    # the same set from one shard: the same set columns
    single = make_run(tmp_path / "single", count=1)
    merge_shards(shard_dirs_of_run(single), tmp_path / "single-merged")
    pd.testing.assert_series_equal(read_both(tmp_path / "single-merged")[1]["rank_in_mode"],
                                   read_both(output)[1]["rank_in_mode"])


def test_without_the_hooks_the_report_has_no_task_facts(tmp_path):
    run = make_run(tmp_path / "run", count=2)
    merge_shards(shard_dirs_of_run(run), tmp_path / "merged")
    assert read_report(tmp_path / "merged")["task"] == {}


@pytest.mark.e2e
def test_a_second_merge_into_the_same_output_is_refused_naming_the_first(workspace, tmp_path):
    """Two merges into one new --output: the second is refused at once (exit 4) naming the live one, and
    the first's set is the one in place; never both succeed with one set silently replacing the other.
    The first is paused (SIGSTOP) while the second tries, so they overlap whatever the machine's load."""
    reference_run, out = workspace["root"] / "reference", tmp_path / "merged"
    first = subprocess.Popen([sys.executable, "-m", "shardrun", "merge", "--run", str(reference_run),
                              "--output", str(out)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lock = MergedPaths(out).merge_lock
    wait_for(lambda: lock.is_file() and f'"pid": {first.pid}' in lock.read_text(), process=first)
    os.kill(first.pid, signal.SIGSTOP)
    try:
        second = shardrun("merge", "--run", str(reference_run), "--output", str(out), "--overwrite",
                          cwd=tmp_path, check=False)
    finally:
        os.kill(first.pid, signal.SIGCONT)
    assert second.returncode == 4, second.stdout + second.stderr
    assert "a merge into" in second.stderr and f'"pid": {first.pid}' in second.stderr
    output, _ = first.communicate(timeout=300)
    assert first.returncode == 0, output
    pd.testing.assert_frame_equal(analysis_values(out), workspace["reference"], check_exact=True)
    assert not lock.exists()


@pytest.mark.e2e
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["TERM", "INT"])
def test_a_merge_interrupted_says_so_leaves_nothing_half_written_and_runs_again(workspace, tmp_path, sig):
    """A stop signal in the middle of a merge (sent to its process group): exit 3,
    one `error:` line, no traceback; no set and no staging dir left; the same command
    then merges."""
    reference_run, out = workspace["root"] / "reference", tmp_path / "merged"
    command = [sys.executable, "-m", "shardrun", "merge", "--run", str(reference_run), "--output", str(out)]
    merge = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    lock = MergedPaths(out).merge_lock
    wait_for(lambda: lock.is_file() and f'"pid": {merge.pid}' in lock.read_text(), process=merge)
    os.killpg(merge.pid, sig)  # its process group, as a terminal's Ctrl-C or a stop would
    stdout, stderr = merge.communicate(timeout=300)
    assert merge.returncode == 3, stdout + stderr
    assert f"error: interrupted by {sig.name}" in stderr and "Traceback" not in stderr, stderr
    assert not out.exists() and not list(tmp_path.glob(".merged.*"))
    again = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    pd.testing.assert_frame_equal(analysis_values(out), workspace["reference"], check_exact=True)
