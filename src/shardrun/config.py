"""YAML config -> frozen dataclasses, strictly validated, with a config hash. A key nobody consumed is
an error: a typo must never silently fall back to a default. Each key's meaning is in its field's
Annotated text (docs/CONFIG.md is generated from them and the reads)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import yaml

from shardrun.errors import ConfigError
from shardrun.partition import MODULO, PARTITIONS
from shardrun.section import Section, describe_value
from shardrun.units import heap_bytes, is_heap_size

AUTO = "auto"  # a value chosen at start: jvm.threads (resolve_threads), jvm.xmx and jvm.xms (heap_plan.resolve_heap)
AUTO_HEAP = AUTO


def _heap_check(value: str) -> str | None:
    return None if value == AUTO_HEAP or is_heap_size(value) else "must be a JVM heap size such as 256m or 2g, or auto"


@dataclass(frozen=True)
class JvmConfig:
    # xms and xmx stay "auto" until shardrun.heap_plan.resolve_heap chooses a size.
    xms: Annotated[str | None, "initial heap: null (the JVM's default), a size, or auto (the chosen xmx, committed at "
                               "start; with xmx auto a size is its lower bound)"]
    xmx: Annotated[str, "largest heap of a shard process (256m, 2g, ...), or auto: from the data, the largest user's "
                        "need + 25% (docs/GUIDE.md, Memory)"]
    options: Annotated[tuple[str, ...], "extra JVM flags, never the heap (shardrun adds -Xrs: SIGINT and SIGTERM are "
                                        "left to the drain)"] = ()
    classpath: Annotated[str | None, "handed to the task (Task.jvm_classpath); without that hook: jars or dirs joined "
                                     "by the OS's path separator, each must exist"] = None
    # None: auto, resolved by resolve_threads
    threads: Annotated[int | None, "threads driving the JVM in a shard; auto: the process's CPUs shared by the shards "
                                   "running at once; not hashed"] = None

    @property
    def xmx_is_auto(self) -> bool:
        return self.xmx == AUTO_HEAP

    @property
    def heap_is_resolved(self) -> bool:
        """False while xmx or xms is still "auto": no JVM may start yet."""
        return AUTO_HEAP not in (self.xmx, self.xms)

    @property
    def xmx_bytes(self) -> int:
        if self.xmx_is_auto:
            _unresolved("jvm.xmx")
        return heap_bytes(self.xmx)

    def jvm_args(self) -> list[str]:
        if not self.heap_is_resolved:
            _unresolved("jvm.xmx" if self.xmx_is_auto else "jvm.xms")
        args = [f"-Xmx{self.xmx}"]
        if self.xms:
            args.insert(0, f"-Xms{self.xms}")
        return args + list(self.options)


def _unresolved(key: str) -> None:
    # A caller skipped shardrun.heap_plan.resolve_heap: a bug, but the user needs a way out.
    raise ConfigError(
        f"{key} is 'auto', which is chosen from the data just before the JVM starts, but this step needed"
        f" a heap size before that. Set {key} to a size such as 1g in the config, and report this as a bug"
        " of shardrun."
    )


@dataclass(frozen=True)
class OutputConfig:
    root: Annotated[Path, "where new run dirs are made"]
    log_dir: Annotated[Path, "where the launcher writes shard<i>.log (null: the parent of output.root)"]


@dataclass(frozen=True)
class RunConfig:
    task: Annotated[str, "the analysis: package.module:object, or a task's name in the entry-point group "
                         "shardrun.tasks (docs/TASKS.md)"]
    jvm: JvmConfig
    output: OutputConfig
    settings: Any  # the task's own frozen dataclass
    hash: str
    source: Path | None = None
    raw: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)
    # hashed, so that every shard of a run assigns the users alike
    partition: Annotated[str, "which shard runs which user: modulo (place in the sorted ids mod K) or balanced (by "
                              "rows, largest first, to the lightest shard)"] = MODULO


def parse_jvm(section: Section) -> JvmConfig:
    xms = section.get("xms", str, default=None, check=_heap_check, nullable=True)
    xmx = section.get("xmx", str, default="1g", check=_heap_check)
    options = section.get("options", list, default=[], nullable=True) or []
    for opt in options:
        if not isinstance(opt, str) or not opt.startswith("-"):
            raise ConfigError(
                f"config key 'jvm.options' must list JVM flags starting with '-', got {describe_value(opt)}."
            )
        if opt.startswith(("-Xmx", "-Xms")):
            raise ConfigError("config key 'jvm.options' must not set the heap; use jvm.xms and jvm.xmx instead.")
    classpath = section.get("classpath", str, default=None, nullable=True)
    threads = section.get("threads", (int, str), default=AUTO, check=_threads_check)
    if AUTO_HEAP not in (xms, xmx) and xms and heap_bytes(xms) > heap_bytes(xmx):
        raise ConfigError(f"config key 'jvm.xms' ({xms}) is larger than 'jvm.xmx' ({xmx}); lower xms or raise xmx.")
    return JvmConfig(xms=xms, xmx=xmx, options=tuple(options), classpath=classpath,
                     threads=None if threads == AUTO else threads)


def _threads_check(value: int | str) -> str | None:
    positive = value == AUTO or (isinstance(value, int) and value >= 1)
    return None if positive else "must be auto or a positive number of threads"


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity: a scheduler's allocation), else the machine's."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def resolve_threads(configured: int | None, shards_sharing: int) -> int:
    """jvm.threads: as configured, or auto: this process's CPUs shared by `shards_sharing` shards."""
    return configured if configured is not None else max(1, usable_cpus() // max(1, shards_sharing))


def parse_output(section: Section) -> OutputConfig:
    root = Path(section.get("root", str, default="analysis/out"))
    log_dir = section.get("log_dir", str, default=None, nullable=True)
    return OutputConfig(root=root, log_dir=Path(log_dir) if log_dir else root.parent)


def config_hash(task: str, settings: Any, partition: str = MODULO) -> str:
    """Hash of what the numbers and the assignment depend on: task, settings, `partition`; not heap or output.
    Fields with `hashed: False` and the default partition (so older runs still resume) are left out."""
    document = {"task": task, "settings": _hashed(settings)}
    if partition != MODULO:
        document["partition"] = partition
    text = json.dumps(document, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _hashed(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _hashed(getattr(value, f.name)) for f in dataclasses.fields(value)
                if f.metadata.get("hashed", True)}
    if isinstance(value, (list, tuple)):
        return [_hashed(item) for item in value]
    return value


def parse_config(raw: Any, source: Path | None = None, task_origin: str | None = None) -> RunConfig:
    """A config from its YAML mapping; `task_origin`: a plug-in task's recorded import dir."""
    from shardrun.task import load_task  # late: the task module may be a user's plug-in

    top = Section(raw, "")
    task_path = top.get("task", str, default="shardrun.infodynamics:task")
    partition = top.choice("partition", PARTITIONS, default=MODULO)
    jvm = parse_jvm(top.section("jvm"))
    output = parse_output(top.section("output"))
    task = load_task(task_path, task_origin)
    settings = task.parse_settings(top)
    top.finish()
    return RunConfig(task=task_path, jvm=jvm, output=output, settings=settings, source=source, raw=raw,
                     hash=config_hash(task_path, settings, partition), partition=partition)


def load_config(path: str | Path) -> RunConfig:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist; pass an existing file with --config.") from None
    except IsADirectoryError:
        raise ConfigError(f"--config {path} is a directory, not a config file; pass the YAML file itself (for example"
                          f" {path / 'proposal.yaml'} if it is there).") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"config file {path} is not UTF-8 text (byte {exc.start}); save it as UTF-8.") from None
    except OSError as exc:
        raise ConfigError(f"config file {path} cannot be read ({exc.strerror}); check its permissions.") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"config file {path} is not valid YAML{where}: {getattr(exc, 'problem', exc)}. Fix the file"
                          " there (a mapping is 'key: value' lines indented with spaces, never tabs; a list is [a, b]"
                          " or '- a' lines; quote a value that holds ': ' or ' #'), or start again from"
                          " config/proposal.yaml.") from None
    if raw is None:
        raise ConfigError(f"config file {path} is empty; start from config/proposal.yaml.")
    return parse_config(raw, source=path)
