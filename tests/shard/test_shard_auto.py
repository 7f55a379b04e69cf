"""`--shard auto`: each scheduler's variables -> i/K, K fixed by the run, and every refusal naming its fix.

Pure cases are environment dicts (one per scheduler and per way an array is submitted); one real
`run_production --dry-run` process shows a resubmitted SLURM element joining its run as shard 1/4.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from shardrun.errors import ResumeMismatch, UsageError
from shardrun.partition import SCHEDULERS, ShardSpec, resolve_auto_shard
from shardrun.storage.paths import recorded_shard_count

from e2e_support import shardrun, write_categorical_data, write_config

REPO = Path(__file__).resolve().parents[2]


def slurm(task_id: int, low: int, high: int, count: int, step: int = 1, **more: str) -> dict[str, str]:
    """The variables slurmctld sets for one element of `sbatch --array=...` (MIN/MAX: lowest/highest ID,
    COUNT: how many IDs, STEP: the number after the first ':' of --array, else 1)."""
    return {"SLURM_ARRAY_TASK_ID": str(task_id), "SLURM_ARRAY_TASK_MIN": str(low), "SLURM_ARRAY_TASK_MAX": str(high),
            "SLURM_ARRAY_TASK_COUNT": str(count), "SLURM_ARRAY_TASK_STEP": str(step), **more}


def sge(task_id: int, first: int, last: int, step: int = 1, **more: str) -> dict[str, str]:
    """qsub -t first-last:step."""
    return {"SGE_TASK_ID": str(task_id), "SGE_TASK_FIRST": str(first), "SGE_TASK_LAST": str(last),
            "SGE_TASK_STEPSIZE": str(step), **more}


# (case, environment, K of the run dir or None, expected shard)
RESOLVED = [
    ("SLURM --array=0-3, K from its count", slurm(2, 0, 3, 4), None, ShardSpec(2, 4)),
    ("SLURM --array=0-6:2, element 0", slurm(0, 0, 6, 4, step=2), None, ShardSpec(0, 4)),
    ("SLURM --array=0-6:2, element 2", slurm(2, 0, 6, 4, step=2), None, ShardSpec(1, 4)),
    ("SLURM --array=0-6:2, element 4", slurm(4, 0, 6, 4, step=2), None, ShardSpec(2, 4)),
    ("SLURM --array=0-6:2, element 6", slurm(6, 0, 6, 4, step=2), None, ShardSpec(3, 4)),
    ("SLURM --array=1-7:2, element 7", slurm(7, 1, 7, 4, step=2), None, ShardSpec(3, 4)),
    ("SLURM resubmission --array=1, K from the run", slurm(1, 1, 1, 1), 4, ShardSpec(1, 4)),
    ("SLURM resubmission --array=1, K from SHARDRUN_SHARDS", slurm(1, 1, 1, 1, SHARDRUN_SHARDS="4"), None,
     ShardSpec(1, 4)),
    ("SLURM resubmission of element 4 of --array=0-6:2 as --array=4-4:2", slurm(4, 4, 4, 1, step=2), 4,
     ShardSpec(2, 4)),
    ("SLURM resubmission of shards 1 and 3 of --array=0-6:2 as --array=2-2:2,6-6:2", slurm(6, 2, 6, 2, step=2), 4,
     ShardSpec(3, 4)),
    ("SLURM resubmission --array=0-3 of a K=6 run, said with SHARDRUN_SHARDS", slurm(3, 0, 3, 4, SHARDRUN_SHARDS="6"),
     6, ShardSpec(3, 6)),
    ("SLURM sparse --array=0,5,9, K from the run", slurm(5, 0, 9, 3), 10, ShardSpec(5, 10)),
    ("SLURM 1-based --array=1-4 with SHARDRUN_FIRST_INDEX=1", slurm(4, 1, 4, 4, SHARDRUN_FIRST_INDEX="1"), None,
     ShardSpec(3, 4)),
    ("SLURM MaxArraySize=1000, K=1500: first array --array=0-999",
     slurm(999, 0, 999, 1000, SHARDRUN_SHARDS="1500"), None, ShardSpec(999, 1500)),
    ("SLURM MaxArraySize=1000, K=1500: second array --array=0-499 at offset 1000",
     slurm(499, 0, 499, 500, SHARDRUN_SHARDS="1500", SHARDRUN_INDEX_OFFSET="1000"), 1500, ShardSpec(1499, 1500)),
    ("SGE qsub -t 1-4, K from FIRST..LAST", sge(3, 1, 4), None, ShardSpec(2, 4)),
    ("SGE qsub -t 1-7:2", sge(5, 1, 7, step=2), None, ShardSpec(2, 4)),
    ("SGE resubmission qsub -t 2, K from the run", sge(2, 2, 2), 4, ShardSpec(1, 4)),
    ("LSF bsub -J 'r[1-4]'", {"LSB_JOBINDEX": "4", "LSB_JOBINDEX_END": "4", "LSB_JOBINDEX_STEP": "1"}, 4,
     ShardSpec(3, 4)),
    ("LSF bsub -J 'r[1-7:2]'", {"LSB_JOBINDEX": "5", "LSB_JOBINDEX_END": "7", "LSB_JOBINDEX_STEP": "2",
                                "SHARDRUN_SHARDS": "4"}, None, ShardSpec(2, 4)),
    ("PBS Pro qsub -J 0-3", {"PBS_ARRAY_INDEX": "2"}, 4, ShardSpec(2, 4)),
    ("PBS Pro qsub -J 1-4 with SHARDRUN_FIRST_INDEX=1", {"PBS_ARRAY_INDEX": "4", "SHARDRUN_FIRST_INDEX": "1"}, 4,
     ShardSpec(3, 4)),
    ("Torque qsub -t 0-1", {"PBS_ARRAYID": "0", "SHARDRUN_SHARDS": "2"}, None, ShardSpec(0, 2)),
    ("HTCondor environment = SHARDRUN_INDEX=$(Process)", {"SHARDRUN_INDEX": "3", "SHARDRUN_SHARDS": "5"}, None,
     ShardSpec(3, 5)),
    ("Kubernetes Indexed Job", {"JOB_COMPLETION_INDEX": "0"}, 3, ShardSpec(0, 3)),
    ("AWS Batch array of 5", {"AWS_BATCH_JOB_ARRAY_INDEX": "4", "AWS_BATCH_JOB_ARRAY_SIZE": "5"}, None,
     ShardSpec(4, 5)),
    ("AWS Batch second array of 2 at offset 10000",
     {"AWS_BATCH_JOB_ARRAY_INDEX": "1", "AWS_BATCH_JOB_ARRAY_SIZE": "2", "SHARDRUN_INDEX_OFFSET": "10000"}, 10002,
     ShardSpec(10001, 10002)),
    ("GNU parallel counts from 1", {"PARALLEL_SEQ": "1", "SHARDRUN_SHARDS": "4"}, None, ShardSpec(0, 4)),
    ("GNU parallel, last job", {"PARALLEL_SEQ": "4"}, 4, ShardSpec(3, 4)),
    ("SHARDRUN_INDEX wins over SLURM", {**slurm(0, 0, 3, 4), "SHARDRUN_INDEX": "2"}, 4, ShardSpec(2, 4)),
    ("GNU parallel inside a SLURM job wins over SLURM", {**slurm(3, 0, 3, 4), "PARALLEL_SEQ": "2"}, 4,
     ShardSpec(1, 4)),
    ("LSF outside an array (LSB_JOBINDEX=0) leaves the field to PBS", {"LSB_JOBINDEX": "0", "PBS_ARRAY_INDEX": "1"},
     2, ShardSpec(1, 2)),
]


@pytest.mark.parametrize("env, run_shards, expected", [case[1:] for case in RESOLVED],
                         ids=[case[0] for case in RESOLVED])
def test_auto_gives_the_element_its_shard(env, run_shards, expected):
    assert resolve_auto_shard(env, run_shards).spec == expected


# (case, environment, K of the run dir or None, words the refusal must hold: the problem and its fix)
REFUSED = [
    ("run K and SHARDRUN_SHARDS disagree", slurm(1, 1, 1, 1, SHARDRUN_SHARDS="6"), 4,
     ["K=4", "SHARDRUN_SHARDS=6", "SHARDRUN_SHARDS=4", "new --out"]),
    ("run K and a whole-looking array disagree", slurm(3, 0, 3, 4), 6,
     ["K=6", "whole run of 4", "SHARDRUN_SHARDS=6", "new --out"]),
    ("the first of several arrays in a run without SHARDRUN_SHARDS", slurm(5, 0, 999, 1000), 1500,
     ["K=1500", "whole run of 1000", "SHARDRUN_SHARDS=1500"]),
    ("resubmission --array=1 outside a run: no K", slurm(1, 1, 1, 1), None,
     ["SLURM_ARRAY_TASK_ID=1", "not the number of shards", "SLURM_ARRAY_TASK_MIN=1", "SHARDRUN_SHARDS=K",
      "--out DIR"]),
    ("sparse --array=0,5,9 outside a run: no K", slurm(5, 0, 9, 3), None,
     ["0,5,9", "SHARDRUN_SHARDS=K"]),
    ("second array at an offset outside a run: no K", slurm(1, 0, 499, 500, SHARDRUN_INDEX_OFFSET="1000"), None,
     ["starts at shard 1000", "SHARDRUN_SHARDS=K"]),
    ("Kubernetes never gives K", {"JOB_COMPLETION_INDEX": "1"}, None,
     ["JOB_COMPLETION_INDEX=1", "does not give the number of shards", "SHARDRUN_SHARDS=K"]),
    ("PBS Pro never gives K", {"PBS_ARRAY_INDEX": "1"}, None, ["SHARDRUN_SHARDS"]),
    ("LSF never gives K", {"LSB_JOBINDEX": "2", "LSB_JOBINDEX_END": "4"}, None, ["LSF", "SHARDRUN_SHARDS=K"]),
    ("1-based SLURM --array=1-4 without SHARDRUN_FIRST_INDEX: element 4", slurm(4, 1, 4, 4), 4,
     ["SLURM_ARRAY_TASK_ID=4", "shard 4", "K=4", "SHARDRUN_FIRST_INDEX=1"]),
    ("1-based SLURM --array=1-4 without SHARDRUN_FIRST_INDEX: element 1 refused too", slurm(1, 1, 4, 4), 4,
     ["SLURM_ARRAY_TASK_MAX=4", "shard 4", "K=4", "SHARDRUN_FIRST_INDEX=1"]),
    ("1-based SGE-like count from PARALLEL_SEQ beyond K", {"PARALLEL_SEQ": "5"}, 4,
     ["PARALLEL_SEQ=5", "shard 4", "K=4"]),
    ("an offset that pushes the array past K", slurm(0, 0, 999, 1000, SHARDRUN_SHARDS="1500",
                                                      SHARDRUN_INDEX_OFFSET="1000"), None,
     ["SLURM_ARRAY_TASK_MAX=999", "shard 1999", "K=1500", "SHARDRUN_INDEX_OFFSET (1000 now)"]),
    ("AWS Batch array past K at its offset", {"AWS_BATCH_JOB_ARRAY_INDEX": "0", "AWS_BATCH_JOB_ARRAY_SIZE": "3",
                                             "SHARDRUN_INDEX_OFFSET": "10000"}, 10002,
     ["AWS_BATCH_JOB_ARRAY_SIZE=3", "shard 10002", "K=10002"]),
    ("an ID off the array's step (--array=0-6:2,7)", slurm(7, 0, 7, 5, step=2), 8,
     ["SLURM_ARRAY_TASK_ID=7", "step 2", "SHARDRUN_FIRST_INDEX", "SHARDRUN_INDEX"]),
    ("an ID below SHARDRUN_FIRST_INDEX", {"PBS_ARRAY_INDEX": "0", "SHARDRUN_FIRST_INDEX": "1"}, 4,
     ["PBS_ARRAY_INDEX=0", "first index 1"]),
    ("a variable that is not a number", {"SLURM_ARRAY_TASK_ID": "x"}, 4, ["SLURM_ARRAY_TASK_ID='x'", "--shard i/K"]),
    ("SHARDRUN_SHARDS of 0", {"SHARDRUN_INDEX": "0", "SHARDRUN_SHARDS": "0"}, None, ["SHARDRUN_SHARDS='0'", ">= 1"]),
    ("SGE outside an array job", {"SGE_TASK_ID": "undefined"}, 4, ["SGE_TASK_ID=undefined", "not an array element"]),
    ("no job array at all", {}, None, ["job array", "SLURM_ARRAY_TASK_ID", "SHARDRUN_INDEX=$(Process)",
                                       "--shard i/K"]),
]


@pytest.mark.parametrize("env, run_shards, words", [case[1:] for case in REFUSED], ids=[case[0] for case in REFUSED])
def test_auto_refuses_with_the_fix(env, run_shards, words):
    with pytest.raises(UsageError) as refusal:
        resolve_auto_shard(env, run_shards)
    message = str(refusal.value)
    assert refusal.value.exit_code == 2
    assert "\n" not in message  # one paragraph
    for word in words:
        assert word in message, (word, message)


def test_the_explanation_names_the_variable_and_where_k_came_from():
    auto = resolve_auto_shard({**slurm(1, 1, 1, 1), "PBS_ARRAYID": "7"}, 4, "RUN")
    assert auto.spec == ShardSpec(1, 4)
    assert "SLURM_ARRAY_TASK_ID=1" in auto.explanation and "run.json of RUN" in auto.explanation
    assert "PBS_ARRAYID=7" in auto.explanation  # a variable that lost is named, not silently dropped
    assert "K=4 from SLURM_ARRAY_TASK_COUNT=4" in resolve_auto_shard(slurm(0, 0, 3, 4)).explanation


def test_every_scheduler_is_documented():
    page = (REPO / "docs" / "SCHEDULERS.md").read_text()
    for scheduler in SCHEDULERS:
        assert f"`{scheduler.index_variable}`" in page, scheduler.name
    for variable in ("SHARDRUN_SHARDS", "SHARDRUN_INDEX_OFFSET", "SHARDRUN_FIRST_INDEX", "MaxArraySize",
                     "$(Process)"):
        assert variable in page


def test_the_recorded_k_of_a_run_dir_or_of_a_shard_dir_in_it(tmp_path):
    run = tmp_path / "run"
    assert recorded_shard_count(run) is None  # no run yet: K comes from elsewhere
    run.mkdir()
    (run / "run.json").write_text(json.dumps({"shards": 4}))
    shard = run / "shard-1-of-4"
    shard.mkdir()
    (shard / "shard.json").write_text(json.dumps({"shard": "1/4"}))
    assert recorded_shard_count(run) == (run, 4)
    assert recorded_shard_count(shard) == (run, 4)
    (run / "run.json").write_text(json.dumps({"shards": "4"}))
    with pytest.raises(ResumeMismatch, match="--shard i/K"):
        recorded_shard_count(run)


@pytest.fixture()
def run_of_four(tmp_path):
    data = tmp_path / "data.csv"
    write_categorical_data(data, n_users=8, n_rows=60)
    config = write_config(tmp_path / "tiny.yaml", data, tmp_path)
    run = tmp_path / "run"
    run.mkdir()
    (run / "run.json").write_text(json.dumps({"shards": 4, "config_hash": "x", "data_fingerprint": "y"}))
    return {"root": tmp_path, "config": config, "run": run}


RESUBMITTED_ELEMENT = {"SLURM_ARRAY_TASK_ID": "1", "SLURM_ARRAY_TASK_COUNT": "1", "SLURM_ARRAY_TASK_MIN": "1",
                       "SLURM_ARRAY_TASK_MAX": "1"}


def clean_environment(**more: str) -> dict[str, str]:
    """This process's environment without any job-array variable a CI runner may have, plus `more`."""
    names = ({s.index_variable for s in SCHEDULERS}
             | {"SHARDRUN_SHARDS", "SHARDRUN_INDEX_OFFSET", "SHARDRUN_FIRST_INDEX"})
    return {**{k: v for k, v in os.environ.items() if k not in names}, **more}


