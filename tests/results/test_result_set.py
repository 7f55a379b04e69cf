"""Issue 8, the result set as trustworthy as the commits: atomic merge, no silent overwrite, typed
duplicates, and provenance (checksum + config hash) of every committed result file.

In-process tests use the Task test double (task_double.py); the command-line tests run
`python -m shardrun merge` / `python -m shardrun validate` as subprocesses with the double importable
from a tiny module on PYTHONPATH, and check the exit code, the message and that no traceback shows.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from shardrun.errors import MergeError, ResumeMismatch
from shardrun.partition import ShardSpec
from shardrun.results.frame import values_equal
from shardrun.results.merge import merge_shards
from shardrun.results.read import shard_dirs_of_run
from shardrun.results.validate import write_validation
from shardrun.storage.atomic import read_json, write_json_atomic
from shardrun.storage.commits import scan_committed
from shardrun.storage.paths import MergedPaths, ShardPaths
from shardrun.task import SummaryPanel

from fs_support import needs_root_mounts, read_only
from store_support import batch_of, commit_user, edit_batch
from task_double import (  # noqa: F401  (task_double: the autouse fixture that makes the double loadable)
    DOUBLE_MODULE,
    make_run,
    raw_config,
    read_both,
    read_report,
    rows_of,
    task_double,
)

TESTS = Path(__file__).resolve().parents[1]
SRC = TESTS.parent / "src"


def set_files(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.iterdir())}


def siblings(out: Path) -> list[str]:
    return sorted(p.name for p in out.parent.iterdir())


def only_shard(run: Path) -> ShardPaths:
    [shard] = shard_dirs_of_run(run)
    return ShardPaths(shard)


def edit_user(shard: ShardPaths, user_id: str, change) -> Path:
    """Edit one user's record in place in its batch file, the checksum left as it was (a hand edit)."""
    path = batch_of(shard.dir, user_id)
    edit_batch(path, lambda record: change(record) if record["user_id"] == user_id else None)
    return path


# --- 3. atomic merge --------------------------------------------------------------------------


def test_a_failure_after_results_csv_leaves_nothing_at_a_new_output(tmp_path, monkeypatch):
    run = make_run(tmp_path / "run", count=1)
    out = tmp_path / "out" / "merged"

    def broken(frame, path):
        raise RuntimeError("parquet writer down")

    monkeypatch.setattr("shardrun.results.output.write_parquet", broken)
    with pytest.raises(RuntimeError, match="parquet writer down"):
        merge_shards(shard_dirs_of_run(run), out)

    assert not out.exists()
    assert siblings(out) == []  # no staging dir, no results.csv anywhere


def test_a_failed_set_leaves_nothing_and_draws_no_picture(tmp_path, task_double, monkeypatch):
    """The pictures are drawn after the tables; a table that fails ends the merge at once: no staging
    dir is left, and no time goes to a picture of a set that will not exist."""
    run = make_run(tmp_path / "run", count=1)
    out = tmp_path / "out" / "merged"
    marker = tmp_path / "drawn"
    monkeypatch.setattr(task_double, "summary_panels", lambda frame, settings: [
        SummaryPanel(draw=lambda axes: marker.write_text("drawn"))], raising=False)
    monkeypatch.setattr("shardrun.results.output.write_parquet",
                        lambda frame, path: (_ for _ in ()).throw(RuntimeError("parquet writer down")))
    with pytest.raises(RuntimeError, match="parquet writer down"):
        merge_shards(shard_dirs_of_run(run), out)

    assert not marker.exists()
    assert siblings(out) == []


def test_a_failure_during_an_overwrite_keeps_the_previous_complete_set(tmp_path, monkeypatch):
    run = make_run(tmp_path / "run", count=1)
    out = tmp_path / "merged"
    merge_shards(shard_dirs_of_run(run), out)
    write_validation(out, [])
    before = set_files(out)
    assert set(before) == {"results.csv", "results.parquet", "merge_report.json", "summary.png", "run.png", "trace.tsv",
                           "validation.json"}

    monkeypatch.setattr("shardrun.results.output.write_parquet",
                        lambda frame, path: (_ for _ in ()).throw(RuntimeError("parquet writer down")))
    with pytest.raises(RuntimeError):
        merge_shards(shard_dirs_of_run(run), out, overwrite=True)

    assert set_files(out) == before
    assert siblings(out) == ["merged", "run"]


