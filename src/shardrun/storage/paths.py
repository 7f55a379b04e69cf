"""The one place that names every file of a run and of a shard.

User ids are untrusted text from the data: they never become part of a path.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from shardrun.errors import UsageError
from shardrun.partition import ShardSpec
from shardrun.storage.atomic import is_scratch_name

RUN_JSON = "run.json"
SHARD_JSON = "shard.json"
STATUS_JSON = "status.json"


BATCH_PREFIX = "b-"
BATCH_SUFFIX = ".jsonl"


def batch_number(path: Path) -> int | None:
    """The number in a batch file's name, or None for a name that is not a batch's."""
    digits = path.name[len(BATCH_PREFIX):-len(BATCH_SUFFIX)]
    if not (path.name.startswith(BATCH_PREFIX) and path.name.endswith(BATCH_SUFFIX) and digits.isdigit()):
        return None
    return int(digits)


@dataclass(frozen=True)
class ShardPaths:
    dir: Path

    @property
    def status(self) -> Path:
        return self.dir / STATUS_JSON

    @property
    def identity(self) -> Path:
        """shard.json: which run, shard, config and data this dir belongs to (written once)."""
        return self.dir / SHARD_JSON

    @property
    def results(self) -> Path:
        return self.dir / "results"

    @property
    def errors(self) -> Path:
        return self.dir / "errors.jsonl"

    @property
    def lock(self) -> Path:
        return self.dir / "lock"

    @property
    def lease(self) -> Path:
        """The lease standing in for the OS lock where there is none (storage/lock.py)."""
        return self.dir / "lease"

    @property
    def log(self) -> Path:
        return self.dir / "shard.log"

    @property
    def hs_err_pattern(self) -> str:
        """-XX:ErrorFile target: where a crashing JVM writes its report (%p = its pid)."""
        return str(self.dir.resolve() / "hs_err_pid%p.log")

    def hs_err_files(self) -> list[Path]:
        return sorted(self.dir.glob("hs_err_pid*.log"))

    @property
    def tmp(self) -> Path:
        """Scratch space on the same filesystem, so a rename into results/ is atomic."""
        return self.dir / ".tmp"

    @property
    def quarantine(self) -> Path:
        """Result files a resume could not trust, moved aside byte for byte."""
        return self.results / "quarantine"

    def batch(self, number: int) -> Path:
        """The number-th batch file of committed users (storage/batches.py)."""
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

    @property
    def run_json(self) -> Path:
        return self.dir / RUN_JSON

    @property
    def launcher_json(self) -> Path:
        """What only the launcher knows: waiting and suspended shards, restarts, deaths."""
        return self.dir / "launcher.json"

    @property
    def launcher_lock(self) -> Path:
        """Held by the one launch_shards running this run (storage/lock.py)."""
        return self.dir / ".launcher.lock"

    @property
    def merged(self) -> Path:
        return self.dir / "merged"

    def foreign_entries(self) -> list[str]:
        """Names in the dir besides the launcher's own files and scratch: what makes it not a new run."""
        if not self.dir.is_dir():
            return []
        return sorted(p.name for p in self.dir.iterdir()
                      if p.name not in (self.launcher_json.name, self.launcher_lock.name) and not is_scratch_name(p.name))

    @property
    def slurm_json(self) -> Path:
        """The run's SLURM submissions, for resubmission and the monitor."""
        return self.dir / "slurm.json"

    @property
    def slurm_scripts(self) -> Path:
        """The sbatch scripts as submitted, kept for the user to read and rerun."""
        return self.dir / "slurm"

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

    # staging dirs `.<name>.merging-<pid>-<random>` and `.<name>.old-...` are dotted: never taken for a set
    def staging_prefix(self, kind: str) -> str:
        """`.<name>.merging-` (kind "merging") or `.<name>.old-` (kind "old")."""
        return f".{self.dir.name}.{kind}-"

    @property
    def merge_lock(self) -> Path:
        """`.<name>.merge-lock` beside the set: held by the one merge writing it (storage/lock.py)."""
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

    @property
    def csv(self) -> Path:
        return self.dir / "results.csv"

    @property
    def parquet(self) -> Path:
        return self.dir / "results.parquet"

    @property
    def report(self) -> Path:
        return self.dir / "merge_report.json"

    @property
    def validation(self) -> Path:
        return self.dir / "validation.json"

    @property
    def summary_png(self) -> Path:
        return self.dir / self.SUMMARY_PNG

    @property
    def run_png(self) -> Path:
        return self.dir / self.RUN_PNG

    @property
    def trace(self) -> Path:
        """One row per attempt at a user (results/trace.py)."""
        return self.dir / "trace.tsv"


def shard_log_path(log_dir: Path, spec: ShardSpec) -> Path:
    """`analysis/shard<i>.log`, the per-shard log of the original workflow (written by the launcher)."""
    return log_dir / f"shard{spec.index}.log"
