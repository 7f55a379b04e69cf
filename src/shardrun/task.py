"""The `Task` base class, the core's only view of an analysis, and finding a task by name. A task
defines `load` and `analyse`; every other hook has a default here (docs/TASKS.md)."""

from __future__ import annotations

import dataclasses
import importlib
import importlib.metadata
import os
import sys
import types
import typing
from abc import ABC, abstractmethod
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import pandas as pd

from shardrun.errors import ConfigError, EnvironmentProblem, TaskNotImportable
from shardrun.section import Section

# Columns the core adds to every row; the rest come from the task.
BOOKKEEPING_COLUMNS = ("shard", "seconds", "config_hash")
ENTRY_POINT_GROUP = "shardrun.tasks"  # an installed package's tasks, by name: `task: <name>`
DEFAULT_HEAP_ADVICE = "make each user's analysis need less heap (see the task's documentation)"


@dataclass(frozen=True)
class Dataset:
    """What `Task.load` returns: sorted user ids (the same in every process), the input's fingerprint
    (checked on resume), and each user's data for `analyse`."""

    user_ids: Sequence[str]
    fingerprint: str
    rows: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class UserIndex:
    """Who is in the input and how much; `observations[i]`: user_ids[i]'s rows (None: not counted)."""

    user_ids: tuple[str, ...]
    fingerprint: str  # the same as the Dataset's: recorded in run.json and checked on resume
    observations: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        if self.observations is not None and len(self.observations) != len(self.user_ids):
            raise ValueError(f"{len(self.observations)} observation counts for {len(self.user_ids)} users")

    def costs(self) -> list[int]:
        """Each user's cost for `partition: balanced`: its observations, or 1 each when not counted."""
        return list(self.observations) if self.observations is not None else [1] * len(self.user_ids)


class SummaryPanel(NamedTuple):
    """One panel a task adds to summary.png (Task.summary_panels)."""

    draw: Callable[[Any], None]  # draws the panel on the matplotlib Axes it is given
    width: float = 1.0  # relative to the other panels of its row, which share the picture's width
    row: int = 0  # the picture's row it is drawn in, from the top; rows share the picture's height


class Task(ABC):
    """An analysis run per user: define `load` and `analyse`, declare `columns`; the rest is optional."""

    key_columns: tuple[str, ...] = ("user_id",)  # one row per key; the first names the user
    columns: tuple[str, ...] = ()  # the task's value columns, after the key columns, status and reason
    Settings: type | None = None  # a dataclass of the task's config keys, read by parse_settings

    @abstractmethod
    def load(self, settings: Any, users: Collection[str] | None = None) -> Any:
        """The input as a Dataset (no JVM here); `users`: only those users' rows are needed (may be ignored)."""

    @abstractmethod
    def analyse(self, dataset: Any, user_id: str, settings: Any) -> list[Mapping[str, Any]]:
        """One user's rows (key columns, status, reason, `columns`); the JVM is running."""

    def parse_settings(self, section: Section) -> Any:
        """Each `Settings` field from the config's top-level key of its name; None without Settings."""
        if self.Settings is None:
            return None
        hints, values = typing.get_type_hints(self.Settings), {}
        for spec in dataclasses.fields(self.Settings):
            hint = hints[spec.name]
            kinds = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
            kind = next(kind for kind in kinds if kind is not type(None))
            kind = typing.get_origin(kind) or kind  # list[str] is read as a list
            read: Any = {Path: str, float: (int, float), tuple: list}.get(kind, kind)
            default = ({"default": spec.default} if spec.default is not dataclasses.MISSING else
                       {"default": spec.default_factory()} if spec.default_factory is not dataclasses.MISSING else {})
            value = section.get(spec.name, read, nullable=type(None) in kinds, **default)
            values[spec.name] = value if value is None or kind not in (Path, float, tuple) else kind(value)
        return self.Settings(**values)

    def result_columns(self, settings: Any) -> list[str]:
        """The task's columns of the result set, in order: the key columns, status, reason, `columns`."""
        return [*self.key_columns, "status", "reason", *self.columns]

    def failed_rows(self, settings: Any, user_id: str, reason: str) -> list[Mapping[str, Any]]:
        """The rows recorded for a user whose analysis raised: one, its values empty."""
        empty = dict.fromkeys(self.result_columns(settings))
        return [{**empty, self.key_columns[0]: user_id, "status": "failed", "reason": reason}]

    def preflight(self, settings: Any, heap_bytes: int) -> list[str]:
        """Problems that make part of the configured work impossible with this heap, before any user."""
        return []

    def check_rows(self, frame: pd.DataFrame, settings: Any) -> list[str]:
        """Value problems of a merged result set, one line each (validate_outputs)."""
        return []

    def describe_versions(self) -> Mapping[str, str]:
        """Versions recorded in run.json (libraries, jars); no JVM here."""
        return {}

    def run_label(self, settings: Any) -> str | None:
        """A part of new run dir names: `<config stem>_full_<label>_<time>`."""
        return None

    def with_threads(self, settings: Any, threads: int) -> Any:
        """The settings to analyse with when a shard may use `threads` threads (no number may change)."""
        return settings

    def user_index(self, settings: Any) -> UserIndex | None:
        """A cheap pass over the input, so that each shard loads only its users; None: load it whole."""
        return None

    def user_heap_needs(self, settings: Any, dataset: Any) -> Mapping[str, int] | None:
        """Bytes of Java heap each user of `dataset` needs (fast, no JVM); None: jvm.xmx auto is refused."""
        return None

    def index_heap_needs(self, settings: Any, index: UserIndex) -> Mapping[str, int] | None:
        """Upper bounds of user_heap_needs from the index alone, or None (then auto loads the whole input)."""
        return None

    def user_seconds(self, settings: Any, dataset: Any) -> Mapping[str, float] | None:
        """Each user's estimated seconds, erring long (SLURM --time checks them); None: no estimate."""
        return None

    def result_seconds(self, frame: pd.DataFrame, settings: Any) -> Mapping[str, float] | None:
        """The same estimate from merged rows, by user id (run.png's slow users); None: no estimate."""
        return None

    def summary_panels(self, frame: pd.DataFrame, settings: Any | None) -> Sequence[SummaryPanel]:
        """The task's panels of summary.png; none: the core's rows by status and reasons."""
        return []

    def set_columns(self, frame: pd.DataFrame, settings: Any) -> Mapping[str, pd.Series]:
        """Columns of the whole merged set (each one of result_columns), deterministic whatever K."""
        return {}

    def set_report(self, frame: pd.DataFrame, settings: Any) -> Mapping[str, Any]:
        """JSON-able facts about the whole merged set, merge_report.json's "task"."""
        return {}

    def jvm_classpath(self, settings: Any, configured: str | None) -> list[str]:
        """The JVM's classpath, given jvm.classpath (by default its entries, split on os.pathsep, each required
        to exist); EnvironmentProblem naming the fix when a jar is missing."""
        paths = []
        for entry in (entry for entry in (configured or "").split(os.pathsep) if entry):
            path = Path(entry).expanduser()
            if not path.exists():
                raise EnvironmentProblem(
                    f"jvm.classpath names {path}, which does not exist; point jvm.classpath at the jars or dirs"
                    " the task needs (separated by the OS's path separator), or remove the key.")
            paths.append(str(path.resolve()))
        return paths

    def jvm_options(self, settings: Any) -> list[str]:
        """Extra JVM flags (never -Xmx/-Xms), before the config's jvm.options."""
        return []

    def is_heap_exhaustion(self, exc: BaseException) -> bool:
        """The task's own forms of heap exhaustion (the core knows java.lang.OutOfMemoryError)."""
        return False

    def heap_advice(self, settings: Any) -> str:
        """How to need less heap, a lower-case phrase said wherever the core advises raising jvm.xmx."""
        return DEFAULT_HEAP_ADVICE

    def jvm_provenance(self, classpath: Sequence[str]) -> Mapping[str, Any]:
        """Facts about the JVM's classpath (a jar's sha256), recorded in status.json."""
        return {}


