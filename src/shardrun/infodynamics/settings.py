"""The analysis's own config keys (DESIGN section 5), read strictly into frozen dataclasses.

Keys and defaults (`task`, `jvm` and `output` belong to the core and are not read here):

    data.path              required; CSV or Parquet (by extension). Kept as written; a relative path
                           is resolved against the current working directory when the data is loaded.
    data.user_column       default "user_id"
    data.time_column       default "timestamp"
    data.value_column      default "value"
    data.encoding          quantile | categorical, default quantile
    data.levels            integer >= 2, default 4. quantile: bins per user. categorical: the largest
                           number of distinct labels one user may have (the alphabet size, see symbols.py)
    data.step              null (rows as given, the default) or a pandas frequency such as "1h"
    data.aggregate         sum | mean | min | max | count | first | last, default sum; used only with
                           `step`. With categorical encoding only first | last | min | max | count,
                           because a sum or mean of labels is not a label.
    data.min_observations  integer >= 1, default 20. An addition to the original config: a user with
                           fewer observations (after NaN removal and resampling) than
                           max(min_observations, largest k + 2) is skipped with a reason.
    hour_bins              integer 1..24, default 6
    feature_modes          required, non-empty list of distinct modes from activity | composite
    k_selection.strategy   AIS (the only strategy), default AIS
    k_selection.k_grid     required, non-empty list of distinct positive integers (stored sorted)
    k_selection.k_max      null (default) or a positive integer; k above it are dropped from the grid
    k_selection.undersampling_guard   bool, default false
    surrogates             positive integer, default 100
    seed                   required integer; the surrogates depend on it

Every problem raises ConfigError naming the key (through shardrun.config.Section).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd

from shardrun.section import Section
from shardrun.errors import ConfigError
from shardrun.infodynamics.surrogates import SCHEME

# The measures over observed pasts (measures.py) with the surrogate scheme of surrogates.py.
ENGINE = f"observed-pasts-v1/{SCHEME}"

ENCODINGS = ("quantile", "categorical")
AGGREGATES = ("sum", "mean", "min", "max", "count", "first", "last")
CATEGORICAL_AGGREGATES = ("first", "last", "min", "max", "count")
FEATURE_MODES = ("activity", "composite")
STRATEGIES = ("AIS",)


@dataclass(frozen=True)
class DataSettings:
    path: str
    user_column: str
    time_column: str
    value_column: str
    encoding: str
    levels: int
    step: str | None
    aggregate: str
    min_observations: int


@dataclass(frozen=True)
class KSelection:
    strategy: str
    k_grid: tuple[int, ...]
    k_max: int | None
    undersampling_guard: bool

    @property
    def ks(self) -> tuple[int, ...]:
        """The grid after k_max: the k every user is analysed at (before the undersampling guard)."""
        return tuple(k for k in self.k_grid if self.k_max is None or k <= self.k_max)


@dataclass(frozen=True)
class Settings:
    data: DataSettings
    hour_bins: int
    feature_modes: tuple[str, ...]
    k_selection: KSelection
    surrogates: int
    seed: int
    # Not a config key: how the numbers are computed. It is part of the config hash, so a run dir is
    # never continued by code that computes other numbers from the same config.
    engine: str = ENGINE
    # Not a config key either: the threads the shard process gives the analysis (jvm.threads, through
    # Task.with_threads). No number depends on it, so the config hash leaves it out.
    threads: int = field(default=1, metadata={"hashed": False})


def _at_least(minimum: int):
    return lambda v: None if v >= minimum else f"must be at least {minimum}"


def _non_empty(value: str) -> str | None:
    return None if value.strip() else "must not be empty"


def _pandas_frequency(value: str) -> str | None:
    try:
        offset = pd.tseries.frequencies.to_offset(value)
    except ValueError:
        return "must be a pandas frequency such as 1h, 30min or 1D"
    return None if offset.n > 0 else "must be a positive frequency"


def parse_data(section: Section) -> DataSettings:
    encoding = section.choice("encoding", ENCODINGS, default="quantile")
    step = section.get("step", str, default=None, check=_pandas_frequency, nullable=True)
    aggregate = section.choice("aggregate", AGGREGATES, default="sum")
    if encoding == "categorical" and step is not None and aggregate not in CATEGORICAL_AGGREGATES:
        raise ConfigError(
            f"config key '{section.name('aggregate')}' is {aggregate!r}, which does not give a category label"
            f" with data.encoding categorical; use one of {', '.join(CATEGORICAL_AGGREGATES)}."
        )
    return DataSettings(
        path=section.get("path", str, check=_non_empty),
        user_column=section.get("user_column", str, default="user_id", check=_non_empty),
        time_column=section.get("time_column", str, default="timestamp", check=_non_empty),
        value_column=section.get("value_column", str, default="value", check=_non_empty),
        encoding=encoding,
        levels=section.get("levels", int, default=4, check=_at_least(2)),
        step=step,
        aggregate=aggregate,
        min_observations=section.get("min_observations", int, default=20, check=_at_least(1)),
    )


def parse_k_selection(section: Section) -> KSelection:
    strategy = section.choice("strategy", STRATEGIES, default="AIS")
    k_grid = tuple(sorted(section.int_list("k_grid")))
    k_max = section.get("k_max", int, default=None, check=_at_least(1), nullable=True)
    guard = section.get("undersampling_guard", bool, default=False)
    selection = KSelection(strategy=strategy, k_grid=k_grid, k_max=k_max, undersampling_guard=guard)
    if not selection.ks:
        raise ConfigError(
            f"config key '{section.name('k_max')}' ({k_max}) is below every k of k_selection.k_grid"
            f" {list(k_grid)}; raise k_max or add a smaller k."
        )
    return selection


def parse_feature_modes(section: Section) -> tuple[str, ...]:
    modes = section.get("feature_modes", list)
    name = section.name("feature_modes")
    if not modes:
        raise ConfigError(f"config key '{name}' must list at least one of {', '.join(FEATURE_MODES)}, got [].")
    for mode in modes:
        if mode not in FEATURE_MODES:
            raise ConfigError(f"config key '{name}' must list modes from {', '.join(FEATURE_MODES)}, got {mode!r}.")
    if len(set(modes)) != len(modes):
        raise ConfigError(f"config key '{name}' lists a mode twice: {modes!r}.")
    return tuple(modes)


def parse_settings(section: Section) -> Settings:
    """Read the task's keys from the top-level section; the core rejects unknown top-level keys."""
    data_section = section.section("data")
    k_section = section.section("k_selection")
    settings = Settings(
        data=parse_data(data_section),
        hour_bins=section.get(
            "hour_bins", int, default=6, check=lambda v: None if 1 <= v <= 24 else "must be between 1 and 24"
        ),
        feature_modes=parse_feature_modes(section),
        k_selection=parse_k_selection(k_section),
        surrogates=section.get("surrogates", int, default=100, check=_at_least(1)),
        seed=section.get("seed", int),
    )
    # The sub-sections are wholly ours, so their unknown keys can be reported now.
    data_section.finish()
    k_section.finish()
    return settings


def minimum_observations(settings: Settings) -> int:
    """The fewest observations a user needs to be analysed (fewer: skipped with a reason)."""
    return max(settings.data.min_observations, max(settings.k_selection.ks) + 2)
