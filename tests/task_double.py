"""A test double of the Task protocol and builders of real shard dirs, for the merge and validate tests."""

from __future__ import annotations

import json
import sys
import types
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from shardrun.config import parse_config
from shardrun.partition import ShardSpec, users_of_shard
from shardrun.results.read import read_result_file
from shardrun.storage.atomic import write_json_atomic
from shardrun.storage.paths import MergedPaths, RunPaths, ensure_identity
from shardrun.task import Dataset, Task

from store_support import commit_user

DOUBLE_MODULE = "shardrun_test_double_task"
MODES = ("activity", "composite")
COLUMNS = ["user_id", "feature_mode", "status", "reason", "n_obs", "ais_bits", "te_bits"]
USERS = [f"u{i:02d}" for i in range(8)]


# --- the test double of a Task -------------------------------------------------


@dataclass(frozen=True)
class DoubleSettings:
    modes: tuple[str, ...]
    users: tuple[str, ...]


class TaskDouble(Task):
    """Test double of shardrun.task.Task: what merge and validate call; it analyses nobody."""

    key_columns = ("user_id", "feature_mode")
    columns = ("n_obs", "ais_bits", "te_bits")

    def parse_settings(self, section):
        modes = section.get("modes", list, default=list(MODES))
        users = section.get("users", list, default=list(USERS))
        return DoubleSettings(modes=tuple(modes), users=tuple(users))

    def load(self, settings, users=None):
        return Dataset(user_ids=sorted(settings.users), fingerprint="fp-test")

    def analyse(self, dataset, user_id, settings):
        raise AssertionError("the double is for merge and validate only")

    def check_rows(self, frame, settings):
        negative = frame[frame["ais_bits"] < 0]
        return [f"user {r.user_id!r} mode {r.feature_mode!r}: ais_bits {r.ais_bits} < 0" for r in negative.itertuples()]


@pytest.fixture(autouse=True)
def task_double(monkeypatch):
    """Make the double loadable by dotted path, as parse_config and load_task do with a real task."""
    module = types.ModuleType(DOUBLE_MODULE)
    module.task = TaskDouble()
    monkeypatch.setitem(sys.modules, DOUBLE_MODULE, module)
    return module.task


# --- building shard dirs on disk -----------------------------------------------------------


def raw_config(users: Sequence[str] = USERS, modes: Sequence[str] = MODES) -> dict[str, Any]:
    return {"task": f"{DOUBLE_MODULE}:task", "modes": list(modes), "users": list(users)}


def ais_of(user_id: str, mode: str) -> float:
    """A deterministic value per (user, mode), like the real analysis: the same in every run."""
    return (sum(map(ord, user_id)) % 97) / 7 + MODES.index(mode) / 3


def rows_of(user_id: str, spec: ShardSpec, config_hash: str, modes=MODES, seconds: float = 1.5, **override):
    return [
        {
            "user_id": user_id,
            "feature_mode": mode,
            "status": "ok",
            "reason": "",
            "n_obs": 100 + len(user_id),
            "ais_bits": ais_of(user_id, mode),
            "te_bits": None,  # a missing number, as JSON stores NaN
            "shard": str(spec),
            "seconds": seconds,
            "config_hash": config_hash,
            **override,
        }
        for mode in modes
    ]


def make_run(
    run_dir: Path,
    count: int,
    indices: Sequence[int] | None = None,
    raw: dict[str, Any] | None = None,
    skip_users: Sequence[str] = (),
    seconds: float = 1.5,
    overrides: dict[str, dict[str, Any]] | None = None,
    fingerprint: str = "fp-test",
) -> Path:
    """A run dir with run.json and the given shards of a K=count split, committed user by user."""
    raw = raw or raw_config()
    config = parse_config(raw)
    users = sorted(config.settings.users)
    run_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(
        RunPaths(run_dir).run_json,
        {
            "config": raw,
            "config_hash": config.hash,
            "shards": count,
            "versions": {"shardrun": "test"},
            "created_at": "2025-01-01T00:00:00+00:00",
            "data_fingerprint": fingerprint,
        },
    )
    for index in range(count) if indices is None else indices:
        spec = ShardSpec(index, count)
        paths = RunPaths(run_dir).shard(spec)
        paths.make()
        planned = users_of_shard(users, spec)
        identity = {
            "shard": str(spec),
            "config_hash": config.hash,
            "data_fingerprint": fingerprint,
            "pilot": None,
            "task": config.task,
            "users_planned": planned,
        }
        ensure_identity(paths, identity, resuming=False)
        for user_id in planned:
            if user_id in skip_users:
                continue
            override = dict((overrides or {}).get(user_id, {}))
            modes = override.pop("modes", config.settings.modes)
            rows = rows_of(user_id, spec, config.hash, modes=modes, seconds=seconds, **override)
            commit_user(paths, user_id, rows)
    return run_dir


def read_report(output: Path) -> dict[str, Any]:
    return json.loads(MergedPaths(output).report.read_text(encoding="utf-8"))


def read_both(output: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    text = ["user_id", "feature_mode", "status", "reason", "shard", "config_hash"]
    paths = MergedPaths(output)
    return read_result_file(paths.csv, text), read_result_file(paths.parquet, text)