def read_user_index(task: Task, settings: Any) -> tuple[UserIndex, Any | None]:
    """The user index, and the whole Dataset when the index came from a full load (keep it)."""
    index = task.user_index(settings)
    if index is not None:
        return index, None
    dataset = task.load(settings)
    return UserIndex(tuple(dataset.user_ids), dataset.fingerprint), dataset


def load_users(task: Task, settings: Any, users: Collection[str], index: UserIndex) -> Any:
    """The Dataset of `users` (a shard's users to do): the whole input when they are every user."""
    return task.load(settings) if len(users) == len(index.user_ids) else task.load(settings, users=users)


def task_origin(name: str) -> str | None:
    """The dir a `module:object` task was imported from, for run.json; None for an entry point."""
    module_name, colon, _ = name.partition(":")
    origin = getattr(sys.modules.get(module_name), "__file__", None) if colon else None
    if not origin:
        return None
    path = Path(origin).resolve()
    if path.name == "__init__.py":
        path = path.parent
    return str(path.parents[module_name.count(".")])


def _import_task_module(module_name: str, origin: str | None) -> types.ModuleType:
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


def _entry_point(name: str) -> Any:
    """The object an installed package declares as task `name` (entry-point group shardrun.tasks)."""
    declared = importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)
    if name not in declared.names:
        known = ", ".join(sorted(declared.names)) or "none"
        raise ConfigError(
            f"config key 'task' must look like 'package.module:object' or name an installed task: {name!r} has no"
            f" ':', and no installed package declares it in the entry-point group {ENTRY_POINT_GROUP!r} (declared:"
            f" {known}). Name the object, such as {name}:task with its dir on PYTHONPATH, or install the package"
            " that declares the task (docs/TASKS.md).")
    return declared[name].load()


def load_task(name: str, origin: str | None = None) -> Task:
    """The Task `package.module:object` (else from `origin`) or entry point `name` names, instantiated."""
    module_name, colon, attr = name.partition(":")
    if not colon:
        task = _entry_point(name)
    elif not module_name or not attr:
        raise ConfigError(f"config key 'task' must look like 'package.module:object' or a task's name, got {name!r}.")
    else:
        task = getattr(_import_task_module(module_name, origin), attr, None)
        if task is None:
            raise ConfigError(f"config key 'task': module {module_name!r} has no object {attr!r}.")
    if isinstance(task, type) and issubclass(task, Task):
        try:
            task = task()
        except TypeError as exc:
            raise ConfigError(f"config key 'task' names {name!r}, which cannot be made a task: {exc}.") from None
    if not isinstance(task, Task):
        raise ConfigError(
            f"config key 'task' names {name!r}, a {type(task).__name__}, which is not a shardrun.task.Task. Make its"
            " class subclass shardrun.task.Task (it then needs only load and analyse; the other hooks keep their"
            " names, docs/TASKS.md), or name a task such as the default shardrun.infodynamics:task.")
    return task
