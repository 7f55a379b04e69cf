"""launch_shards --benchmark: which users both runs take, the comparison of two result sets, the
verdict and the projection as plain values; the refusals of the CLI; and one real benchmark (real
shard processes, the real JVM and JIDT) of the shipped config on the embedded sample data."""

from __future__ import annotations

import math
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from shardrun.errors import EXIT_OK, EXIT_VALIDATION_FAILED
from shardrun.launch.admission import available_cores
from shardrun.launch.benchmark import pilot_users, project, verdict
from shardrun.partition import ShardSpec, users_of_shard
from shardrun.results.frame import read_result_frame, result_differences

REPO = Path(__file__).resolve().parents[2]
KEYS = ("user_id", "feature_mode")


# --- the users both runs analyse ---------------------------------------------------------------


@pytest.mark.parametrize("requested,shards,total", [(3, 2, 60), (5, 4, 60), (8, 4, 60), (1, 3, 60), (7, 3, 8),
                                                    (50, 4, 9), (60, 4, 60), (1, 1, 5)])
def test_the_k_run_takes_exactly_the_users_of_the_k1_run(requested, shards, total):
    users = [f"u{i:03d}" for i in range(total)]
    chosen = pilot_users(requested, shards, total)
    k1 = users_of_shard(users, ShardSpec(0, 1))[:chosen.users]
    k = [u for i in range(shards) for u in users_of_shard(users, ShardSpec(i, shards))[:chosen.per_shard]]
    assert sorted(k) == k1 == users[:chosen.users]
    assert chosen.users >= min(requested, total) and chosen.users == min(math.ceil(requested / shards) * shards, total)
    assert chosen.per_shard == math.ceil(chosen.users / shards)  # never more per shard than its share


def test_the_projection_scales_the_analysis_and_keeps_the_start_up():
    # 8 s measured; the users took 6 s of analysis on 2 shards at once: 3 s analysis, 5 s start-up and waits
    projection = project(8.0, users_seconds=6.0, at_once=2, pilot_work=8, total_work=60)
    assert (projection.fixed, projection.analysis, projection.scale) == (5.0, 3.0, 7.5)
    assert projection.seconds == 5.0 + 3.0 * 7.5
    # analysis can never be more than the run took (a clock step, shards not in parallel after all)
    capped = project(2.0, users_seconds=10.0, at_once=1, pilot_work=1, total_work=2)
    assert (capped.fixed, capped.analysis, capped.seconds) == (0.0, 2.0, 4.0)
    with pytest.raises(ValueError):
        project(1.0, 1.0, 1, pilot_work=0, total_work=10)
    with pytest.raises(ValueError):
        project(1.0, 1.0, 0, pilot_work=1, total_work=10)


# --- two result sets, value for value ---------------------------------------------------------------


def result_frame() -> pd.DataFrame:
    return pd.DataFrame({
        "user_id": ["u1", "u1", "u2", "u2"], "feature_mode": ["activity", "composite"] * 2,
        "status": ["ok", "ok", "skipped", "skipped"], "k_selected": [2, 3, None, None],
        "ais_bits": [0.125, 0.25, np.nan, np.nan],
        "shard": ["0/1"] * 4, "seconds": [0.5, 0.5, 0.1, 0.1], "config_hash": ["abc"] * 4,
    })


def test_the_same_numbers_agree_whatever_the_bookkeeping_and_the_row_order():
    other = result_frame().iloc[::-1].assign(shard="1/2", seconds=9.0, config_hash="other")
    assert result_differences(result_frame(), other, KEYS) == []


def test_a_value_that_differs_is_reported_with_its_key_column_and_both_values():
    other = result_frame()
    other.loc[1, "ais_bits"] = 0.2500000001
    assert result_differences(result_frame(), other, KEYS, names=("K=1", "K=4")) == [
        "(u1, composite): ais_bits is 0.25 in K=1 but 0.2500000001 in K=4"]
    other = result_frame()
    other.loc[2, "ais_bits"] = 0.0  # a number where the reference has none
    assert result_differences(result_frame(), other, KEYS) == [
        "(u2, activity): ais_bits is nan in the reference but 0.0 in the other"]


def test_missing_rows_columns_and_other_types_are_differences():
    fewer = result_frame().iloc[:3]
    assert result_differences(result_frame(), fewer, KEYS, names=("K=1", "K=2")) == ["(u2, composite) is in K=1 only"]
    extra = result_frame().assign(note="x")
    assert result_differences(result_frame(), extra, KEYS) == ["column 'note' is in the other only"]
    text = result_frame().astype({"status": object})
    text["k_selected"] = text["k_selected"].astype(object)
    text.loc[0, "k_selected"] = "2"
    assert result_differences(result_frame(), text, KEYS) == [
        "(u1, activity): k_selected is 2.0 in the reference but '2' in the other"]
    twice = pd.concat([result_frame(), result_frame().iloc[:1]])
    assert result_differences(result_frame(), twice, KEYS) == ["the other has more than one row for (u1, activity)"]


def test_many_differences_are_cut_to_the_limit_with_a_count():
    other = result_frame().assign(ais_bits=[1.0, 2.0, 3.0, 4.0], k_selected=[9, 9, 9, 9])
    lines = result_differences(result_frame(), other, KEYS, limit=3)
    assert len(lines) == 4 and lines[-1] == "... and 5 more differences"