@pytest.mark.parametrize("exchange", [True, False], ids=["rename-exchange", "rename-aside"])
def test_overwrite_replaces_the_whole_set(tmp_path, monkeypatch, exchange):
    if not exchange:
        monkeypatch.setattr("shardrun.storage.atomic.exchange_paths", lambda a, b: False)
    first = make_run(tmp_path / "a", count=1)
    second = make_run(tmp_path / "b", count=1, skip_users=["u03"])
    out = tmp_path / "merged"
    merge_shards(shard_dirs_of_run(first), out)
    write_validation(out, [])

    report = merge_shards(shard_dirs_of_run(second), out, overwrite=True)

    assert not report.complete and read_report(out)["missing_users"][0]["user_id"] == "u03"
    assert not MergedPaths(out).validation.exists()  # the old verdict went with the old set
    assert len(read_both(out)[1]) == 14
    assert siblings(out) == ["a", "b", "merged"]


def test_an_output_given_as_a_symlink_is_replaced_where_it_points(tmp_path):
    run = make_run(tmp_path / "run", count=1)
    real = tmp_path / "real"
    merge_shards(shard_dirs_of_run(run), real)
    link = tmp_path / "link"
    link.symlink_to(real)

    assert merge_shards(shard_dirs_of_run(run), link, overwrite=True).complete

    assert link.is_symlink() and MergedPaths(real).report.is_file()
    assert siblings(real) == ["link", "real", "run"]


def test_leftovers_of_a_crashed_merge_are_tidied_and_a_set_moved_aside_is_put_back(tmp_path):
    run = make_run(tmp_path / "run", count=1)
    out = tmp_path / "merged"
    merge_shards(shard_dirs_of_run(run), out)
    before = set_files(out)
    dead = 2**22 + 12345  # above Linux's default pid_max
    staging = tmp_path / f".merged.merging-{dead}-abcd"
    staging.mkdir()
    (staging / "results.csv").write_text("half")
    out.rename(tmp_path / f".merged.old-{dead}-beef")  # died between the two renames

    with pytest.raises(MergeError, match="exists and is not empty"):
        merge_shards(shard_dirs_of_run(run), out)  # the set put back counts as existing

    assert set_files(out) == before
    assert siblings(out) == ["merged", "run"]


# --- 4. no silent overwrite -------------------------------------------------------------------


def test_an_existing_output_dir_is_refused_without_overwrite(tmp_path):
    run = make_run(tmp_path / "run", count=1)
    out = tmp_path / "merged"
    merge_shards(shard_dirs_of_run(run), out)
    before = set_files(out)

    with pytest.raises(MergeError) as refused:
        merge_shards(shard_dirs_of_run(run), out, force=True)  # --force does not imply --overwrite
    assert "--overwrite" in str(refused.value) and str(out) in str(refused.value)
    assert set_files(out) == before

    assert merge_shards(shard_dirs_of_run(run), out, overwrite=True).complete


def test_an_empty_output_dir_is_used_and_a_file_is_refused(tmp_path):
    run = make_run(tmp_path / "run", count=1)
    empty = tmp_path / "empty"
    empty.mkdir()
    assert merge_shards(shard_dirs_of_run(run), empty).complete
    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(MergeError, match="is a file, not a dir"):
        merge_shards(shard_dirs_of_run(run), a_file, overwrite=True)
    assert a_file.read_text() == "x"


def test_validation_of_another_config_is_not_replaced_silently(tmp_path):
    run = make_run(tmp_path / "run", count=1)
    out = tmp_path / "merged"
    merge_shards(shard_dirs_of_run(run), out)
    assert write_validation(out, []) is None
    first = read_json(MergedPaths(out).validation)
    assert first["config_hash"] == read_report(out)["config_hash"]

    note = write_validation(out, ["config_hash is 'a' but ..."], config_hash="other-hash")

    assert note and first["config_hash"] in note and "other-hash" in note
    written = read_json(MergedPaths(out).validation)
    assert written["config_hash"] == "other-hash"
    assert written["previous"] == {"config_hash": first["config_hash"], "valid": True,
                                   "checked_at": first["checked_at"]}


# --- 5. typed duplicates ----------------------------------------------------------------------


@pytest.mark.parametrize("a, b, equal", [
    (True, 1, False), (False, 0, False), (1, "1", False), (1128.0, 1128, True), (1128, 1128.5, False),
    (None, float("nan"), True), (None, 0, False), ([1, True], [1.0, True], True), ([1, True], [1, 1], False),
    ({"a": 1}, {"a": 1.0}, True), ({"a": True}, {"a": 1}, False), ("x", "x", True),
])
def test_values_are_equal_by_json_type_and_value(a, b, equal):
    assert values_equal(a, b) is equal and values_equal(b, a) is equal