@pytest.mark.jvm  # the dry run asks `java -version` whether it accepts the shard's flags
def test_a_resubmitted_slurm_element_joins_its_run_as_shard_1_of_4(run_of_four):
    result = shardrun("run", "--config", str(run_of_four["config"]), "--full", "--shard", "auto",
                      "--out", str(run_of_four["run"]), "--dry-run", cwd=run_of_four["root"],
                      env=clean_environment(**RESUBMITTED_ELEMENT))
    assert result.stdout.startswith("shard 1/4: 2 users assigned"), result.stdout
    assert "shard-1-of-4" in result.stdout
    assert "K=4 from the run.json of" in result.stderr
    assert not (run_of_four["run"] / "shard-0-of-1").exists()


def test_a_resubmitted_element_that_contradicts_the_run_is_refused_before_anything_is_read(run_of_four):
    result = shardrun("run", "--config", str(run_of_four["root"] / "no-such.yaml"), "--full", "--shard", "auto",
                      "--out", str(run_of_four["run"]), cwd=run_of_four["root"], check=False,
                      env=clean_environment(**RESUBMITTED_ELEMENT, SHARDRUN_SHARDS="2"))
    assert result.returncode == 2, result.stdout + result.stderr
    assert "K=4" in result.stderr and "SHARDRUN_SHARDS=2" in result.stderr and "Traceback" not in result.stderr
    assert sorted(p.name for p in run_of_four["run"].iterdir()) == ["run.json"]