def test_a_disagreement_fails_the_benchmark_with_the_differences():
    failed = verdict(4, 16, 8, ["(u1, composite): ais_bits is 0.25 in K=1 but 0.3 in K=4"])
    assert failed.exit_code == EXIT_VALIDATION_FAILED
    assert failed.lines[0].startswith("benchmark FAILED: K=4 did not give K=1's numbers for the same 8 users")
    assert failed.lines[1] == "  - (u1, composite): ais_bits is 0.25 in K=1 but 0.3 in K=4"
    agreed = verdict(4, 16, 8, [])
    assert agreed.exit_code == EXIT_OK and "the numbers agree: 16 rows of 8 users" in agreed.lines[0]


# --- the command ------------------------------------------------------------------------------------


def launch_shards(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "shardrun", "launch", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=600)


def sample_config(tmp_path: Path) -> Path:
    """config/proposal.yaml (the main job's) on the embedded sample, writing into tmp_path."""
    config = yaml.safe_load((REPO / "config" / "proposal.yaml").read_text())
    config["data"]["path"] = str(REPO / config["data"]["path"])
    config["output"] = {"root": str(tmp_path / "out"), "log_dir": str(tmp_path / "logs")}
    path = tmp_path / "proposal.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


@pytest.mark.parametrize("flags,words", [
    (["--shards", "4", "--benchmark", "4", "--pilot", "2"], "takes no --pilot; drop it"),
    (["--shards", "4", "--benchmark", "4", "--no-merge", "--dry-run"], "takes no --no-merge, --dry-run; drop them"),
    (["--shards", "1", "--benchmark", "4"], "compares K=1 with the K of --shards, which is 1; pass --shards 2 or more"),
    (["--shards", "4", "--benchmark", "4", "--scheduler", "slurm"], "--benchmark belong to --scheduler local"),
    (["--shards", "4", "--benchmark", "0"], "argument --benchmark: must be at least 1, got '0'"),
])
def test_the_command_refuses_a_benchmark_it_cannot_run(tmp_path, flags, words):
    result = launch_shards("--config", str(sample_config(tmp_path)), *flags, cwd=tmp_path)
    assert result.returncode == 2 and words in result.stderr, result.stderr
    assert not (tmp_path / "out").exists()


def test_an_out_dir_that_holds_something_is_refused(tmp_path):
    (tmp_path / "bench").mkdir()
    (tmp_path / "bench" / "note.txt").write_text("mine")
    result = launch_shards("--config", str(sample_config(tmp_path)), "--shards", "2", "--benchmark", "2",
                           "--out", str(tmp_path / "bench"), cwd=tmp_path)
    assert result.returncode == 2 and "is not a new or empty dir" in result.stderr and "Pass a new dir" in result.stderr
    assert sorted(p.name for p in (tmp_path / "bench").iterdir()) == ["note.txt"]


@pytest.mark.e2e
@pytest.mark.jvm
def test_a_benchmark_of_the_main_job_runs_the_same_users_twice_and_agrees(tmp_path):
    result = launch_shards("--config", str(sample_config(tmp_path)), "--shards", "4", "--benchmark", "5", "--no-live",
                           cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    where = Path(re.search(r"at K=1 and at K=4, in (\S+)\n", out).group(1))
    assert where.parent == tmp_path / "out" and where.name.startswith("proposal_benchmark8_")
    assert ("benchmark: the first 8 of 60 users in sorted order (--benchmark 5 rounded up to a multiple of K=4, so"
            " that --pilot 2 in each of 4 shards takes exactly these users)") in out
    assert (f"benchmark: K=1 (--pilot 8) in {where / 'k1'}" in out
            and f"K=4 (--pilot 2 per shard) in {where / 'k4'}" in out)
    assert re.search(r"\nbenchmark: K=1 took \d+\.\d s, K=4 took \d+\.\d s \(first shard's start to last shard's"
                     r" exit\): speedup \d+\.\d\dx\n", out), out
    assert ("benchmark: the numbers agree: 16 rows of 8 users, K=1 and K=4 value for value"
            " (shard, seconds and config_hash aside)") in out
    projected = re.search(r"\nbenchmark: projected full run at K=4: \S+ (s|min|h) = (\d+\.\d) s of start-up and"
                          r" waiting \(the K=4 run's (\d+\.\d) s less its analysis\) \+ (\d+\.\d) s of analysis"
                          r" \(its users' seconds / (\d) shards? at once\) x (\d+\.\d\d) \(the task's per-user time"
                          r" estimate of all 60 users over these 8\)\n", out)
    assert projected, out
    fixed, measured, analysis = (float(projected.group(i)) for i in (2, 3, 4))
    assert abs(fixed + analysis - measured) <= 0.11 and analysis > 0
    assert int(projected.group(5)) == min(4, available_cores().count)  # one thread each: as many as the cores
    one, four = read_result_frame(where / "k1" / "merged"), read_result_frame(where / "k4" / "merged")
    users = sorted(pd.read_csv(REPO / "data" / "sample_users.csv", usecols=["user_id"], dtype=str)["user_id"].unique())
    assert sorted(set(one["user_id"])) == sorted(set(four["user_id"])) == users[:8]
    assert set(four["shard"]) == {"0/4", "1/4", "2/4", "3/4"} and set(one["shard"]) == {"0/1"}
    assert result_differences(one, four, KEYS) == []