def test_true_and_1_conflict_and_1128_and_1128_0_are_identical(tmp_path):
    first = make_run(tmp_path / "a", count=1, overrides={"u01": {"n_obs": 1128}, "u02": {"n_obs": True}})
    second = make_run(tmp_path / "b", count=1, overrides={"u01": {"n_obs": 1128.0}, "u02": {"n_obs": 1}})

    report = merge_shards(shard_dirs_of_run(first) + shard_dirs_of_run(second), tmp_path / "merged")

    assert report.identical_duplicates == 14
    assert [(c["key"]["user_id"], c["differences"]) for c in report.conflicts] == [
        ("u02", [{"column": "n_obs", "values": [True, 1]}])
    ] * 2
    # u02's true is kept among numbers: the column mixes JSON types, is reported and written as text
    assert report.mixed_columns == [{"column": "n_obs", "types": {"number": 14, "boolean": 2}}]
    assert any("column 'n_obs' mixes JSON types" in line for line in report.problem_lines())
    _csv_frame, parquet_frame = read_both(tmp_path / "merged")
    assert parquet_frame["n_obs"].tolist()[:4] == ["103", "103", "1128", "1128"]
    assert parquet_frame["n_obs"].tolist()[4:6] == ["true", "true"]


def test_a_number_column_with_ints_and_floats_is_one_float_column(tmp_path):
    run = make_run(tmp_path / "run", count=1, overrides={"u01": {"n_obs": 1128.5}})
    report = merge_shards(shard_dirs_of_run(run), tmp_path / "merged")
    assert report.complete and report.mixed_columns == []
    assert read_both(tmp_path / "merged")[1]["n_obs"].dtype == "float64"


# --- 6. provenance of the committed files ------------------------------------------------------


def test_commit_writes_the_checksum_and_the_config_hash(tmp_path):
    run = make_run(tmp_path / "run", count=1)
    shard = only_shard(run)
    path = batch_of(shard.dir, "u01")
    head, _, body = path.read_bytes().partition(b"\n")
    header = json.loads(head)
    assert header["format"] == 3 and header["users"] == len(body.splitlines())
    assert header["config_hash"] == read_json(shard.identity)["config_hash"]
    assert header["records_sha256"] == hashlib.sha256(body).hexdigest()


def test_a_hand_edited_te_value_is_reported_by_merge(tmp_path):
    run = make_run(tmp_path / "run", count=1)
    shard = only_shard(run)
    edited = edit_user(shard, "u03", lambda r: r["rows"][0].update(te_bits=0.5))

    report = merge_shards(shard_dirs_of_run(run), tmp_path / "merged")

    assert not report.complete
    [untrusted] = report.untrusted_files
    assert untrusted["user_id"] == "u03" and untrusted["file"] == edited.name
    assert "edited after the commit" in untrusted["problem"]
    assert [m["user_id"] for m in report.missing_users] == ["u03"]  # its rows are left out
    assert "u03" not in set(read_both(tmp_path / "merged")[1]["user_id"])
    assert any("is left out: its records do not match the checksum" in line
               for line in report.problem_lines())
    assert edited.exists()  # merge reports, it does not move the file


def test_a_file_from_another_configs_run_is_reported_by_merge(tmp_path):
    run = make_run(tmp_path / "run", count=1)
    other = make_run(tmp_path / "other", count=1, raw=raw_config(modes=["activity"]))
    shard = only_shard(run)
    batch_of(shard.dir, "u05").write_bytes(batch_of(only_shard(other).dir, "u05").read_bytes())

    report = merge_shards(shard_dirs_of_run(run), tmp_path / "merged")

    assert not report.complete
    [untrusted] = report.untrusted_files
    assert untrusted["user_id"] == "u05" and "comes from another config's run" in untrusted["problem"]


def test_a_batch_whose_rows_carry_another_configs_hash_is_left_out(tmp_path):
    run = make_run(tmp_path / "run", count=1)
    shard = only_shard(run)
    edit_batch(batch_of(shard.dir, "u04"), lambda r: [row.update(config_hash="elsewhere") for row in r["rows"]],
               keep_checksum=False)
    report = merge_shards(shard_dirs_of_run(run), tmp_path / "merged")
    [untrusted] = report.untrusted_files
    assert untrusted["user_id"] == "u04" and "carry config hash 'elsewhere'" in untrusted["problem"]
    assert [m["user_id"] for m in report.missing_users] == ["u04"]


