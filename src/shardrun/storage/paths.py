"""The one place that names every file of a run and of a shard, and what a run and a shard dir are.

User ids are untrusted text from the data: they never become part of a path. shard.json (what a shard
dir is: shard, config hash, data, mode) is written once and checked on every resume; its readers and
run.json's turn a damaged file into a refusal with its fix.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, TypedDict

from shardrun.errors import ResumeMismatch, UsageError
from shardrun.partition import ShardSpec
from shardrun.storage.atomic import create_json_once, is_scratch_name, read_json

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
    lease = _Named("lease")  # stands in for the OS lock where there is none (storage/lock.py)
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
        found = {p: n for p in self.results.glob(f"{BATCH_PREFIX}*{BATCH_SUFFIX}")
                 if (n := batch_number(p)) is not None}
        return sorted(found, key=found.__getitem__)

    def make(self) -> None:
        for path in (self.dir, self.results, self.tmp):
            path.mkdir(parents=True, exist_ok=True)


@dataclass(frozen=True)
class RunPaths:
    dir: Path

    run_json = _Named("run.json")
    launcher_json = _Named("launcher.json")  # what only the launcher knows: waiting and suspended shards, deaths
    launcher_lock = _Named(".launcher.lock")  # held by the one launch_shards running this run (storage/lock.py)
    merged = _Named("merged")
    slurm_json = _Named("slurm.json")  # the run's SLURM submissions, for resubmission and the monitor
    slurm_scripts = _Named("slurm")  # the sbatch scripts as submitted, kept for the user to read and rerun

    def foreign_entries(self) -> list[str]:
        """Names in the dir besides the launcher's own files and scratch: what makes it not a new run."""
        if not self.dir.is_dir():
            return []
        own = (self.launcher_json.name, self.launcher_lock.name)
        return sorted(p.name for p in self.dir.iterdir() if p.name not in own and not is_scratch_name(p.name))

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
    trace = _Named("trace.tsv")  # one row per attempt at a user (results/timeline.py)

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


def shard_log_path(log_dir: Path, spec: ShardSpec) -> Path:
    """`analysis/shard<i>.log`, the per-shard log of the original workflow (written by the launcher)."""
    return log_dir / f"shard{spec.index}.log"


# --- shard.json and run.json ---


class RunJson(TypedDict):
    """run.json (written by shard/dirs.py run_document)."""

    config: Annotated[dict[str, Any], "the config as read (a snapshot; `jvm.xmx: auto` kept as written)"]
    config_path: Annotated[str | None, "the config file"]
    config_hash: Annotated[str, "the hash of the task and its analysis settings (not `jvm`, not `output`)"]
    task: Annotated[str, "the task as `module:object`"]
    task_origin: Annotated[str | None, "the dir on the import path that held its module ([TASKS.md](TASKS.md))"]
    shards: Annotated[int, "K"]
    data_fingerprint: Annotated[str, "the input's fingerprint (the default task: its sha256)"]
    users_total: Annotated[int, "the users in the input"]
    partition: Annotated[str, "`modulo` or `balanced` ([GUIDE.md](GUIDE.md#the-cores-keys))"]
    pilot: Annotated[int | None, "N for a `--pilot N` run, null for a full one"]
    versions: Annotated[dict[str, str], "shardrun's, Python's and the task's own (Task.versions)"]
    created_at: Annotated[str, "when the first shard wrote it"]
    jvm: Annotated[list[str], "the resolved JVM flags (`-Xms128m`, `-Xmx128m`)"]


class ShardJson(TypedDict):
    """shard.json (written by shard/run.py)."""

    shard: Annotated[str, "`\"i/K\"`"]
    config_hash: Annotated[str, "as in run.json"]
    data_fingerprint: Annotated[str, "as in run.json"]
    pilot: Annotated[int | None, "as in run.json"]
    task: Annotated[str, "as in run.json"]
    task_origin: Annotated[str | None, "as in run.json"]
    users_planned: Annotated[list[str], "the shard's users, in order"]



def read_shard_identity(paths: ShardPaths) -> dict[str, Any]:
    """shard.json of a shard dir; a damaged one (not a JSON object with its shard) is a ResumeMismatch."""
    document = _read_object(paths.identity)
    if document is None or not isinstance(document.get("shard"), str):
        run = paths.dir.parent
        raise ResumeMismatch(
            f"cannot resume {paths.dir}: its shard.json is damaged (not the JSON object shardrun writes"
            " once at the shard's start), so it cannot be told which run it belongs to. Its committed results"
            f" are not trusted without it: move the dir aside (e.g. rename it to {paths.dir.name}.damaged) and"
            f" run the shard again with --resume {run} --shard i/K (or `launch_shards --out {run}`), which"
            " starts that shard afresh."
        )
    return document


