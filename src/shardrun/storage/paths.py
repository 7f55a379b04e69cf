"""The one place that names every file of a run and of a shard.

User ids are untrusted text from the data: they never become part of a path.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from shardrun.errors import UsageError
from shardrun.partition import ShardSpec
from shardrun.storage.atomic import is_scratch_name

SHARD_JSON = "shard.json"
BATCH_PREFIX = "b-"
BATCH_SUFFIX = ".jsonl"


class _Named:
    """The path `name` in the dir of the paths object it is read from."""

    def __init__(self, name: str):
        self.name = name

    def __get__(self, paths: Any, owner: type) -> Path:
        return paths.dir / self.name


def batch_number(path: Path) -> int | None:
    """The number in a batch file's name, or None for a name that is not a batch's."""
    digits = path.name[len(BATCH_PREFIX):-len(BATCH_SUFFIX)]
    if not (path.name.startswith(BATCH_PREFIX) and path.name.endswith(BATCH_SUFFIX) and digits.isdigit()):
        return None
    return int(digits)


@dataclass(frozen=True)
class ShardPaths:
    dir: Path

    status = _Named("status.json")
    identity = _Named(SHARD_JSON)  # which run, shard, config and data this dir belongs to (written once)
    results = _Named("results")
    errors = _Named("errors.jsonl")
    lock = _Named("lock")
    lease = _Named("lease")  # stands in for the OS lock where there is none (storage/lease.py)
    log = _Named("shard.log")
    tmp = _Named(".tmp")  # scratch space on the same filesystem, so a rename into results/ is atomic
    quarantine = _Named("results/quarantine")  # result files a resume could not trust, moved aside byte for byte

    @property
    def hs_err_pattern(self) -> str:
        """-XX:ErrorFile target: where a crashing JVM writes its report (%p = its pid)."""
        return str(self.dir.resolve() / "hs_err_pid%p.log")

    def hs_err_files(self) -> list[Path]:
        return sorted(self.dir.glob("hs_err_pid*.log"))

    def batch(self, number: int) -> Path:
        """The number-th batch file of committed users (storage/commits.py)."""
        return self.results / f"{BATCH_PREFIX}{number:06d}{BATCH_SUFFIX}"

    def batch_files(self) -> list[Path]:
        """The batch files in commit order."""
        found = {p: n for p in self.results.glob(f"{BATCH_PREFIX}*{BATCH_SUFFIX}") if (n := batch_number(p)) is not None}
        return sorted(found, key=found.__getitem__)

    def make(self) -> None:
        for path in (self.dir, self.results, self.tmp):
            path.mkdir(parents=True, exist_ok=True)


@dataclass(frozen=True)
class RunPaths:
    dir: Path

    run_json = _Named("run.json")
    launcher_json = _Named("launcher.json")  # what only the launcher knows: waiting and suspended shards, deaths
    launcher_lock = _Named(".launcher.lock")  # held by the one launch_shards running this run (storage/exclusive.py)
    merged = _Named("merged")
    slurm_json = _Named("slurm.json")  # the run's SLURM submissions, for resubmission and the monitor
    slurm_scripts = _Named("slurm")  # the sbatch scripts as submitted, kept for the user to read and rerun

    def foreign_entries(self) -> list[str]:
        """Names in the dir besides the launcher's own files and scratch: what makes it not a new run."""
        if not self.dir.is_dir():
            return []
        return sorted(p.name for p in self.dir.iterdir()
                      if p.name not in (self.launcher_json.name, self.launcher_lock.name) and not is_scratch_name(p.name))

    def shard(self, spec: ShardSpec) -> ShardPaths:
        return ShardPaths(self.dir / spec.dirname)

    def shard_dirs(self) -> list[Path]:
        return sorted(p for p in self.dir.glob("shard-*-of-*") if (p / SHARD_JSON).is_file())

    @staticmethod
    def create(root: Path, label: str, now: datetime) -> RunPaths:
        """A new, empty run dir `<label>_<YYYYmmdd_HHMMSS>` under root (suffixed if that second is taken)."""
        root.mkdir(parents=True, exist_ok=True)
        stem = f"{label}_{now:%Y%m%d_%H%M%S}"
        for attempt in range(1, 1000):
            candidate = root / (stem if attempt == 1 else f"{stem}_{attempt}")
            try:
                candidate.mkdir()
            except FileExistsError:
                continue
            return RunPaths(candidate)
        raise FileExistsError(f"could not create a new run dir named {stem}* under {root}")


def not_a_dir(path: Path) -> str | None:
    """Why `path` cannot be the dir a command was given, or None when it is a dir."""
    if not path.exists():
        return "does not exist"
    if not path.is_dir():
        return "is a file, not a dir"
    return None


def refuse_a_file_for_a_dir(path: Path, flag: str) -> None:
    """Refuse a file given as a dir at once, before a failed write reads as a full disk."""
    if path.exists() and not path.is_dir():
        raise UsageError(f"{flag} {path} is a file, not a dir; pass the path of a run dir (a new one, or one to"
                         " continue).")


@dataclass(frozen=True)
class MergedPaths:
    dir: Path

    SUMMARY_PNG = "summary.png"  # the results in pictures (the task's panels)
    RUN_PNG = "run.png"  # the run in a picture (each shard's timeline)

    csv = _Named("results.csv")
    parquet = _Named("results.parquet")
    report = _Named("merge_report.json")
    validation = _Named("validation.json")
    summary_png = _Named(SUMMARY_PNG)
    run_png = _Named(RUN_PNG)
    trace = _Named("trace.tsv")  # one row per attempt at a user (results/trace.py)

    # staging dirs `.<name>.merging-<pid>-<random>` and `.<name>.old-...` are dotted: never taken for a set
    def staging_prefix(self, kind: str) -> str:
        """`.<name>.merging-` (kind "merging") or `.<name>.old-` (kind "old")."""
        return f".{self.dir.name}.{kind}-"

    @property
    def merge_lock(self) -> Path:
        """`.<name>.merge-lock` beside the set: held by the one merge writing it (storage/exclusive.py)."""
        return self.dir.parent / f".{self.dir.name}.merge-lock"

    def leftovers(self, kind: str) -> list[Path]:
        """Staging dirs of this result set left in its parent (by a merge that crashed or still runs)."""
        return sorted(self.dir.parent.glob(self.staging_prefix(kind) + "*"))

    @staticmethod
    def staging_pid(path: Path) -> int | None:
        """The pid of the merge that made a staging dir, from its name; None if the name has none."""
        try:
            return int(path.name.rsplit("-", 2)[-2])
        except (IndexError, ValueError):
            return None


def shard_log_path(log_dir: Path, spec: ShardSpec) -> Path:
    """`analysis/shard<i>.log`, the per-shard log of the original workflow (written by the launcher)."""
    return log_dir / f"shard{spec.index}.log"
