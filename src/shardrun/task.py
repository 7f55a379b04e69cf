"""What the orchestration core needs from an analysis, and how it finds one by dotted path.

The core (worker, merge, validate) knows no analysis library; it talks to the analysis only through
this protocol, so a user can plug in another JVM analysis with `task: package.module:object`
(docs/TASKS.md walks through one). The required part is `Task`; the optional parts are
`ReadsByUser` (a cheap user index, then only a shard's users loaded), `PredictsHeap` (per-user heap
needs), `RunsOnJvm` (classpath, JVM options, heap exhaustion, provenance of the JVM's classpath) and
`AddsSetColumns` (columns and facts that depend on the whole merged set), each hook with a default
here or in the core.
"""

from __future__ import annotations

import importlib
import sys
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, Callable, Collection, Mapping, NamedTuple, Protocol, Sequence

import pandas as pd

from shardrun.section import Section
from shardrun.errors import ConfigError, TaskNotImportable

# Columns the core adds to every row; the rest come from the task.
BOOKKEEPING_COLUMNS = ("shard", "seconds", "config_hash")


class Dataset(Protocol):
    user_ids: Sequence[str]  # sorted; every shard computes the same list
    fingerprint: str  # sha256 of the input, recorded in run.json and checked on resume


@dataclass(frozen=True)
class UserIndex:
    """Who is in the input and how much: what every shard reads before it loads its own users.

    `user_ids` are sorted exactly as the task's Dataset.user_ids (every shard computes the same list);
    `observations[i]` is the number of input rows of user_ids[i] (None when the task did not count
    them: a task without ReadsByUser), the cost `partition: balanced` weighs users by.
    """

    user_ids: tuple[str, ...]
    fingerprint: str  # the same as the Dataset's: recorded in run.json and checked on resume
    observations: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        if self.observations is not None and len(self.observations) != len(self.user_ids):
            raise ValueError(f"{len(self.observations)} observation counts for {len(self.user_ids)} users")

    def costs(self) -> list[int]:
        """Each user's cost for `partition: balanced`: its observations, or 1 each when not counted."""
        return list(self.observations) if self.observations is not None else [1] * len(self.user_ids)


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
        """Versions to record as provenance in run.json (libraries, jars); needs no JVM."""

    # Optional: run_label(settings) -> str, put into new run dir names (`<config stem>_full_<label>_<time>`).
    # Optional: user_index(settings) -> UserIndex, with load(settings, users=...) (see ReadsByUser below):
    # a shard then reads only its users' rows.
    # Optional: user_heap_needs(settings, dataset) -> dict[str, int] (see PredictsHeap below), which
    # jvm.xmx: auto, the --dry-run heap report and the launcher's memory check rely on.
    # Optional: with_threads(settings, threads) -> settings: the settings to analyse with when the shard
    # process may use `threads` threads (jvm.threads); a number must never depend on it, and the config
    # hash must not either.
    # Optional: the JVM hooks of RunsOnJvm below (classpath, options, heap exhaustion, advice, provenance).
    # Optional: set_columns(frame, settings) and set_report(frame, settings) (see AddsSetColumns below):
    # columns and merge_report.json facts that depend on the whole merged set.


class ReadsByUser(Protocol):
    """The optional part of a Task that lets each shard read only its own users (docs/TASKS.md).

    Without it every shard loads the whole input (Task.load) and takes its users from that."""

    def user_index(self, settings: Any) -> UserIndex:
        """A cheap pass over the input (its user id column at least): sorted ids, rows per user, the
        fingerprint. Refuse (DataError) whatever the full load refuses about user ids, with the same
        message, and whatever else in the input must stop every shard alike (a shard loads only its
        users' rows; the default task audits every cell of its three columns here)."""

    def load(self, settings: Any, users: Collection[str] | None = None) -> Dataset:
        """Task.load, reading only the rows of `users` (None: every user). The Dataset's user_ids are
        those of `users` present in the input; every check of the full load applies to the rows read."""


