"""End to end with real processes, the real JVM and JIDT: shards, SIGKILL, resume, merge, validate."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from datetime import datetime
from itertools import pairwise
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from shardrun.results.read import read_shard, shard_dirs_of_run
from shardrun.results.timeline import span_table, start_table

from e2e_support import analysis_values, faulty_task_config, read_status, shardrun
from independent_estimator import assert_row_matches, brute_force_q, expected_mode_row
from store_support import committed_users

pytestmark = pytest.mark.e2e

def test_reference_run_is_whole_and_valid(workspace):
    ref = workspace["reference"]
    assert len(ref) == 14 * 2
    assert not ref.duplicated(["user_id", "feature_mode"]).any()
    assert set(ref["status"]) == {"ok"}
    result = shardrun("validate", "--dir", str(workspace["root"] / "reference" / "merged"),
                      "--config", str(workspace["config"]), cwd=workspace["root"])
    assert "valid" in result.stdout


def test_pipeline_numbers_match_an_independent_implementation(workspace):
    """The numbers of real run_production processes on categorical data, against a plug-in estimator."""
    raw = pd.read_csv(workspace["data"])
    ref = workspace["reference"].set_index(["user_id", "feature_mode"])
    expected_rows = {}
    for user, mine in raw.groupby("who"):
        mine = mine.sort_values("when", kind="stable")
        labels = sorted(set(mine["label"]))
        values = np.array([labels.index(v) for v in mine["label"]])
        hours = np.array([int(w[11:13]) * 4 // 24 for w in mine["when"]])
        for mode in ("activity", "composite"):
            expected = expected_mode_row(values, hours, mode, 3, 4, (1, 2, 3, 4), 60, 12345, user)
            assert_row_matches(ref.loc[(user, mode)], expected)
            expected_rows[(user, mode)] = expected
    # the q-values over the set: Benjamini-Hochberg per feature mode and p column, by its definition
    for mode in ("activity", "composite"):
        users = sorted(user for user, row_mode in expected_rows if row_mode == mode)
        for p_column in [f"ais_k{k}_p" for k in (1, 2, 3, 4)] + ["te_hour_p"]:
            q_values = brute_force_q([expected_rows[(user, mode)][p_column] for user in users])
            q_column = p_column.removesuffix("_p") + "_q"
            for user, q in zip(users, q_values):
                assert abs(ref.loc[(user, mode), q_column] - q) <= 1e-12, (user, mode, q_column)
                assert ref.loc[(user, mode), p_column] >= 1 / 61


def test_validation_catches_tampered_q_values(workspace, tmp_path):
    """A real merged set whose q-values were edited: one below its p, two swapped out of BH's order."""
    merged = tmp_path / "merged"
    shutil.copytree(workspace["root"] / "reference" / "merged", merged)
    frame = pd.read_parquet(merged / "results.parquet")
    activity = frame.index[frame.feature_mode == "activity"]
    by_p = frame.loc[activity, "te_hour_p"].sort_values(kind="stable").index
    smaller, larger = next((a, b) for a, b in pairwise(by_p) if frame.at[a, "te_hour_q"] < frame.at[b, "te_hour_q"])
    frame.loc[[smaller, larger], "te_hour_q"] = frame.loc[[larger, smaller], "te_hour_q"].to_numpy()
    frame.loc[activity[0], "ais_k1_q"] = frame.at[activity[0], "ais_k1_p"] / 2
    frame.to_parquet(merged / "results.parquet", index=False)

    result = shardrun("validate", "--dir", str(merged), "--config", str(workspace["config"]), cwd=workspace["root"],
                      check=False)
    assert result.returncode != 0, result.stdout
    output = result.stdout + result.stderr
    assert "have ais_k1_q outside [ais_k1_p, 1]" in output, output
    assert "have te_hour_q below the te_hour_q of a smaller te_hour_p" in output, output
    assert "validation passed" not in output


