"""What the orchestration core needs from an analysis, and how it finds one by dotted path.

The core (worker, merge, validate) never imports JIDT; it talks to the analysis only through this
protocol, so a user can plug in another JVM analysis with `task: package.module:object`.
"""

from __future__ import annotations

import importlib
from typing import Any, Callable, Mapping, NamedTuple, Protocol, Sequence

import pandas as pd

from shardrun.section import Section
from shardrun.errors import ConfigError

# Columns the core adds to every row; the rest come from the task.
BOOKKEEPING_COLUMNS = ("shard", "seconds", "config_hash")


class Dataset(Protocol):
    user_ids: Sequence[str]  # sorted; every shard computes the same list
    fingerprint: str  # sha256 of the input, recorded in run.json and checked on resume


class Task(Protocol):
    key_columns: tuple[str, ...]  # one result row per distinct key, e.g. (user_id, feature_mode)

    def parse_settings(self, section: Section) -> Any:
        """Read the task's own config keys (strictly) into a frozen dataclass."""

    def preflight(self, settings: Any, heap_bytes: int) -> list[str]:
        """Problems that make part of the configured work impossible, before any user starts."""

    def load(self, settings: Any) -> Dataset:
        """Read the input; raise DataError with the fix when it cannot be used."""

    def result_columns(self, settings: Any) -> list[str]:
        """The task's columns of the result set, in order (bookkeeping columns excluded)."""

    def failed_rows(self, settings: Any, user_id: str, reason: str) -> list[Mapping[str, Any]]:
        """The rows recorded for a user whose analysis raised (status failed)."""

    def analyse(self, dataset: Dataset, user_id: str, settings: Any) -> list[Mapping[str, Any]]:
        """One user's rows. Needs the JVM already started in this process."""

    def check_rows(self, frame: pd.DataFrame, settings: Any) -> list[str]:
        """Task-specific sanity checks of a merged result set (value ranges)."""

    def describe_versions(self) -> Mapping[str, str]:
        """Versions to record as provenance (for example the JIDT jar)."""

    # Optional: run_label(settings) -> str, put into new run dir names (`full_<label>_<time>`).
    # Optional: user_heap_needs(settings, dataset) -> dict[str, int] (see PredictsHeap below), which
    # jvm.xmx: auto, the --dry-run heap report and the launcher's memory check rely on.
    # Optional: with_threads(settings, threads) -> settings: the settings to analyse with when the shard
    # process may use `threads` threads (jvm.threads); a number must never depend on it, and the config
    # hash must not either.


class PredictsHeap(Protocol):
    """The optional part of a Task that predicts each user's Java heap (shardrun.launch.admission uses it)."""

    def user_heap_needs(self, settings: Any, dataset: Dataset) -> dict[str, int]:
        """Bytes of Java heap (-Xmx) each user of `dataset` needs: the largest over everything the
        analysis runs for that user. A user skipped by rule needs only the JVM's baseline. Called
        once per process on every user, so it must be fast (no JVM, no per-user series building)."""


class SummaryPanel(NamedTuple):
    """One panel a task adds to summary.png (see DrawsSummary)."""

    draw: Callable[[Any], None]  # draws the panel on the matplotlib Axes it is given
    width: float = 1.0  # relative to the task's other panels, which share the picture's top row


class DrawsSummary(Protocol):
    """The optional part of a Task that adds its own panels to a merge's summary.png
    (shardrun.results.summary uses it); without it the picture holds the core's panels only."""

    def summary_panels(self, frame: pd.DataFrame, settings: Any | None) -> Sequence[SummaryPanel]:
        """Panels of the merged result frame, drawn above the core's per-shard timeline. `settings`
        is None when the merge found no run.json. Import matplotlib inside the drawing functions
        only, so that loading the task stays cheap."""


def load_task(dotted: str) -> Task:
    module_name, _, attr = dotted.partition(":")
    if not module_name or not attr:
        raise ConfigError(f"config key 'task' must look like 'package.module:object', got {dotted!r}.")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"config key 'task' names module {module_name!r}, which cannot be imported ({exc}).") from None
    try:
        return getattr(module, attr)
    except AttributeError:
        raise ConfigError(f"config key 'task': module {module_name!r} has no object {attr!r}.") from None
