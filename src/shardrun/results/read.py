"""What merge and validate read from disk: shard dirs, run.json provenance, the task, result files.

An unreadable shard dir raises MergeError with the fix; an unreadable status.json is only reported.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa

from shardrun.config import RunConfig, parse_config
from shardrun.errors import MergeError, ShardrunError, TaskNotImportable
from shardrun.partition import ShardSpec
from shardrun.results.columnar import USER, read_columnar
from shardrun.storage.atomic import read_json
from shardrun.storage.commits import ATTEMPT, read_errors, refuse_older_results
from shardrun.storage.paths import RunPaths, ShardPaths
from shardrun.task import Task, load_task

log = logging.getLogger(__name__)

# Columns the core itself reads (besides the task's key columns); kept as text when a CSV is read
# back, so that an id such as "007" or "NA" is not turned into a number or a missing value.
STATUS_COLUMNS = ("status", "reason")
# what a merge keeps of an errors.jsonl line (the trace's; its traceback and stacks stay in the file)
ERROR_FIELDS = ("user_id", "time", "error_type", "java_class", ATTEMPT)


@dataclass(frozen=True)
class ShardInput:
    """One shard dir as merge sees it: its identity, its state and its committed rows as one Arrow table
    (columnar.read_columnar)."""

    dir: Path
    identity: Mapping[str, Any]
    spec: ShardSpec
    state: str | None
    users: tuple[str, ...]  # the committed users, in commit order
    table: pa.Table | None = None  # the rows with columnar.USER; None when there are none
    ended_at: Mapping[str, Any] = field(default_factory=dict)  # user id -> when its analysis ended (the timeline)
    # batch files that fail their check (edited after the commit or cut short, from another config's run,
    # a copy): their rows are left out of the merge and each is a problem of the result set
    untrusted: Sequence[Mapping[str, Any]] = ()
    # every committed record's attempt, replaced ones included (columnar.record_attempts' columns)
    attempts: pa.Table | None = None
    errors: Sequence[Mapping[str, Any]] = ()  # errors.jsonl's lines, what the trace needs of them (ERROR_FIELDS)
    # status.json ({} when absent; only {"state": "unreadable"} when it cannot be read: _read_status)
    status: Mapping[str, Any] = field(default_factory=dict)
    launcher_slot: Mapping[str, Any] = field(default_factory=dict)  # its entry in the run's launcher.json, if any
    # when each of the shard's processes started (POSIX seconds, status.json's process_starts): the
    # timeline's waiting and start-up; empty for a shard run before they were recorded
    process_starts: Sequence[float] = ()

    @property
    def columns(self) -> list[str]:
        """The columns its rows carry."""
        return [] if self.table is None else [c for c in self.table.column_names if c != USER]

    @property
    def config_hash(self) -> str | None:
        return self.identity.get("config_hash")

    @property
    def data_fingerprint(self) -> str | None:
        return self.identity.get("data_fingerprint")

    @property
    def users_planned(self) -> list[str]:
        return list(self.identity.get("users_planned") or [])

    def describe(self) -> dict[str, Any]:
        return {
            "dir": str(self.dir),
            "shard": str(self.spec),
            "config_hash": self.config_hash,
            "data_fingerprint": self.data_fingerprint,
            "pilot": self.identity.get("pilot"),
            "users_planned": len(self.users_planned),
            "users_committed": len(self.users),
            "untrusted_files": len(self.untrusted),
            "state": self.state,
        }


def shard_dirs_of_run(run_dir: Path) -> list[Path]:
    """The shard dirs of a run dir (`shard-<i>-of-<K>/` holding a shard.json), sorted."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise MergeError(f"run dir {run_dir} does not exist; pass the run dir that holds the shard-<i>-of-<K>/ dirs.")
    dirs = RunPaths(run_dir).shard_dirs()
    if not dirs:
        raise MergeError(
            f"{run_dir} holds no shard dirs (shard-<i>-of-<K>/ with a shard.json); pass a run dir made by"
            " run_production or launch_shards with --run, or list shard dirs with --shards."
        )
    return dirs


def read_shard(shard_dir: Path) -> ShardInput:
    """A shard dir as merge reads it: its identity, status, errors and committed rows (columnar.read_columnar)."""
    paths = ShardPaths(Path(shard_dir))
    if not paths.dir.is_dir():
        raise MergeError(f"{paths.dir} does not exist; pass existing shard dirs (shard-<i>-of-<K>/) to --shards.")
    if not paths.identity.is_file():
        hint = (
            " It looks like a run dir: pass it with --run instead."
            if RunPaths(paths.dir).shard_dirs()
            else " Pass dirs named shard-<i>-of-<K>/ written by run_production."
        )
        raise MergeError(f"{paths.dir} is not a shard dir (it has no shard.json).{hint}")
    try:
        identity = read_json(paths.identity)
        spec = ShardSpec.parse(identity["shard"])
    except (OSError, ValueError, KeyError, TypeError, ShardrunError) as exc:
        raise MergeError(
            f"{paths.identity} is not a valid shard identity ({exc!r}); it must be the shard.json written by"
            " run_production. Leave that dir out of the merge or restore the file."
        ) from None
    refuse_older_results(paths, MergeError)
    status = _read_status(paths)
    read = read_columnar(paths, identity.get("config_hash"))
    return ShardInput(
        dir=paths.dir, identity=identity, spec=spec, state=status.get("state"), users=read.users, table=read.table,
        ended_at=read.ended_at, attempts=read.attempts, status=status,
        untrusted=[{"dir": str(paths.dir), **entry} for entry in read.untrusted],
        errors=[{key: line.get(key) for key in ERROR_FIELDS} for line in read_errors(paths)],
        launcher_slot=_launcher_slot(RunPaths(paths.dir.parent), spec),
        process_starts=_process_starts(paths, status),
    )