@pytest.mark.parametrize("mixed", [False, True], ids=["arrow", "python-json"])
def test_a_retry_replaces_the_users_earlier_record_whichever_reader(tmp_path, mixed):
    """--retry-failed's record stands in place of the failed one, in a shard Arrow reads and in one it
    cannot type (a column of two JSON types: read by Python's json)."""
    overrides = {"u02": {"n_obs": True}} if mixed else {}
    overrides["u03"] = {"status": "failed", "reason": "boom", "ais_bits": None}
    run = make_run(tmp_path / "run", count=1, overrides=overrides)
    shard = only_shard(run)
    config_hash = read_json(shard.identity)["config_hash"]
    commit_user(shard, "u03", rows_of("u03", ShardSpec(0, 1), config_hash), replaces=True)

    report = merge_shards(shard_dirs_of_run(run), tmp_path / "merged")

    assert report.rows == 16 and report.conflicts == [] and report.untrusted_files == []
    assert bool(report.mixed_columns) == mixed
    frame = read_both(tmp_path / "merged")[1]
    assert frame.loc[frame.user_id == "u03", "status"].tolist() == ["ok", "ok"]


def test_a_copy_of_a_batch_is_left_out_and_reported(tmp_path):
    run = make_run(tmp_path / "run", count=1)
    shard = only_shard(run)
    original = batch_of(shard.dir, "u02")
    copy = shard.batch(99)
    copy.write_bytes(original.read_bytes())

    report = merge_shards(shard_dirs_of_run(run), tmp_path / "merged")

    assert not report.complete and report.rows == 16 and report.identical_duplicates == 0
    [untrusted] = report.untrusted_files
    assert untrusted["file"] == copy.name and f"a copy of {original.name}" in untrusted["problem"]


def test_a_run_dir_of_per_user_files_is_refused_by_merge_and_by_resume(tmp_path):
    """Result files of runs made before batch files (u-<hash>.json) are not read: a shard dir holding one
    is refused with what to do, never merged or resumed without its users."""
    run = make_run(tmp_path / "run", count=1)
    shard = only_shard(run)
    older = shard.results / ("u-" + "0" * 40 + ".json")
    older.write_text(json.dumps({"format": 2, "user_id": "u01", "rows": []}))

    with pytest.raises(MergeError, match="made before batch files .*u-0+\\.json.*new dir"):
        merge_shards(shard_dirs_of_run(run), tmp_path / "merged")
    with pytest.raises(ResumeMismatch, match="made before batch files"):
        scan_committed(shard)
    assert older.is_file() and not (tmp_path / "merged").exists()


def test_the_resume_scan_quarantines_an_edited_file_and_recomputes_it(tmp_path, caplog):
    run = make_run(tmp_path / "run", count=1)
    shard = only_shard(run)
    path = edit_user(shard, "u03", lambda r: r["rows"][1].update(ais_bits=9.0))
    edited = path.read_bytes()

    committed = scan_committed(shard)

    assert "u03" not in committed and len(committed) == 7
    [moved] = list((shard.results / "quarantine").iterdir())
    assert moved.read_bytes() == edited
    assert "cannot be trusted" in caplog.text and "will be recomputed" in caplog.text


# --- the commands: exit codes and messages, never a traceback -----------------------------------


@pytest.fixture
def cli_env(tmp_path):
    modules = tmp_path / "modules"
    modules.mkdir()
    (modules / f"{DOUBLE_MODULE}.py").write_text("from task_double import TaskDouble\n\ntask = TaskDouble()\n")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(modules), str(TESTS), str(SRC)])
    return env


def command(env, *args: str, wrap: list[str] = ()) -> subprocess.CompletedProcess:
    result = subprocess.run([*wrap, sys.executable, *args], env=env, capture_output=True, text=True, timeout=120)
    assert "Traceback" not in result.stdout + result.stderr
    return result


def test_merge_cli_refuses_an_existing_dir_and_a_file(tmp_path, cli_env):
    run = make_run(tmp_path / "run", count=1)
    out = tmp_path / "merged"
    assert command(cli_env, "-m", "shardrun", "merge", "--run", str(run), "--output", str(out)).returncode == 0

    again = command(cli_env, "-m", "shardrun", "merge", "--run", str(run), "--output", str(out))
    assert again.returncode == 2
    assert again.stderr.count("error: ") == 1 and "exists and is not empty" in again.stderr
    assert "--overwrite" in again.stderr

    replaced = command(cli_env, "-m", "shardrun", "merge", "--run", str(run), "--output", str(out), "--overwrite")
    assert replaced.returncode == 0 and "merged 16 rows" in replaced.stdout

    a_file = tmp_path / "results.csv"
    a_file.write_text("x")
    refused = command(cli_env, "-m", "shardrun", "merge", "--run", str(run), "--output", str(a_file))
    assert refused.returncode == 2 and f"error: --output {a_file} is a file, not a dir" in refused.stderr