def test_sigkilled_shard_resumes_to_the_uninterrupted_result(workspace):
    root, config = workspace["root"], workspace["config"]
    run = root / "killed"
    victim = subprocess.Popen(
        # each user committed as it ends, and users of at least 0.3 s: users are left when one is done
        [sys.executable, "-m", "shardrun", "run", "--config", str(config), "--full", "--shard", "1/3",
         "--out", str(run), "--heartbeat", "0.2", "--commit-interval", "0", "--cooldown", "0.3"],
        cwd=root, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    shard_dir = run / "shard-1-of-3"
    deadline = time.monotonic() + 120
    while read_status(shard_dir).get("users_done", 0) < 1:
        assert victim.poll() is None, "the shard ended before it could be killed"
        assert time.monotonic() < deadline
        time.sleep(0.01)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    before = read_status(shard_dir)
    assert before["state"] == "running" and before["users_todo"] > 0, before
    monitor = shardrun("monitor", str(run), cwd=root)
    assert "1/3" in monitor.stdout and "dead (process gone)" in monitor.stdout, monitor.stdout
    committed_before = committed_users(shard_dir)

    resumed = shardrun("run", "--config", str(config), "--full", "--resume", str(shard_dir), cwd=root)
    assert "exit 0" in resumed.stdout
    after = read_status(shard_dir)
    assert after["state"] == "completed"
    assert after["resumed_with_done"] == len(committed_before)
    assert after["users_done"] == after["users_total"]
    # both processes' starts are kept (run.png draws a start-up for each), the killed one's first
    killed_start, resumed_start = (datetime.fromisoformat(t) for t in after["process_starts"])
    assert before["process_starts"] == after["process_starts"][:1] and killed_start < resumed_start
    for index in (0, 2):
        shardrun("run", "--config", str(config), "--full", "--shard", f"{index}/3", "--out", str(run), cwd=root)

    shardrun("merge", "--run", str(run), "--output", str(run / "merged"), cwd=root)
    merged = analysis_values(run / "merged")
    assert not merged.duplicated(["user_id", "feature_mode"]).any()
    pd.testing.assert_frame_equal(merged, workspace["reference"], check_exact=True)


def test_launcher_runs_k_shards_merges_and_validates(workspace):
    root, config = workspace["root"], workspace["config"]
    result = shardrun("launch", "--config", str(config), "--shards", "3", "--progress-every", "1", cwd=root)
    run_dir = Path(result.stdout.split("run dir: ")[1].split()[0])
    assert (run_dir / "merged" / "results.csv").is_file()
    assert json.loads((run_dir / "merged" / "validation.json").read_text())["valid"] is True
    for index in range(3):
        assert (root / "logs" / f"shard{index}.log").is_file()
        assert read_status(run_dir / f"shard-{index}-of-3")["state"] == "completed"
    # K=3 gives K=1's set, its q-values over the whole set included
    assert {"ais_k1_q", "te_hour_q"} <= set(workspace["reference"].columns)
    pd.testing.assert_frame_equal(analysis_values(run_dir / "merged"), workspace["reference"], check_exact=True)
    csv = pd.read_csv(run_dir / "merged" / "results.csv")
    assert len(csv) == len(workspace["reference"])
    assert ((run_dir / "merged" / "summary.png").stat().st_size > 0
            and (run_dir / "merged" / "run.png").stat().st_size > 0)
    # each shard's process started before its first user, on the clock the users' times are read from
    shards = [read_shard(d) for d in shard_dirs_of_run(run_dir)]
    spans, starts = span_table(shards), start_table(shards)
    for shard, first_user in spans.groupby("shard")["start"].min().items():
        [started] = starts.loc[starts["shard"] == shard, "started"]
        assert started <= first_user < started + 120, (shard, started, first_user)


def test_sigterm_to_the_launcher_drains_and_the_run_continues(workspace):
    root, config = workspace["root"], workspace["config"]
    earlier_runs = set((root / "out").glob("config_full_*"))
    launcher = subprocess.Popen(
        # --cooldown: shards of several seconds, still at work when the first commit shows in status.json
        [sys.executable, "-m", "shardrun", "launch", "--config", str(config), "--shards", "2", "--grace", "60",
         "--cooldown", "0.5"],
        cwd=root, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    deadline = time.monotonic() + 120
    run_dir = None
    while run_dir is None or sum(read_status(d).get("users_done", 0) for d in run_dir.glob("shard-*")) < 1:
        assert time.monotonic() < deadline and launcher.poll() is None
        runs = [p for p in set((root / "out").glob("config_full_*")) - earlier_runs if (p / "run.json").is_file()]
        run_dir = runs[0] if runs else None
        time.sleep(0.01)
    launcher.send_signal(signal.SIGTERM)
    output, _ = launcher.communicate(timeout=120)
    assert launcher.returncode == 3, output
    statuses = [read_status(d) for d in run_dir.glob("shard-*") if (d / "status.json").is_file()]
    states = [status["state"] for status in statuses]
    # A shard that had already finished all its users stays completed; none may be left running.
    assert "interrupted" in states and set(states) <= {"interrupted", "completed"}, output
    pids = [status["pid"] for status in statuses]
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    assert not (run_dir / "merged").exists()

    shardrun("launch", "--config", str(config), "--shards", "2", "--run-dir", str(run_dir), cwd=root)
    pd.testing.assert_frame_equal(analysis_values(run_dir / "merged"), workspace["reference"], check_exact=True)


def test_launch_shards_out_starts_or_continues_one_run(workspace, tmp_path):
    """launch_shards --out DIR, interrupted after a commit, then the very same command: the whole result."""
    root, config = workspace["root"], workspace["config"]
    out = tmp_path / "run"
    command = ["--config", str(config), "--shards", "2", "--out", str(out)]
    launcher = subprocess.Popen([sys.executable, "-m", "shardrun", "launch", *command,
                                 "--grace", "60", "--cooldown", "0.5"],
                                cwd=root, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 120
    while sum(read_status(d).get("users_done", 0) for d in out.glob("shard-*")) < 1:
        assert time.monotonic() < deadline and launcher.poll() is None
        time.sleep(0.01)
    launcher.send_signal(signal.SIGTERM)
    output, _ = launcher.communicate(timeout=120)
    assert launcher.returncode == 3, output
    assert f"Continue it with: shardrun launch --config {config} --shards 2 --out {out}\n" in output + "\n"
    assert not (out / "merged").exists()

    again = shardrun("launch", *command, cwd=root)
    assert "validation passed" in again.stdout
    pd.testing.assert_frame_equal(analysis_values(out / "merged"), workspace["reference"], check_exact=True)
    shardrun("launch", *command, cwd=root)  # a finished run: nothing left to do, the same result
    pd.testing.assert_frame_equal(analysis_values(out / "merged"), workspace["reference"], check_exact=True)

    other_k = shardrun("launch", "--config", str(config), "--shards", "3", "--out", str(out), cwd=root, check=False)
    assert (other_k.returncode == 2 and "was started with 2 shards" in other_k.stderr
            and "pass --shards 2" in other_k.stderr)
    assert not list(out.glob("shard-*-of-3"))
    identity_path = out / "shard-0-of-2" / "shard.json"
    identity = json.loads(identity_path.read_text())
    identity_path.write_text(json.dumps({**identity, "config_hash": "0123456789abcdef"}))
    refused = shardrun("launch", *command, cwd=root, check=False)  # the shard itself refuses: exit 2
    assert refused.returncode == 2, refused.stdout + refused.stderr
    (summary_line,) = [line for line in refused.stdout.split("\n  shard ") if line.startswith("0/2:")]
    assert "refused its input (config, data or environment);" in summary_line
    assert "see its log" not in summary_line and "crash" not in summary_line
    assert "\n      error: cannot resume" in summary_line and "'0123456789abcdef'" in summary_line
    identity_path.write_text("{damaged")
    damaged = shardrun("launch", *command, cwd=root, check=False)
    assert damaged.returncode == 2 and "shard.json is damaged" in damaged.stderr
    assert "Traceback" not in damaged.stdout + damaged.stderr and "crash" not in damaged.stdout + damaged.stderr


def test_failing_users_are_recorded_and_the_shard_goes_on(workspace, tmp_path):
    """Real Java failures of two users (see faulty_task.py): errors.jsonl, failed rows, the rest intact."""
    root = workspace["root"]
    path, env = faulty_task_config(workspace, tmp_path)
    run = tmp_path / "run"
    result = shardrun("run", "--config", str(path), "--full", "--shard", "0/1", "--out", str(run), cwd=root,
                      check=False, env=env)
    assert result.returncode == 1, result.stderr
    shard_dir = run / "shard-0-of-1"
    status = read_status(shard_dir)
    assert status["state"] == "completed_with_failures"
    assert (status["users_failed"], status["users_done"]) == (2, 14)

    errors = {e["user_id"]: e for e in map(json.loads, (shard_dir / "errors.jsonl").read_text().splitlines())}
    assert set(errors) == {"user-03", "user-05"}
    assert errors["user-03"]["java_class"] == "java.lang.ArrayIndexOutOfBoundsException"
    assert "ActiveInformationCalculatorDiscrete" in errors["user-03"]["java_stack"]
    hungry = errors["user-05"]
    assert hungry["error_type"] == "HeapTooSmall" and hungry["heap_needed_bytes"] == 8 * 2**30
    assert "8.0 GiB" in hungry["message"] and "-Xmx256m" in hungry["message"] and "jvm.xmx" in hungry["message"]

    shardrun("merge", "--run", str(run), "--output", str(run / "merged"), cwd=root, env=env)
    merged = analysis_values(run / "merged")
    failed = merged[merged["status"] == "failed"]
    assert sorted(set(failed["user_id"])) == ["user-03", "user-05"] and failed["reason"].str.len().min() > 0
    ok = merged[merged["status"] == "ok"].reset_index(drop=True)
    reference = workspace["reference"]
    expected = reference[~reference["user_id"].isin(["user-03", "user-05"])].reset_index(drop=True)
    # the q-values are over the whole set, whose failed users have no p: BH over the 12 ok users of each mode
    q_columns = [c for c in reference.columns if c.endswith("_q")]
    pd.testing.assert_frame_equal(ok.drop(columns=q_columns), expected.drop(columns=q_columns), check_exact=True,
                                  check_dtype=False)  # NaN makes ints nullable
    assert merged.loc[merged["status"] == "failed", q_columns].isna().all().all()
    for mode, family in ok.groupby("feature_mode"):
        assert len(family) == 12
        for q_column in q_columns:
            expected_q = brute_force_q(family[q_column.removesuffix("_q") + "_p"].tolist())
            assert np.allclose(family[q_column], expected_q, rtol=0, atol=1e-12), (mode, q_column)
    # Failed users are a failed validation (exit 5) with their count by error class, unless tolerated.
    validation = shardrun("validate", "--dir", str(run / "merged"), cwd=root, env=env, check=False)
    assert validation.returncode == 5, validation.stdout + validation.stderr
    assert "2 users of 14 failed (--max-failed 0): 1 HeapTooSmall" in validation.stdout
    assert f"{run / 'merged'}: not valid (1 problem(s) above)" in validation.stdout
    tolerated = shardrun("validate", "--dir", str(run / "merged"), "--max-failed", "15%", cwd=root, env=env)
    assert "12 ok, 0 skipped, 2 failed (within --max-failed 15%)\n  failed by error class: 1 HeapTooSmall" \
        in tolerated.stdout and tolerated.stdout.endswith(f"{run / 'merged'}: valid\n")


def test_bad_config_is_refused_before_anything_is_written(workspace, tmp_path):
    root = workspace["root"]
    bad = yaml.safe_load(workspace["config"].read_text())
    bad["k_selection"]["k_grid"] = [0, 1]
    bad["output"]["root"] = str(tmp_path / "never")
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(bad))
    result = shardrun("run", "--config", str(path), "--full", "--shard", "0/2", cwd=root, check=False)
    assert result.returncode == 2
    assert "k_selection.k_grid" in result.stderr
    assert not (tmp_path / "never").exists()
