"""Everything a shard decides before its first write (what --dry-run prints).

Everything that can reject the input happens here, before any dir is created or the JVM starts.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

from shardrun.config import RunConfig
from shardrun.errors import ConfigError
from shardrun.heap_plan import HeapPlan, plan_heap, run_heap_needs, task_heap_needs
from shardrun.shard.dirs import ResolvedDirs, ShardOptions, resolve_dirs
from shardrun.shard.jvm import find_java, task_classpath, task_jvm_options
from shardrun.shard.plan import ShardPlan, assign_index, plan_shard
from shardrun.storage import commits
from shardrun.storage.commits import CommittedUser
from shardrun.storage.durability import SHARD, durable_write
from shardrun.storage.paths import ShardPaths
from shardrun.task import Dataset, Task, UserIndex, load_task, load_users, read_user_index


@dataclass(frozen=True)
class PreparedShard:
    """Everything decided before any side effect: what `--dry-run` prints and `run_shard` acts on."""

    task: Task
    index: UserIndex  # every user of the input: the assignment, run.json's fingerprint and user count
    dataset: Dataset | None  # the rows of the users to do (all rows for a task without user_index); None: none to do
    dirs: ResolvedDirs
    assignment: list[list[str]]  # every shard's users (config.partition), shard i's at index i
    plan: ShardPlan
    heap: HeapPlan  # the resolved JVM flags (jvm.xmx auto) and the users over the heap
    problems: list[str]  # the task's preflight: work that cannot run with that heap
    committed: dict[str, CommittedUser]  # the resume scan the plan was made from
    committed_listing: frozenset  # the result files that scan saw (commits.results_listing)


def prepare(config: RunConfig, options: ShardOptions) -> PreparedShard:
    """Read the config's consequences, the user index, the shard dir and this shard's rows; write nothing.

    Index first, then only the rows of the users to do, so a shard's memory is its own share.
    """
    task = load_task(config.task)
    problems = preflight(task, config)
    task_jvm_options(task, config.settings)
    find_java()
    index, whole = read_user_index(task, config.settings)
    needs, whole = run_heap_needs(task, config.settings, index, whole, config.jvm)
    dirs = resolve_dirs(config, task, options, datetime.now())
    committed = scan_committed_durably(dirs.shard) if dirs.resuming else {}
    listing = commits.results_listing(dirs.shard) if dirs.resuming else frozenset()
    assignment = assign_index(index, dirs.spec.count, config.partition)
    plan = plan_shard(assignment, dirs.spec, options.pilot, committed, options.retry_failed)
    dataset = whole if whole is not None else shard_rows(task, config, plan.todo, index)
    checked = task_heap_needs(task, config.settings, dataset, config.jvm) if dataset is not None else {}
    heap, problems = task_heap(task, config, needs if needs is not None else checked, plan.todo, checked, problems)
    return PreparedShard(task, index, dataset, dirs, assignment, plan, heap, problems, committed, listing)


def preflight(task: Task, config: RunConfig) -> list[str]:
    """Before the data are read: the task's classpath and its problems with a fixed heap ([] for auto)."""
    task_classpath(task, config.settings, config.jvm)
    return [] if config.jvm.xmx_is_auto else task.preflight(config.settings, config.jvm.xmx_bytes)


def task_heap(task: Task, config: RunConfig, needs: Mapping[str, int] | None, users: Sequence[str],
                 checked: Mapping[str, int] | None, problems: list[str]) -> tuple[HeapPlan, list[str]]:
    """The heap for `users` and the task's problems with it: preflight's for a size, else the auto heap's."""
    heap = plan_heap(config.jvm, needs, users, advice=task.heap_advice(config.settings), checked=checked)
    return heap, task.preflight(config.settings, heap.heap) if config.jvm.xmx_is_auto else problems


def refuse_if(problems: list[str], fix: str = "") -> None:
    """The task's preflight problems as the refusal of the run (exit 2), with `fix` on a line of its own."""
    if problems:
        raise ConfigError("the configured analysis cannot run as it stands:\n  - " + "\n  - ".join(problems)
                          + (f"\n{fix}" if fix else ""))


def shard_rows(task: Task, config: RunConfig, users: tuple[str, ...], index: UserIndex) -> Dataset | None:
    """The rows of `users` (a plan's users to do), or None when there are none: nothing to read."""
    return load_users(task, config.settings, users, index) if users else None


def scan_committed_durably(paths: ShardPaths) -> dict[str, CommittedUser]:
    """commits.scan_committed, whose quarantine of an unreadable result file moves it (a write)."""
    return durable_write("results/quarantine", paths.results, lambda: commits.scan_committed(paths), remedy=SHARD)
