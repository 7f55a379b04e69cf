"""The analysis's own config keys (DESIGN section 5), read strictly into frozen dataclasses.

Each key's type, default and meaning (beside its field below): docs/CONFIG.md, generated from this
code by tools/config_reference.py; `task`, `jvm` and `output` belong to the core.

Every problem raises ConfigError naming the key (through shardrun.config.Section).

The bounds keep a typing slip from sizing memory or time: JIDT's tables hold levels x hour_bins
arrays per observed past, and a user's permutations take surrogates x n_obs ints (docs/ANALYSIS.md,
"Config keys", says why these numbers).

data.time_format and data.timezone are fields of TimedDataSettings only, which `parse_data` returns
when one of them is set: the config hash is taken over the settings' fields (shardrun.config), so a
config without them keeps the hash it had before they existed and its run dirs still resume.
"""

from __future__ import annotations

import zoneinfo
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Annotated, ClassVar

import pandas as pd

from shardrun.errors import ConfigError
from shardrun.infodynamics.surrogates import SCHEME
from shardrun.section import Section

# How a p-value is computed from its null (measures.permutation_p_value). Before it, a p was JIDT's b / S
# (ENGINE "observed-pasts-v1/<scheme>"): a run dir of that engine has another config hash and is
# refused on resume, so no run holds p-values of both definitions.
P_VALUES = "p-(b+1)/(S+1)"
# The measures over observed pasts (measures.py) with the surrogate scheme of surrogates.py.
ENGINE = f"observed-pasts-v1/{SCHEME}/{P_VALUES}"

ENCODINGS = ("quantile", "categorical")
AGGREGATES = ("sum", "mean", "min", "max", "count", "first", "last")
CATEGORICAL_AGGREGATES = ("first", "last", "min", "max", "count")
FEATURE_MODES = ("activity", "composite")
MISSING_RULES = ("refuse", "drop")
STRATEGIES = ("AIS",)
LEVELS_MAX = 256
SURROGATES_MAX = 10_000


@dataclass(frozen=True)
class DataSettings:
    path: Annotated[str, "the input: CSV or Parquet (by extension), one row per (user, time)"]
    user_column: Annotated[str, "the column of user ids (read as text)"]
    time_column: Annotated[str, "the column of timestamps"]
    value_column: Annotated[str, "the column of values"]
    encoding: Annotated[str, "quantile: per-user quantile bins of numbers; categorical: the values are labels"]
    levels: Annotated[int, "2 to 256: quantile bins per user, or (categorical) the most distinct labels of a user"]
    step: Annotated[str | None, "null: rows as given; a pandas frequency such as 1h: each user resampled onto it"]
    aggregate: Annotated[str, "how step combines a bin's rows (categorical: first, last, min, max or count)"]
    min_observations: Annotated[int, "a user with fewer observations than max(this, largest k + 2) is skipped"]
    # Not hashed: with the same input, refuse and drop give the same rows, or refuse gives none (it
    # refuses at start), so a run dir keeps its hash whichever is set.
    missing: Annotated[str, "a missing or non-finite value: refuse stops at start (exit 2); drop leaves its row out"
                       ] = field(default="refuse", kw_only=True, metadata={"hashed": False})
    # Not fields here (see the module docstring): null unless set, then TimedDataSettings holds them.
    time_format: ClassVar[str | None] = None
    timezone: ClassVar[str | None] = None


@dataclass(frozen=True)
class TimedDataSettings(DataSettings):
    """DataSettings with data.time_format or data.timezone set: both are hashed."""

    # fields here, class constants in DataSettings (on purpose)
    time_format: Annotated[  # type: ignore[misc]
        str | None, "null: ISO 8601 text (or a datetime column); else a strptime format every timestamp matches"] = None
    timezone: Annotated[  # type: ignore[misc]
        str | None, "null: local time as written; an IANA zone name: times converted to (or taken as) its local time"
    ] = None


@dataclass(frozen=True)
class KSelection:
    strategy: Annotated[str, "AIS (the only one): the k with the largest bias-corrected AIS, the smallest on ties"]
    k_grid: Annotated[tuple[int, ...], "the history lengths k to evaluate"]
    k_max: Annotated[int | None, "null, or the largest k of the grid to evaluate"]
    undersampling_guard: Annotated[bool, "true: a k is evaluated only with an observation per cell of its table"
                                         " on average"]

    @property
    def ks(self) -> tuple[int, ...]:
        """The grid after k_max: the k every user is analysed at (before the undersampling guard)."""
        return tuple(k for k in self.k_grid if self.k_max is None or k <= self.k_max)


