"""validate: the pure check_frame on small frames, and validation_of on merged shard dirs."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from shardrun.config import parse_config
from shardrun.partition import ShardSpec
from shardrun.results.merge import merge_result_set, merge_shards
from shardrun.results.read import shard_dirs_of_run
from shardrun.results.tolerance import FailedTolerance
from shardrun.results.validate import MAX_LISTED, check_frame, validation_of, write_validation
from shardrun.section import Section
from shardrun.storage.paths import MergedPaths, RunPaths

# The task double and the shard-dir builders are shared with the merge tests (pytest puts tests/ on
# sys.path); importing them also brings the autouse fixture that makes the double loadable.
from task_double import USERS, TaskDouble, make_run, raw_config, rows_of, task_double  # noqa: F401

TASK = TaskDouble()
SETTINGS = TASK.parse_settings(Section(raw_config()))
CONFIG_HASH = "feedfacefeedface"


def good_frame(users=USERS) -> pd.DataFrame:
    rows = [row for user in users for row in rows_of(user, ShardSpec(0, 1), CONFIG_HASH)]
    return pd.DataFrame(rows)


def check(frame: pd.DataFrame, expected_users=USERS, config_hash=CONFIG_HASH) -> list[str]:
    return check_frame(frame, TASK, SETTINGS, expected_users, config_hash=config_hash)


@pytest.fixture
def config():
    """The config the merged test runs were made with (parsed once the task double is loadable)."""
    return parse_config(raw_config())


# --- check_frame (pure) ---------------------------------------------------------------------


def test_a_good_frame_passes():
    assert check(good_frame()) == []


def test_missing_and_unexpected_columns_are_named():
    frame = good_frame().drop(columns="n_obs").assign(extra=1)

    assert check(frame) == ["missing column 'n_obs'", "unexpected column 'extra' (not in the task's schema)"]


def test_columns_out_of_order_are_reported():
    frame = good_frame()
    frame = frame[list(reversed(frame.columns))]

    problems = check(frame)

    assert len(problems) == 1 and problems[0].startswith("columns are not in schema order")


def test_a_duplicate_key_is_reported():
    frame = good_frame()
    frame = pd.concat([frame, frame.iloc[[2]]], ignore_index=True)

    assert check(frame) == ["duplicate key user_id='u01', feature_mode='activity': 2 rows (expected one)"]


def test_a_bad_status_is_reported():
    frame = good_frame()
    frame.loc[3, "status"] = "done"

    assert check(frame) == ["user_id='u01', feature_mode='composite': status 'done' is not one of ok, skipped, failed"]


def test_a_failed_row_without_reason_is_reported():
    frame = good_frame()
    frame.loc[0, ["status", "reason"]] = ["failed", "  "]
    frame.loc[1, ["status", "reason"]] = ["skipped", None]

    assert check(frame) == [
        "user_id='u00', feature_mode='activity': status 'failed' but reason is empty",
        "user_id='u00', feature_mode='composite': status 'skipped' but reason is empty",
    ]


def test_a_wrong_config_hash_is_reported():
    assert check(good_frame(), config_hash="0123456789abcdef") == [
        f"config_hash is {CONFIG_HASH!r} but the config's hash is '0123456789abcdef';"
        " the results were computed with another config"
    ]


def test_mixed_config_hashes_are_reported():
    frame = good_frame()
    frame.loc[5, "config_hash"] = "other"

    problems = check(frame, config_hash=None)

    assert problems == [
        f"column config_hash has 2 values ({CONFIG_HASH!r}, 'other'); a result set must come from one config"
    ]


def test_missing_and_unknown_users_are_reported():
    assert check(good_frame(), expected_users=USERS[1:] + ["u99"]) == [
        "user 'u99' from the input has no rows",
        "user 'u00' is not in the input",
    ]


def test_a_user_missing_a_mode_is_reported():
    frame = good_frame().drop(index=5).reset_index(drop=True)

    assert check(frame) == ["user 'u02' has no row for feature_mode='composite'"]


def test_task_value_checks_are_included():
    frame = good_frame()
    frame.loc[0, "ais_bits"] = -1.0

    assert check(frame) == ["user 'u00' mode 'activity': ais_bits -1.0 < 0"]


def test_long_lists_are_capped():
    users = [f"u{i:02d}" for i in range(15)]
    frame = good_frame(users)
    frame["status"] = "done"

    problems = check(frame, expected_users=users)

    assert len(problems) == MAX_LISTED + 1
    assert problems[-1] == (f"... and {len(frame) - MAX_LISTED} more rows with a bad status or reason"
                            f" ({len(frame)} in all)")


def test_hostile_ids_are_shown_escaped_and_cut():
    frame = good_frame()
    frame.loc[frame.user_id == "u00", "user_id"] = "a\x00b" + "x" * 500
    frame.loc[0, "status"] = "bad"

    problems = check(frame, expected_users=None)

    assert "user_id='a\\x00bxxx" in problems[0] and "..." in problems[0] and len(problems[0]) < 200


# --- validation_of (files) --------------------------------------------------------------------


@pytest.fixture
def merged(tmp_path):
    def build(**run_options):
        run = make_run(tmp_path / "run", count=2, **run_options)
        out = tmp_path / "merged"
        merge_shards(shard_dirs_of_run(run), out)
        return out

    return build


def test_a_merged_run_is_valid_with_and_without_config(merged, config):
    out = merged()

    assert validation_of(out).problems == []
    assert validation_of(out, config).problems == []


def test_csv_is_read_when_there_is_no_parquet(merged, config):
    out = merged()
    MergedPaths(out).parquet.unlink()

    assert validation_of(out, config).problems == []


def test_a_missing_user_is_reported_from_the_report_and_from_the_config(merged, config):
    out = merged(skip_users=["u03"])

    assert validation_of(out).problems == ["merge report: user 'u03' has no results (planned in shard 1/2)"]
    assert validation_of(out, config).problems == ["user 'u03' from the input has no rows"]


def test_a_config_with_another_hash_is_reported(merged, config):
    out = merged()
    other = parse_config(raw_config(modes=["activity", "composite", "extra"]))

    problems = validation_of(out, other).problems

    assert (
        f"config_hash is {config.hash!r} but the config's hash is {other.hash!r};"
        " the results were computed with another config"
    ) in problems


def test_conflicts_in_the_report_are_reported(merged, config, tmp_path):
    out = merged()
    report_path = MergedPaths(out).report
    report = json.loads(report_path.read_text())
    report["conflicts"] = [
        {
            "key": {"user_id": "u01", "feature_mode": "activity"},
            "dirs": ["a", "b"],
            "differences": [{"column": "ais_bits", "values": [1.0, 2.0]}],
        }
    ]
    report_path.write_text(json.dumps(report))

    assert validation_of(out, config).problems == [
        "merge report: conflicting rows for user_id='u01', feature_mode='activity' in a, b: ais_bits differ"
    ]


def test_a_result_dir_without_results_is_reported(tmp_path, config):
    assert validation_of(tmp_path, config).problems == [
        f"no results.parquet or results.csv in {tmp_path}; run merge_shard_results --output {tmp_path}"
    ]
    assert validation_of(tmp_path).problems == [
        f"no merge_report.json in {tmp_path}; pass --config to validate results without it"
    ]


def test_write_validation_records_the_verdict(merged):
    out = merged()

    write_validation(out, ["missing column 'n_obs'"])
    assert json.loads(MergedPaths(out).validation.read_text())["problems"] == ["missing column 'n_obs'"]
    write_validation(out, [])
    written = json.loads(MergedPaths(out).validation.read_text())
    assert written["valid"] is True and written["problems"] == [] and written["checked_at"]


def test_the_merges_own_frame_validates_as_the_files_do(tmp_path):
    run = make_run(tmp_path / "run", count=2, skip_users=["u03"])
    merged = merge_result_set(shard_dirs_of_run(run), tmp_path / "merged")
    from_disk = validation_of(tmp_path / "merged").problems
    assert from_disk and validation_of(tmp_path / "merged", frame=merged.frame).problems == from_disk
    whole = make_run(tmp_path / "whole", count=2)
    merged = merge_result_set(shard_dirs_of_run(whole), tmp_path / "whole-merged")
    assert validation_of(tmp_path / "whole-merged", frame=merged.frame).problems == [] == validation_of(
        tmp_path / "whole-merged").problems


# --- the run-level verdict (files) -----------------------------------------------------------

HEAP = "HeapTooSmall: Java heap exhausted: this user needs about 3.0 GiB of heap but the JVM has -Xmx2g."


def test_failed_users_fail_a_merged_set_with_their_class_and_where_to_look(merged, config):
    failed = {"status": "failed", "reason": HEAP, "ais_bits": None}
    out = merged(overrides={"u02": failed, "u05": failed})

    validation = validation_of(out, config)
    (problem,) = validation.problems
    assert problem.startswith("2 users of 8 failed (--max-failed 0): 2 HeapTooSmall (raise jvm.xmx in the config,"
                              " or --xmx); see each shard dir's errors.jsonl")
    # a set merged elsewhere than RUN/merged; a command run_production takes (--full, the run's config)
    assert "run_production --config CONFIG --full --resume SHARD_DIR --retry-failed" in problem
    assert problem.endswith("for each shard dir the set was merged from, then merge again")
    assert validation.lines() == ["users: 8 in the result set: 6 ok, 0 skipped, 2 failed",
                                  "  failed by error class: 2 HeapTooSmall (raise jvm.xmx in the config, or --xmx)"]
    assert validation_of(out, config, max_failed=FailedTolerance(2)).problems == []
    assert validation_of(out, config, max_failed=FailedTolerance(percent=20)).problems != []  # 25% failed

    write_validation(out, validation.problems, config.hash, validation.document())
    written = json.loads(MergedPaths(out).validation.read_text())
    assert written["valid"] is False and written["verdict"] == "failed" and written["max_failed"] == "0"
    assert written["users"] == {"total": 8, "ok": 6, "skipped": 0, "failed": 2, "skipped_by_reason": {},
                                "failed_by_class": {"HeapTooSmall": 2}}


def test_a_runs_own_merged_dir_names_the_run_to_retry(tmp_path):
    failed = {"status": "failed", "reason": "java.lang.IllegalStateException: broken", "ais_bits": None}
    run = make_run(tmp_path / "run", count=2, overrides={"u01": failed})
    run_json = RunPaths(run).run_json
    run_json.write_text(json.dumps({**json.loads(run_json.read_text()), "config_path": "/cfg/c.yaml", "pilot": 3}))
    merge_shards(shard_dirs_of_run(run), run / "merged")

    (problem,) = validation_of(run / "merged").problems
    assert "1 java.lang.IllegalStateException (e.g. user 'u01': broken)" in problem
    assert f"see {run}/shard-*/errors.jsonl" in problem
    assert problem.endswith(f"launch_shards --config /cfg/c.yaml --shards 2 --out {run} --pilot 3 --retry-failed")


def test_a_merged_set_whose_every_user_was_skipped_is_not_valid(merged, config):
    skipped = {"status": "skipped", "reason": "only 0 observations; needs at least 6", "ais_bits": None}
    out = merged(overrides={user: skipped for user in USERS})

    assert validation_of(out, config, max_failed=FailedTolerance(percent=100)).problems == [
        "nothing was analysed: every one of the 8 users was skipped (8 'only 0 observations; needs at least 6');"
        " the reasons say what to change in the input data or the task's settings"
    ]
