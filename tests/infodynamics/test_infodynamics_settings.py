"""Strict parsing of the analysis's config keys: every mistake is a ConfigError naming the key."""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path

import pytest

from shardrun.config import parse_config
from shardrun.errors import ConfigError
from shardrun.infodynamics import task
from shardrun.infodynamics.settings import Settings
from shardrun.section import Section

REPO = Path(__file__).resolve().parents[2]

BASE = {
    "data": {"path": "data/sample_users.csv"},
    "feature_modes": ["activity", "composite"],
    "k_selection": {"k_grid": [3, 1, 2]},
    "seed": 7,
}


def parse(raw: dict) -> Settings:
    top = Section(raw)
    settings = task.parse_settings(top)
    top.finish()
    return settings


def with_value(path: str, value) -> dict:
    raw = copy.deepcopy(BASE)
    *parents, key = path.split(".")
    node = raw
    for parent in parents:
        node = node.setdefault(parent, {})
    node[key] = value
    return raw


def test_defaults_and_normalisation():
    settings = parse(BASE)
    assert settings.data.path == "data/sample_users.csv"  # kept as written
    assert (settings.data.user_column, settings.data.time_column, settings.data.value_column) == (
        "user_id", "timestamp", "value")
    assert (settings.data.encoding, settings.data.levels, settings.data.step) == ("quantile", 4, None)
    assert settings.data.min_observations == 20
    assert settings.hour_bins == 6 and settings.surrogates == 100 and settings.seed == 7
    assert settings.feature_modes == ("activity", "composite")
    assert settings.k_selection.k_grid == (1, 2, 3)  # a sorted tuple, not a list
    assert settings.k_selection.ks == (1, 2, 3)
    assert not settings.k_selection.undersampling_guard
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.seed = 8  # type: ignore[misc]


def test_k_max_trims_the_grid():
    assert parse(with_value("k_selection.k_max", 2)).k_selection.ks == (1, 2)


def test_shipped_configs_parse_with_the_core():
    import yaml

    for name in ("proposal.yaml", "small.yaml"):
        with open(REPO / "config" / name, encoding="utf-8") as handle:
            config = parse_config(yaml.safe_load(handle))
        assert config.settings.data.path == "data/sample_users.csv"


@pytest.mark.parametrize(
    "path, value, key",
    [
        ("data.levels", "4", "data.levels"),
        ("data.levels", 1, "data.levels"),
        ("data.levels", True, "data.levels"),
        ("data.encoding", "ordinal", "data.encoding"),
        ("data.aggregate", "median", "data.aggregate"),
        ("data.step", "every hour", "data.step"),
        ("data.step", "0h", "data.step"),
        ("data.min_observations", 0, "data.min_observations"),
        ("data.path", 5, "data.path"),
        ("data.path", " ", "data.path"),
        ("hour_bins", 25, "hour_bins"),
        ("hour_bins", 0, "hour_bins"),
        ("feature_modes", [], "feature_modes"),
        ("feature_modes", ["activity", "weekday"], "feature_modes"),
        ("feature_modes", ["activity", "activity"], "feature_modes"),
        ("feature_modes", "activity", "feature_modes"),
        ("k_selection.k_grid", [], "k_selection.k_grid"),
        ("k_selection.k_grid", [1, 0], "k_selection.k_grid"),
        ("k_selection.k_grid", [1, -2], "k_selection.k_grid"),
        ("k_selection.k_grid", [1, 1], "k_selection.k_grid"),
        ("k_selection.k_grid", [1, 2.5], "k_selection.k_grid"),
        ("k_selection.k_grid", 3, "k_selection.k_grid"),
        ("k_selection.strategy", "TE", "k_selection.strategy"),
        ("k_selection.k_max", 0, "k_selection.k_max"),
        ("k_selection.k_max", "4", "k_selection.k_max"),
        ("k_selection.undersampling_guard", "yes", "k_selection.undersampling_guard"),
        ("surrogates", 0, "surrogates"),
        ("surrogates", 10.0, "surrogates"),
        ("seed", "20251026", "seed"),
    ],
)
def test_bad_values_name_the_key(path, value, key):
    with pytest.raises(ConfigError, match=f"'{key}'"):
        parse(with_value(path, value))


@pytest.mark.parametrize("path", ["data.colour", "k_selection.kgrid", "surrogate"])
def test_unknown_keys_name_the_key(path):
    with pytest.raises(ConfigError, match=f"unknown config key '{path}'"):
        parse(with_value(path, 1))


@pytest.mark.parametrize("missing", ["data.path", "k_selection.k_grid", "feature_modes", "seed"])
def test_required_keys(missing):
    raw = copy.deepcopy(BASE)
    *parents, key = missing.split(".")
    node = raw
    for parent in parents:
        node = node[parent]
    del node[key]
    with pytest.raises(ConfigError, match=f"'{missing}' is required"):
        parse(raw)


def test_k_max_below_the_whole_grid():
    raw = with_value("k_selection.k_max", 1)
    raw["k_selection"]["k_grid"] = [2, 3]
    with pytest.raises(ConfigError, match="'k_selection.k_max'"):
        parse(raw)


def test_categorical_resampling_needs_a_label_aggregate():
    raw = with_value("data.encoding", "categorical")
    raw["data"].update(step="1h", aggregate="mean")
    with pytest.raises(ConfigError, match="'data.aggregate'"):
        parse(raw)
    raw["data"]["aggregate"] = "last"
    assert parse(raw).data.aggregate == "last"


def test_data_must_be_a_mapping():
    raw = copy.deepcopy(BASE)
    raw["data"] = ["data/sample_users.csv"]
    with pytest.raises(ConfigError, match="'data'"):
        parse(raw)