def _launcher_slot(run: RunPaths, spec: ShardSpec) -> Mapping[str, Any]:
    """The shard's entry in its run's launcher.json ({} without one: a run not started by launch_shards);
    only reported, so an unreadable file is no entry."""
    try:
        doc = read_json(run.launcher_json)
    except (OSError, ValueError):
        return {}
    slots = doc.get("shards") if isinstance(doc, dict) else None
    mine = [slot for slot in slots if isinstance(slot, dict) and slot.get("shard") == str(spec)] \
        if isinstance(slots, list) else []
    return mine[0] if mine else {}


def _read_status(paths: ShardPaths) -> dict[str, Any]:
    """The shard's status.json ({} when there is none); only reported, so an unreadable one must not
    stop a merge: its state is then 'unreadable'."""
    if not paths.status.is_file():
        return {}
    try:
        doc = read_json(paths.status)
        problem = None if isinstance(doc, dict) else "not a JSON object"
    except (OSError, ValueError) as exc:
        problem = str(exc)
    if problem is None:
        return doc
    log.warning("status file %s cannot be read (%s); its state is reported as 'unreadable'", paths.status, problem)
    return {"state": "unreadable"}


def _process_starts(paths: ShardPaths, status: Mapping[str, Any]) -> tuple[float, ...]:
    """When each of the shard's processes started (POSIX seconds, status.json's process_starts); only
    drawn, so starts that are not ISO 8601 text are left out (logged), never an error of the merge."""
    starts = status.get("process_starts")
    texts = [start for start in starts if isinstance(start, str)] if isinstance(starts, list) else []
    moments = pd.to_datetime(pd.Series(texts, dtype=object), errors="coerce", utc=True, format="ISO8601").dropna()
    if len(moments) < (len(starts) if isinstance(starts, list) else 0):
        log.warning("%s: some process starts are not times and are left out of run.png", paths.status)
    return tuple(((moments - pd.Timestamp(0, tz="UTC")).dt.total_seconds()).tolist())


def read_provenance(shard_dirs: Iterable[Path]) -> list[dict[str, Any]]:
    """run.json of every distinct parent run dir of the shard dirs (in the order first seen)."""
    provenance = []
    seen: set[Path] = set()
    for shard_dir in shard_dirs:
        run = RunPaths(shard_dir.parent)
        if run.dir in seen or not run.run_json.is_file():
            continue
        seen.add(run.dir)
        try:
            provenance.append({"run_dir": str(run.dir), **read_json(run.run_json)})
        except (OSError, ValueError, TypeError) as exc:
            raise MergeError(f"{run.run_json} cannot be read ({exc}); restore it or merge without its shards.") from None
    return provenance


def resolve_task(provenance: Sequence[Mapping[str, Any]], shards: Sequence[ShardInput]) -> tuple[Task, Any | None]:
    """The task and its settings, from the first run.json's config snapshot. Without any run.json
    only the task is known (from shard.json), and the columns come from the rows."""
    if provenance:
        source = provenance[0]
        try:
            config = parse_config(source["config"], task_origin=source.get("task_origin"))
        except TaskNotImportable:
            raise
        except (KeyError, ShardrunError) as exc:
            raise MergeError(
                f"the config snapshot in {source['run_dir']}/run.json cannot be parsed ({exc}); the code may have"
                " changed since the run. Merge with the shardrun version that made the run."
            ) from None
        return load_task(config.task), config.settings
    task_path = shards[0].identity.get("task")
    if not isinstance(task_path, str):
        raise MergeError(f"{shards[0].dir}/shard.json names no task and there is no run.json; cannot merge it.")
    return load_task(task_path, shards[0].identity.get("task_origin")), None


def recorded_config(report: Mapping[str, Any]) -> tuple[RunConfig | None, list[str]]:
    """For validate, the config a merge recorded: the provenance entry with the report's config hash, else the first."""
    provenance = report.get("provenance") or []
    if not provenance:
        return None, ["merge_report.json records no run.json (no config snapshot); pass --config to validate"]
    entry = next((p for p in provenance if p.get("config_hash") == report.get("config_hash")), provenance[0])
    try:
        return parse_config(entry["config"], task_origin=entry.get("task_origin")), []
    except TaskNotImportable:
        raise  # a check that cannot run here is no verdict on the results: exit 2, validation.json untouched
    except (KeyError, ShardrunError) as exc:
        return None, [f"the config snapshot in {entry.get('run_dir')}/run.json cannot be parsed ({exc}); pass --config"]


def read_result_file(path: Path, text_columns: Iterable[str]) -> pd.DataFrame:
    """Read results.parquet or results.csv as merge wrote it."""
    if path.suffix == ".parquet":
        return pd.read_parquet(path, engine="pyarrow")
    # Only empty fields are missing: default NA strings such as "NA" or "None" may be real user ids.
    return pd.read_csv(
        path,
        dtype={c: str for c in text_columns},
        keep_default_na=False,
        na_values=[""],
        encoding="utf-8",
    )