class PredictsHeap(Protocol):
    """The optional part of a Task that predicts each user's Java heap (shardrun.launch.admission uses it)."""

    def user_heap_needs(self, settings: Any, dataset: Dataset) -> dict[str, int]:
        """Bytes of Java heap (-Xmx) each user of `dataset` needs: the largest over everything the
        analysis runs for that user. A user skipped by rule needs only the JVM's baseline. Called
        once per process on every user, so it must be fast (no JVM, no per-user series building)."""

    def index_heap_needs(self, settings: Any, index: UserIndex) -> dict[str, int] | None:
        """Optional (with ReadsByUser): every user's need from the index alone, never below
        user_heap_needs (an upper bound); None when the index cannot bound it. jvm.xmx: auto is chosen
        from these, so that every shard chooses the same heap without loading other shards' users."""


def read_user_index(task: Any, settings: Any) -> tuple[UserIndex, Dataset | None]:
    """The input's user index, and the whole Dataset when the task has no index of its own (then the
    index is taken from a full load, which the caller should keep rather than load again)."""
    index_of = getattr(task, "user_index", None)
    if index_of is not None:
        return index_of(settings), None
    dataset = task.load(settings)
    return UserIndex(tuple(dataset.user_ids), dataset.fingerprint), dataset


def load_users(task: Any, settings: Any, users: Collection[str], index: UserIndex) -> Dataset:
    """The Dataset of `users` (a shard's users to do): only their rows when the task reads by user and
    they are not every user of `index`; otherwise the whole input, exactly as Task.load reads it."""
    if getattr(task, "user_index", None) is None or len(users) == len(index.user_ids):
        return task.load(settings)
    return task.load(settings, users=users)


def index_heap_needs(task: Any, settings: Any, index: UserIndex) -> dict[str, int] | None:
    """The task's upper bounds of every user's heap from the index (PredictsHeap.index_heap_needs), or None."""
    predict = getattr(task, "index_heap_needs", None)
    return None if predict is None else predict(settings, index)


class PredictsTime(Protocol):
    """The optional part of a Task that estimates each user's analysis time (launch_shards --scheduler
    slurm --time names the users that could not finish within an element's time limit)."""

    def user_seconds(self, settings: Any, dataset: Dataset) -> dict[str, float]:
        """Estimated seconds of each user's analysis, erring long. Fast: no JVM, no per-user series."""


    def result_seconds(self, frame: pd.DataFrame, settings: Any) -> Mapping[str, float]:
        """Optional: the same estimate from a merged result frame instead of the input (the merge's
        run.png judges each user's time against it without loading the data): seconds by user id, NaN
        or absent for a user it cannot estimate (a failed user without its sizes)."""


def task_user_seconds(task: Any, settings: Any, dataset: Dataset) -> dict[str, float] | None:
    """The task's per-user time estimates (PredictsTime), or None when it makes none."""
    predict = getattr(task, "user_seconds", None)
    return None if predict is None else dict(predict(settings, dataset))


class AddsSetColumns(Protocol):
    """The optional part of a Task whose results depend on the whole merged set, not one user alone (a
    correction for multiple comparisons, a rank among users). shardrun.results.merge calls it once the
    shards' rows are combined, before anything is written or drawn; never with settings None (a merge
    without run.json adds nothing). Both hooks must be deterministic: the same rows give the same
    answer whatever K, the shards' order or the resume history (a tie or a missing value included),
    so that merging again gives the same set."""

    def set_columns(self, frame: pd.DataFrame, settings: Any) -> Mapping[str, pd.Series]:
        """Columns of the whole set, each a Series aligned to the frame's index. Each must be one of
        result_columns (where it stands in the schema, and validation knows it); the shards' rows leave
        it out, and the merge fills it in. A name outside result_columns is left out with a warning
        (merge_report.json's dropped_columns). Validate the values in check_rows."""

    def set_report(self, frame: pd.DataFrame, settings: Any) -> Mapping[str, Any]:
        """JSON-able facts about the set (the frame with the set columns in), written to
        merge_report.json under "task"."""


