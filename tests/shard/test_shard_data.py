"""Each shard reads only its users: the user index, loads of some users' rows (CSV in chunks, Parquet row
group by row group), the messages of a partial load, and real shards with `partition: balanced` and a
resume with nothing to do. Real files throughout; the last tests start real shard processes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import yaml

from shardrun.config import load_config
from shardrun.errors import DataError
from shardrun.infodynamics import data as data_module
from shardrun.infodynamics import task
from shardrun.partition import ShardSpec
from shardrun.section import Section
from shardrun.shard.prepare import ShardOptions, committed_under_lock, prepare
from shardrun.task import Task, UserIndex, load_users, read_user_index

from e2e_support import analysis_values, shardrun, write_config
from store_support import commit_user


def settings_for(path: Path, **data):
    # missing: drop, since interleaved_table has missing values (refused by default)
    top = Section({
        "data": {"path": str(path), "levels": 4, "missing": "drop", **data}, "hour_bins": 6,
        "feature_modes": ["activity", "composite"], "k_selection": {"k_grid": [1, 2]}, "surrogates": 10, "seed": 1,
    })
    settings = task.parse_settings(top)
    top.finish()
    return settings


def interleaved_table(seed: int = 4, users: int = 23) -> pd.DataFrame:
    """Users of different lengths, their rows shuffled through the file, ids whose text matters (007)."""
    rng = np.random.default_rng(seed)
    frames = []
    for u in range(users):
        n = int(rng.integers(5, 60))
        start = pd.Timestamp("2025-03-01") + pd.Timedelta(minutes=int(rng.integers(0, 900)))
        stamps = (start + pd.to_timedelta(np.arange(n) * 37, unit="min")).strftime("%Y-%m-%dT%H:%M:%S")
        values = rng.integers(0, 9, n).astype(float)
        values[rng.random(n) < 0.1] = np.nan  # missing values: dropped per user (data.missing: drop), after the load
        frames.append(pd.DataFrame({"user_id": f"{u:03d}", "timestamp": stamps, "value": values}))
    table = pd.concat(frames, ignore_index=True)
    return table.iloc[rng.permutation(len(table))].reset_index(drop=True)


def write(table: pd.DataFrame, path: Path, row_group_size: int = 64) -> Path:
    if path.suffix == ".csv":
        table.to_csv(path, index=False)
    else:
        table.to_parquet(path, index=False, row_group_size=row_group_size)
    return path


def same_rows(part, whole, user: str) -> bool:
    mine, all_of = part._rows_by_user[user], whole._rows_by_user[user]
    return all(np.array_equal(a, b, equal_nan=True) for a, b in (
        (mine.instants, all_of.instants), (mine.local_times, all_of.local_times), (mine.values, all_of.values)))


# --- the user index ------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_the_index_is_the_full_loads_users_with_their_rows(tmp_path, monkeypatch, suffix):
    monkeypatch.setattr(data_module, "STREAM_ROWS", 50)  # many chunks and record batches
    table = interleaved_table()
    settings = settings_for(write(table, tmp_path / f"d{suffix}"))
    index = task.user_index(settings)
    whole = task.load(settings)
    assert index.user_ids == whole.user_ids and index.user_ids[0] == "000"
    assert index.fingerprint == whole.fingerprint
    assert dict(zip(index.user_ids, index.observations)) == table["user_id"].value_counts().to_dict()


def test_ids_without_a_user_are_refused_by_the_index_as_by_the_full_load(tmp_path, monkeypatch):
    monkeypatch.setattr(data_module, "STREAM_ROWS", 4)  # the rows without an id fall into several chunks
    table = interleaved_table(users=3)
    table.loc[[2, 9, 10, 30, 31, 33, 40], "user_id"] = None
    settings = settings_for(write(table, tmp_path / "d.csv"))
    with pytest.raises(DataError) as from_index:
        task.user_index(settings)
    with pytest.raises(DataError) as from_load:
        task.load(settings)
    assert str(from_index.value) == str(from_load.value)
    assert "7 rows have no user id (missing or empty) in column 'user_id' (rows 3, 10, 11, 31, 32 and 2 more)" \
        in str(from_index.value)


def test_an_empty_table_is_refused_by_the_index(tmp_path):
    settings = settings_for(write(interleaved_table().iloc[:0], tmp_path / "d.csv"))
    with pytest.raises(DataError, match="has no rows"):
        task.user_index(settings)


def test_a_task_without_an_index_is_read_whole_once(tmp_path):
    """A task without user_index (docs/TASKS.md): the index comes from the full load, which is kept."""

    class WholeOnly(Task):
        def load(self, settings, users=None):
            return task.load(settings)

        def analyse(self, dataset, user_id, settings):
            return []

    settings = settings_for(write(interleaved_table(), tmp_path / "d.csv"))
    index, whole = read_user_index(WholeOnly(), settings)
    assert index == UserIndex(whole.user_ids, whole.fingerprint) and index.costs() == [1] * len(whole.user_ids)
    assert load_users(WholeOnly(), settings, index.user_ids[:2], index).user_ids == whole.user_ids


# --- loading some users' rows -----------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_some_users_rows_equal_those_of_the_full_load(tmp_path, monkeypatch, suffix):
    monkeypatch.setattr(data_module, "STREAM_ROWS", 70)
    settings = settings_for(write(interleaved_table(), tmp_path / f"d{suffix}", row_group_size=50))
    whole = task.load(settings)
    for chosen in (whole.user_ids[1::3], whole.user_ids[:1], whole.user_ids):
        part = task.load(settings, users=chosen)
        assert part.user_ids == tuple(chosen)
        assert all(same_rows(part, whole, user) for user in chosen)
        assert [part.series(u).n_obs for u in chosen] == [whole.series(u).n_obs for u in chosen]
        assert [part.series(u).cleaning for u in chosen] == [whole.series(u).cleaning for u in chosen]
    assert sum(whole.series(u).cleaning.dropped for u in whole.user_ids) > 0  # the counts compared are not all 0


def test_a_parquet_file_sorted_by_user_is_read_only_where_its_users_are(tmp_path, monkeypatch):
    table = interleaved_table(users=40).sort_values("user_id", kind="stable")
    settings = settings_for(write(table, tmp_path / "d.parquet", row_group_size=40))
    groups = pq.ParquetFile(settings.data.path).num_row_groups
    read = []
    original = pq.ParquetFile.read_row_group
    monkeypatch.setattr(pq.ParquetFile, "read_row_group",
                        lambda self, i, *args, **kwargs: read.append(i) or original(self, i, *args, **kwargs))
    part = task.load(settings, users=["017", "018"])
    assert part.user_ids == ("017", "018") and len(read) <= 4 < groups
    read.clear()
    task.load(settings, users=["000", "039"])
    assert read[0] == 0 and read[-1] == groups - 1 and len(read) <= 4  # the first and the last groups only


def test_a_partial_load_checks_its_rows_and_names_them_by_their_line_in_the_file(tmp_path):
    table = interleaved_table(users=4)
    bad = table.index[table["user_id"] == "002"][3]
    table.loc[bad, "timestamp"] = "11/01/2025 03:00"
    settings = settings_for(write(table, tmp_path / "d.csv"))
    task.load(settings, users=["000", "001", "003"])  # the bad row belongs to another shard's user
    with pytest.raises(DataError, match=rf"1 timestamps that are not ISO 8601 \(row {bad + 1}: '11/01/2025 03:00'\)"):
        task.load(settings, users=["002"])
    with pytest.raises(DataError, match=rf"row {bad + 1}: '11/01/2025 03:00'"):
        task.load(settings)  # the same row, the same words, when the whole file is read


# --- the shard: plan from the index, load the users to do ---------------------------------------------


def config_file(tmp_path: Path, data: Path, **extra) -> Path:
    path = write_config(tmp_path / "config.yaml", data, tmp_path, surrogates=10, k_grid=(1, 2))
    config = yaml.safe_load(path.read_text())
    config["data"].update({"user_column": "user_id", "time_column": "timestamp", "value_column": "value",
                           "encoding": "quantile", "levels": 4, "missing": "drop"})
    config.update(extra)
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def test_a_shard_loads_only_the_users_it_has_to_do(tmp_path):
    data = write(interleaved_table(), tmp_path / "d.parquet")
    config = load_config(config_file(tmp_path, data, partition="balanced"))
    prepared = prepare(config, ShardOptions(shard=ShardSpec(2, 4), pilot=None, out=tmp_path / "run"))
    assert len(prepared.index.user_ids) == 23 and prepared.plan.todo == tuple(prepared.assignment[2])
    assert prepared.dataset.user_ids == prepared.plan.todo
    sizes = [sum(dict(zip(prepared.index.user_ids, prepared.index.observations))[u] for u in shard)
             for shard in prepared.assignment]
    assert max(sizes) - min(sizes) <= max(prepared.index.observations)


def test_under_the_lock_prepares_scan_stands_until_a_result_file_changes(tmp_path):
    data = write(interleaved_table(users=6), tmp_path / "d.csv")
    config = load_config(config_file(tmp_path, data))
    run = tmp_path / "run"
    fresh = prepare(config, ShardOptions(shard=ShardSpec(0, 2), pilot=None, out=run))
    shard = fresh.dirs.shard
    shard.make()
    (shard.dir / "shard.json").write_text(json.dumps({"shard": "0/2", "config_hash": config.hash}))
    commit_user(shard, fresh.plan.todo[0], [{"user_id": fresh.plan.todo[0], "config_hash": config.hash}], {})
    resumed = prepare(config, ShardOptions(shard=ShardSpec(0, 2), pilot=None, out=run))
    assert resumed.dirs.resuming and list(resumed.committed) == [fresh.plan.todo[0]]
    assert resumed.dataset.user_ids == fresh.plan.todo[1:]  # the committed user's rows are not read
    assert committed_under_lock(resumed) is resumed.committed  # nothing changed: no second scan
    commit_user(shard, fresh.plan.todo[1], [{"user_id": fresh.plan.todo[1], "config_hash": config.hash}], {})
    assert set(committed_under_lock(resumed)) == set(fresh.plan.todo[:2])  # another commit: scanned again


def test_partition_is_a_strict_core_key_in_the_config_hash(tmp_path):
    data = write(interleaved_table(users=3), tmp_path / "d.csv")
    modulo = load_config(config_file(tmp_path, data))
    assert modulo.partition == "modulo"
    assert load_config(config_file(tmp_path, data, partition="modulo")).hash == modulo.hash  # the default adds nothing
    assert load_config(config_file(tmp_path, data, partition="balanced")).hash != modulo.hash
    from shardrun.errors import ConfigError

    with pytest.raises(ConfigError, match="'partition' must be one of modulo, balanced"):
        load_config(config_file(tmp_path, data, partition="even"))


# --- real shards ----------------------------------------------------------------------------------------


@pytest.mark.e2e
def test_balanced_shards_merge_to_the_one_shard_result_and_a_finished_shard_starts_no_jvm(tmp_path):
    table = interleaved_table(seed=9, users=9)
    data = write(table.loc[table["user_id"] != "004"], tmp_path / "d.csv")
    reference_config = config_file(tmp_path, data)
    shardrun("run", "--config", str(reference_config), "--full", "--shard", "0/1", "--out", str(tmp_path / "one"),
             cwd=tmp_path)
    shardrun("merge", "--run", str(tmp_path / "one"), "--output", str(tmp_path / "one" / "merged"), cwd=tmp_path)

    balanced_config = tmp_path / "balanced.yaml"
    balanced_config.write_text(reference_config.read_text() + "partition: balanced\n")
    dry = shardrun("run", "--config", str(balanced_config), "--full", "--shard", "0/3", "--dry-run", cwd=tmp_path)
    assert "  modulo: largest" in dry.stdout and "  balanced (this run): largest" in dry.stdout
    run = tmp_path / "three"
    for index in range(3):
        shardrun("run", "--config", str(balanced_config), "--full", "--shard", f"{index}/3", "--out", str(run),
                 cwd=tmp_path)
    assert json.loads((run / "run.json").read_text())["partition"] == "balanced"
    shardrun("merge", "--run", str(run), "--output", str(run / "merged"), cwd=tmp_path)
    numbers = ["user_id", "feature_mode", "status", "ais_bits", "te_hour_bits", "k_selected"]
    one, three = analysis_values(tmp_path / "one" / "merged"), analysis_values(run / "merged")
    pd.testing.assert_frame_equal(one[numbers].reset_index(drop=True), three[numbers].reset_index(drop=True))

    shard = run / "shard-1-of-3"
    before = json.loads((shard / "status.json").read_text())
    again = shardrun("run", "--config", str(balanced_config), "--full", "--resume", str(shard), cwd=tmp_path)
    assert "exit 0" in again.stdout
    assert "no user to do, so no JVM is started" in again.stderr, again.stderr
    assert "indexed " in again.stderr and "loaded " not in again.stderr  # no row of the data was read
    after = json.loads((shard / "status.json").read_text())
    assert after["state"] == "completed" and after["users_done"] == before["users_done"] == after["users_total"]