def read_run_document(path: Path) -> dict[str, Any]:
    """run.json of a run dir; a damaged one is a ResumeMismatch naming the fix."""
    document = _read_object(path)
    if document is None:
        raise ResumeMismatch(
            f"{path} is damaged (not the JSON object shardrun writes once when a run starts), so it cannot be"
            f" told which run {path.parent} is. Delete it and run the same command again (the next shard writes"
            " it anew; each shard's shard.json still guards its own dir), or start the run in a new --out dir."
        )
    return document


def recorded_shard_count(path: Path) -> tuple[Path, int] | None:
    """(run dir, K) from the run.json of `path` or its run; None without run.json, ResumeMismatch if K is bad."""
    run = RunPaths(path.parent if ShardPaths(path).identity.is_file() else path)
    if not run.run_json.is_file():
        return None
    shards = read_run_document(run.run_json).get("shards")
    if isinstance(shards, bool) or not isinstance(shards, int) or shards < 1:
        raise ResumeMismatch(
            f"{run.run_json} does not say how many shards the run has (its \"shards\" is {shards!r}), so --shard auto"
            f" cannot tell K. Pass --shard i/K explicitly, or start the run in a new --out dir."
        )
    return run.dir, shards


def run_difference(existing: Mapping[str, Any], shards: int, config_hash: str | None = None,
                   data_fingerprint: str | None = None) -> tuple[str, str] | None:
    """How run.json `existing` differs from this run, as (key, words), or None: one K, config and input."""
    if existing.get("shards") != shards:
        return "shards", (f"it was started with {existing.get('shards')} shards (K={existing.get('shards')}, its"
                          f" run.json), and this is K={shards}: a run dir holds one K")
    if config_hash is not None and existing.get("config_hash") != config_hash:
        return "config_hash", (f"it holds a run of another config: its config hash is {existing.get('config_hash')!r}"
                               f" (config {existing.get('config_path')}), this config's is {config_hash!r}")
    if data_fingerprint is not None and existing.get("data_fingerprint") != data_fingerprint:
        return "data_fingerprint", (f"it holds a run of other input data: its data fingerprint is"
                                    f" {existing.get('data_fingerprint')!r}, the data now is {data_fingerprint!r}"
                                    " (the input file changed since the run started)")
    return None


def _read_object(path: Path) -> dict[str, Any] | None:
    """A JSON object from `path`, or None if the file is not one (truncated, overwritten, not UTF-8)."""
    try:
        document = read_json(path)
    except ValueError:  # JSONDecodeError and UnicodeDecodeError
        return None
    return document if isinstance(document, dict) else None


def ensure_identity(paths: ShardPaths, identity: Mapping[str, Any], resuming: bool,
                    guard: Callable[[Callable[[], bool]], bool] = lambda write: write()) -> dict[str, Any]:
    """Write shard.json for a new shard dir, or check that a resumed one belongs to this run.

    Decided once before `guard` writes, so a retried write is never taken for an earlier run.
    """
    existing = read_shard_identity(paths) if paths.identity.is_file() else None
    if existing is None:
        if resuming:
            raise ResumeMismatch(
                f"{paths.dir} is not a shard dir (no shard.json): pass a shard dir or a run dir made by"
                " run_production or launch_shards to --resume."
            )
        guard(lambda: create_json_once(paths.identity, dict(identity), sole_writer=True))  # under the shard lock
        return dict(identity)
    if not resuming:
        raise ResumeMismatch(
            f"{paths.dir} already holds a shard of an earlier run; continue it with --resume {paths.dir.parent}"
            " or choose a new --out."
        )
    for key, what, fix in (
        ("shard", "shard", "pass the same --shard (or none) when resuming"),
        ("config_hash", "config hash", "resume with the config that started the run (see run.json)"),
        ("data_fingerprint", "input data",
         "the input file changed since the run started; restore it or start a new run"),
        ("pilot", "--pilot size", "resume with the same --full / --pilot N as the run started with"),
    ):
        if existing.get(key) != identity.get(key):
            def shown(value: Any) -> str:
                return "--full" if key == "pilot" and value is None else repr(value)  # noqa: B023 (used in this turn)

            raise ResumeMismatch(
                f"cannot resume {paths.dir}: its {what} is {shown(existing.get(key))} but this run has"
                f" {shown(identity.get(key))}; {fix}."
            )
    return existing