def task_set_columns(task: Any, frame: pd.DataFrame, settings: Any | None) -> dict[str, pd.Series]:
    """The task's columns of the whole set (AddsSetColumns.set_columns), or none."""
    add = getattr(task, "set_columns", None)
    return {} if add is None or settings is None else dict(add(frame, settings))


def task_set_report(task: Any, frame: pd.DataFrame, settings: Any | None) -> dict[str, Any]:
    """The task's facts about the whole set for merge_report.json (AddsSetColumns.set_report), or none."""
    report = getattr(task, "set_report", None)
    return {} if report is None or settings is None else dict(report(frame, settings))


def task_result_seconds(task: Any, frame: pd.DataFrame, settings: Any | None) -> Mapping[str, float] | None:
    """The task's per-user time estimates from merged rows (PredictsTime.result_seconds), or None when
    it makes none or the merge found no settings (no run.json)."""
    predict = getattr(task, "result_seconds", None)
    return None if predict is None or settings is None else predict(frame, settings)


class SummaryPanel(NamedTuple):
    """One panel a task adds to summary.png (see DrawsSummary)."""

    draw: Callable[[Any], None]  # draws the panel on the matplotlib Axes it is given
    width: float = 1.0  # relative to the other panels of its row, which share the picture's width
    row: int = 0  # the picture's row it is drawn in, from the top; rows share the picture's height


class DrawsSummary(Protocol):
    """The optional part of a Task that draws a merge's summary.png, the picture of its results
    (shardrun.results.summary uses it); without it the picture holds the core's two panels: the rows by
    status, and the skipped and failed rows by their reason."""

    def summary_panels(self, frame: pd.DataFrame, settings: Any | None) -> Sequence[SummaryPanel]:
        """Panels of the merged result frame: summary.png holds them only (the run's timeline is the
        core's run.png). `settings` is None when the merge found no run.json. Import matplotlib
        inside the drawing functions only, so that loading the task stays cheap."""


class RunsOnJvm(Protocol):
    """The optional JVM part of a Task. Every hook has a default; a task defines those it needs.

    The core starts the JVM once per shard process, after every check and before the first analyse.
    """

    def jvm_classpath(self, settings: Any, configured: str | None) -> list[str]:
        """The classpath entries (jars, dirs) the JVM starts with. `configured` is the config's
        jvm.classpath (a core key), or None. Raise EnvironmentProblem naming the fix when a needed jar
        is missing: it is called before anything is written, so the shard refuses to start (exit 2).
        Default (no hook): jvm.classpath split on os.pathsep, each entry required to exist; none = []."""

    def jvm_options(self, settings: Any) -> list[str]:
        """Extra JVM flags the analysis needs (never -Xmx/-Xms: the heap is jvm.xmx's), placed before
        the config's jvm.options so that a user's own flag wins. Default: none."""

    def is_heap_exhaustion(self, exc: BaseException) -> bool:
        """True for the task's own forms of heap exhaustion (a library that wraps OutOfMemoryError in
        another exception). The core recognises java.lang.OutOfMemoryError itself. Default: none."""

    def heap_advice(self, settings: Any) -> str:
        """How to make the analysis need less heap (a lower-case phrase such as "lower the window"),
        said wherever the core advises raising jvm.xmx. Default: DEFAULT_HEAP_ADVICE."""

    def jvm_provenance(self, classpath: Sequence[str]) -> Mapping[str, Any]:
        """Facts about the classpath the JVM was started with (a jar's sha256, say), recorded in each
        shard's status.json once the JVM runs. Keys must not clash with the core's status keys
        (those are kept). Default: none."""


DEFAULT_HEAP_ADVICE = "make each user's analysis need less heap (see the task's documentation)"