def test_merge_cli_reports_an_edited_file_with_exit_5(tmp_path, cli_env):
    run = make_run(tmp_path / "run", count=1)
    edit_user(only_shard(run), "u03", lambda r: r["rows"][0].update(ais_bits=0.25))
    result = command(cli_env, "-m", "shardrun", "merge", "--run", str(run), "--output", str(tmp_path / "merged"))
    assert result.returncode == 5
    assert "edited after the commit" in result.stdout and "user 'u03' has no results" in result.stdout


def test_merge_cli_into_a_read_only_dir(tmp_path, cli_env):
    needs_root_mounts()
    run = make_run(tmp_path / "run", count=1)
    root = tmp_path / "ro"
    root.mkdir()
    result = command(cli_env, "-m", "shardrun", "merge", "--run", str(run), "--output", str(root / "merged"),
                     wrap=read_only(root))
    assert result.returncode == 6
    assert result.stderr.count("error: ") == 1
    assert f"error: cannot write the result set {root / 'merged'}" in result.stderr
    assert "read-only" in result.stderr and "--output" in result.stderr
    assert list(root.iterdir()) == []


def test_validate_cli_on_a_missing_dir_a_file_and_a_read_only_dir(tmp_path, cli_env):
    missing = command(cli_env, "-m", "shardrun", "validate", "--dir", str(tmp_path / "nowhere"))
    assert missing.returncode == 2
    assert f"error: result dir {tmp_path / 'nowhere'} does not exist" in missing.stderr
    a_file = tmp_path / "f"
    a_file.write_text("x")
    not_dir = command(cli_env, "-m", "shardrun", "validate", "--dir", str(a_file))
    assert not_dir.returncode == 2 and "is a file, not a result dir" in not_dir.stderr

    needs_root_mounts()
    run = make_run(tmp_path / "run", count=1)
    out = tmp_path / "merged"
    merge_shards(shard_dirs_of_run(run), out)
    result = command(cli_env, "-m", "shardrun", "validate", "--dir", str(out), wrap=read_only(out))
    assert result.returncode == 6
    assert f"{out}: valid" in result.stdout  # the verdict is shown even though it cannot be recorded
    assert result.stderr.count("error: ") == 1
    assert f"error: cannot write validation.json in {out}: Read-only file system" in result.stderr
    assert not MergedPaths(out).validation.exists()


def test_validate_cli_refuses_a_dir_that_holds_no_result_set_and_writes_nothing_there(tmp_path, cli_env):
    run = make_run(tmp_path / "run", count=1)
    before = sorted(p.relative_to(run) for p in run.rglob("*"))
    unmerged = command(cli_env, "-m", "shardrun", "validate", "--dir", str(run))
    assert unmerged.returncode == 2 and unmerged.stdout == ""
    assert f"error: {run} is a run dir, not a result set" in unmerged.stderr
    assert f"merge_shard_results --run {run} --output {run / 'merged'}" in unmerged.stderr
    merge_shards(shard_dirs_of_run(run), run / "merged")
    merged_files = sorted(p.relative_to(run) for p in run.rglob("*"))
    merged = command(cli_env, "-m", "shardrun", "validate", "--dir", str(run))
    assert merged.returncode == 2 and f"pass --dir {run / 'merged'}" in merged.stderr
    assert sorted(p.relative_to(run) for p in run.rglob("*")) == merged_files  # no validation.json in the run dir
    assert set(merged_files) - set(before) == {p.relative_to(run) for p in (run / "merged").rglob("*")} | {
        Path("merged")}
    empty = tmp_path / "empty"
    empty.mkdir()
    nothing = command(cli_env, "-m", "shardrun", "validate", "--dir", str(empty))
    assert nothing.returncode == 2 and f"error: {empty} holds no result set" in nothing.stderr
    assert list(empty.iterdir()) == []


def test_validate_cli_says_when_it_replaces_a_validation_of_another_config(tmp_path, cli_env):
    run = make_run(tmp_path / "run", count=1)
    out = tmp_path / "merged"
    merge_shards(shard_dirs_of_run(run), out)
    write_json_atomic(MergedPaths(out).validation,
                      {"valid": True, "problems": [], "config_hash": "earlier", "checked_at": "2025-01-01"})
    result = command(cli_env, "-m", "shardrun", "validate", "--dir", str(out))
    assert result.returncode == 0
    assert "note: " in result.stdout and "'earlier'" in result.stdout
    assert read_json(MergedPaths(out).validation)["previous"]["config_hash"] == "earlier"