@dataclass(frozen=True)
class Settings:
    data: DataSettings
    hour_bins: Annotated[int, "1 to 24: bins of the day's hours (6: 4-hour windows)"]
    feature_modes: Annotated[tuple[str, ...], "activity (the value symbol) and/or composite (value symbol x hour bin)"]
    k_selection: KSelection
    surrogates: Annotated[int, "1 to 10,000 permutations per test for the null distributions and p-values"]
    seed: Annotated[int, "the permutations depend on (seed, user id, surrogate index) only"]
    # Not a config key: how the numbers are computed. It is part of the config hash, so a run dir is
    # never continued by code that computes other numbers from the same config.
    engine: str = ENGINE
    # Not a config key either: the threads the shard process gives the analysis (jvm.threads, through
    # Task.with_threads). No number depends on it, so the config hash leaves it out.
    threads: int = field(default=1, metadata={"hashed": False})


def _at_least(minimum: int):
    return lambda v: None if v >= minimum else f"must be at least {minimum}"


def _between(minimum: int, maximum: int, why: str):
    return lambda v: None if minimum <= v <= maximum else f"must be between {minimum} and {maximum:,} ({why})"


def surrogate_count_problem(count: int) -> str | None:
    """Why `surrogates` cannot be this count, with the fix for the side it is on."""
    if count < 1:
        return ("must be at least 1: the p-values come from a permutation null of that many surrogates (1/(S+1) is"
                " the smallest p; 100, the default, gives 1/101); set surrogates to 100, or to 1 for a quick try")
    if count > SURROGATES_MAX:
        return (f"must be at most {SURROGATES_MAX:,}: memory and time grow with it; lower surrogates (1,000 resolves p"
                " to 1/1001)")
    return None


def _time_format(value: str) -> str | None:
    """A strptime format that can read back what it writes (so `mixed`, `ISO8601` or `%Q` are refused)."""
    hint = 'must be a strptime format with % directives such as "%d/%m/%Y %H:%M", or null for ISO 8601'
    if "%" not in value:
        return hint
    sample = datetime(2025, 1, 31, 13, 5, 7, tzinfo=UTC)
    try:
        datetime.strptime(sample.strftime(value), value)
    except ValueError:
        return hint
    return None


def _zone(value: str) -> str | None:
    try:
        zoneinfo.ZoneInfo(value)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        return 'must be an IANA time zone name such as "Europe/Berlin" or "UTC", or null'
    return None


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
    time_format = section.get("time_format", str, default=None, check=_time_format, nullable=True)
    zone = section.get("timezone", str, default=None, check=_zone, nullable=True)
    timed = {} if time_format is None and zone is None else {"time_format": time_format, "timezone": zone}
    return (TimedDataSettings if timed else DataSettings)(
        path=section.get("path", str, check=_non_empty),
        user_column=section.get("user_column", str, default="user_id", check=_non_empty),
        time_column=section.get("time_column", str, default="timestamp", check=_non_empty),
        value_column=section.get("value_column", str, default="value", check=_non_empty),
        encoding=encoding,
        levels=section.get("levels", int, default=4,
                           check=_between(2, LEVELS_MAX, "more bins leave JIDT's count tables mostly empty and only"
                                                         " cost memory; lower data.levels")),
        step=step,
        aggregate=aggregate,
        min_observations=section.get("min_observations", int, default=20, check=_at_least(1)),
        missing=section.choice("missing", MISSING_RULES, default="refuse"),
        **timed,
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
            "hour_bins", int, default=6,
            check=_between(1, 24, "bins of the 24 hours of a day; set a number in that range"),
        ),
        feature_modes=parse_feature_modes(section),
        k_selection=parse_k_selection(k_section),
        surrogates=section.get(
            "surrogates", int, default=100,
            check=surrogate_count_problem,
        ),
        seed=section.get("seed", int),
    )
    # The sub-sections are wholly ours, so their unknown keys can be reported now.
    data_section.finish()
    k_section.finish()
    return settings


def minimum_observations(settings: Settings) -> int:
    """The fewest observations a user needs to be analysed (fewer: skipped with a reason)."""
    return max(settings.data.min_observations, max(settings.k_selection.ks) + 2)