def heap_advice(task: Any, settings: Any) -> str:
    """The task's advice for a user or run that does not fit in the heap (RunsOnJvm.heap_advice)."""
    advise = getattr(task, "heap_advice", None)
    return str(advise(settings)) if advise is not None else DEFAULT_HEAP_ADVICE


def _required_members() -> tuple[str, ...]:
    """The members every Task has (the Protocol's attribute and methods, in the order written above)."""
    methods = [name for name, value in vars(Task).items() if callable(value) and not name.startswith("_")]
    return tuple(dict.fromkeys([*Task.__annotations__, *methods]))


REQUIRED_MEMBERS = _required_members()
# What every command asks of a task (reading its config keys, the result set's keys and columns): an
# object without one of these is not a task at all. A partial task (merge and validate only, such as
# the tests' double) has these and may lack the rest, which only a shard calls.
ESSENTIAL_MEMBERS = ("key_columns", "parse_settings", "result_columns")


def task_origin(dotted: str) -> str | None:
    """The dir on the Python path that the task's module was imported from (the dir that holds its top
    package), recorded in run.json so that later commands on the run find a plug-in task again; None if
    the module has no file."""
    module_name = dotted.partition(":")[0]
    module = sys.modules.get(module_name)
    origin = getattr(module, "__file__", None)
    if not origin:
        return None
    path = Path(origin).resolve()
    if path.name == "__init__.py":
        path = path.parent
    return str(path.parents[module_name.count(".")])


def _import_task_module(module_name: str, origin: str | None) -> ModuleType:
    """The module, from the Python path, else from `origin` (where the run imported it from)."""
    try:
        return importlib.import_module(module_name)
    except ImportError as exc:
        first_error = exc
    if origin and Path(origin).is_dir() and origin not in sys.path:
        sys.path.append(origin)  # after the user's own path: a module found there still wins
        try:
            return importlib.import_module(module_name)
        except ImportError:
            pass
    where = (f" The run imported it from {origin}{'' if Path(origin).is_dir() else ', which is gone'}." if origin
             else "")
    raise TaskNotImportable(
        f"config key 'task' names module {module_name!r}, which cannot be imported ({first_error}).{where} Put the dir"
        f" that holds it on the Python path, for example: PYTHONPATH={origin or 'DIR'} <the same command>"
        " (docs/TASKS.md).")


def load_task(dotted: str, origin: str | None = None) -> Task:
    """The object `package.module:object` names (its module found on the Python path, else in `origin`:
    task_origin as run.json recorded it); ConfigError, listing every Task member it lacks, when it lacks
    one of ESSENTIAL_MEMBERS or has one that cannot be called."""
    module_name, _, attr = dotted.partition(":")
    if not module_name or not attr:
        raise ConfigError(f"config key 'task' must look like 'package.module:object', got {dotted!r}.")
    module = _import_task_module(module_name, origin)
    try:
        task = getattr(module, attr)
    except AttributeError:
        raise ConfigError(f"config key 'task': module {module_name!r} has no object {attr!r}.") from None
    missing = [name for name in REQUIRED_MEMBERS if not hasattr(task, name)]
    not_callable = [name for name in REQUIRED_MEMBERS if name not in missing and name in vars(Task)
                    and not callable(getattr(task, name))]
    if any(name in missing for name in ESSENTIAL_MEMBERS) or not_callable:
        problems = []
        if missing:
            problems.append(f"it lacks {', '.join(missing)}")
        if not_callable:
            problems.append(f"{', '.join(not_callable)} cannot be called")
        raise ConfigError(
            f"config key 'task' names {dotted!r}, a {type(task).__name__}, which is not a task: {'; '.join(problems)}"
            " (the members of shardrun.task.Task). Name an object that implements the protocol (docs/TASKS.md),"
            " such as the default shardrun.infodynamics:task, or remove the key."
        )
    return task
