"""Everything a shard decides before its first write (what --dry-run prints), and its plan again under the lock.

Everything that can reject the input happens here, before any dir is created or the JVM starts.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from shardrun.config import RunConfig
from shardrun.errors import EXIT_OK, EXIT_USAGE, ConfigError
from shardrun.heap_plan import HeapPlan, plan_heap, run_heap_needs, task_heap_needs
from shardrun.partition import PARTITIONS, ShardSpec, assign_users
from shardrun.shard.dirs import ResolvedDirs, ShardOptions, resolve_dirs
from shardrun.shard.jvm import check_jvm_flags, find_java, task_classpath, task_jvm_options
from shardrun.states import UserStatus, user_outcome
from shardrun.storage import commits
from shardrun.storage.durability import SHARD, durable_write
from shardrun.task import Dataset, Task, UserIndex, load_task, load_users, read_user_index


@dataclass(frozen=True)
class ShardPlan:
    """Pure: which users this shard owns, which are already committed, which remain."""

    shard: ShardSpec
    assigned: tuple[str, ...]
    done: tuple[str, ...]
    todo: tuple[str, ...]
    retry: tuple[str, ...] = ()  # in todo although committed: failed users run again (--retry-failed)


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
    committed: dict[str, commits.CommittedUser]  # the resume scan the plan was made from (again under the lock)
    committed_listing: frozenset  # the result files that scan saw (commits.results_listing)


def prepare(config: RunConfig, options: ShardOptions) -> PreparedShard:
    """Read the config's consequences, the user index, the shard dir and this shard's rows; write nothing.
    Index first, then only the rows of the users to do, so a shard's memory is its own share."""
    task = load_task(config.task)
    problems = preflight(task, config)
    task_jvm_options(task, config.settings)
    find_java()
    index, whole = read_user_index(task, config.settings)
    needs, whole = run_heap_needs(task, config.settings, index, whole, config.jvm)
    dirs = resolve_dirs(config, task, options, datetime.now())
    committed = scan_committed(dirs) if dirs.resuming else {}
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


def scan_committed(dirs: ResolvedDirs) -> dict[str, commits.CommittedUser]:
    """commits.scan_committed, whose quarantine of an unreadable result file moves it (a write)."""
    shard = dirs.shard
    return durable_write("results/quarantine", shard.results, lambda: commits.scan_committed(shard), remedy=SHARD)


def assign_index(index: UserIndex, count: int, partition: str) -> list[list[str]]:
    """Every shard's users under `partition`, from the user index."""
    return assign_users(index.user_ids, count, partition, index.costs())


def plan_shard(assignment: Sequence[Sequence[str]], shard: ShardSpec, pilot: int | None,
               committed: Mapping[str, Any], retry_failed: bool = False) -> ShardPlan:
    """`assignment`: every shard's users (assign_index), shard i's at index i."""
    if len(assignment) != shard.count:
        raise ValueError(f"an assignment of {len(assignment)} shards for shard {shard}")
    assigned = tuple(assignment[shard.index])[:pilot]
    retry = tuple(
        u for u in assigned if retry_failed and u in committed and user_outcome(committed[u].rows) == UserStatus.FAILED
    )
    done = tuple(u for u in assigned if u in committed and u not in retry)
    todo = tuple(u for u in assigned if u not in done)
    return ShardPlan(shard=shard, assigned=assigned, done=done, todo=todo, retry=retry)


def resume_under_lock(prepared: PreparedShard, config: RunConfig, options: ShardOptions) -> PreparedShard:
    """The shard as the loop takes it: its plan and rows from the committed users as of the lock."""
    committed = committed_under_lock(prepared)
    plan = plan_shard(prepared.assignment, prepared.dirs.spec, options.pilot, committed, options.retry_failed)
    dataset = prepared.dataset
    loaded = set(dataset.user_ids) if dataset is not None else set()
    if not loaded.issuperset(plan.todo):  # a result file quarantined since prepare: its user is to do again
        dataset = shard_rows(prepared.task, config, plan.todo, prepared.index)
    return replace(prepared, plan=plan, dataset=dataset, committed=committed)


def committed_under_lock(prepared: PreparedShard) -> dict[str, commits.CommittedUser]:
    """The committed users under the lock: prepare's scan if unchanged, else a new one."""
    dirs = prepared.dirs
    if dirs.resuming and commits.results_listing(dirs.shard) == prepared.committed_listing:
        return prepared.committed
    return scan_committed(dirs)


def dry_run(config: RunConfig, options: ShardOptions, say: Callable[[str], None]) -> int:
    """run_production --dry-run: say the plan (users, dir, partition, heap) and the task's problems with it
    (exit 2 when it has any); the JVM's flags are tried in a subprocess."""
    prepared = prepare(config, options)
    plan = prepared.plan
    say(f"shard {plan.shard}: {len(plan.assigned)} users assigned, {len(plan.done)} already done,"
        f" {len(plan.todo)} to do")
    say(f"shard dir: {prepared.dirs.shard.dir}")
    for line in [*partition_report(prepared.index, plan.shard.count, config.partition),
                 f"jvm: {prepared.heap.jvm_line()}", *prepared.heap.report_lines()]:
        say(line)
    for problem in prepared.problems:
        say(f"cannot run: {problem}")
    flags = (*task_jvm_options(prepared.task, config.settings), *prepared.heap.jvm.jvm_args(), "-Xrs")
    check_jvm_flags(flags)
    say(f"java accepts the flags: {' '.join(flags)}")
    if not prepared.problems:
        say("preflight: the task found nothing that cannot run with this heap")
    return EXIT_USAGE if prepared.problems else EXIT_OK


def partition_report(index: UserIndex, count: int, chosen: str) -> list[str]:
    """Each shard's predicted cost under every partition, for --dry-run (pure), against the lower bound no
    assignment can beat: max(total / K, the largest user)."""
    costs = index.costs()
    cost_of = dict(zip(index.user_ids, costs))
    unit = "observations" if index.observations is not None else "users"
    bound = max(sum(costs) / count, max(costs, default=0))
    lines = [f"predicted cost per shard ({unit}; lower bound {bound:,.0f}):"]
    for partition in PARTITIONS:
        per_shard = [sum(cost_of[u] for u in users) for users in assign_users(index.user_ids, count, partition, costs)]
        largest = max(per_shard, default=0)
        ratio = f"{largest / bound:.3f}x the lower bound" if bound else "no users"
        mark = " (this run)" if partition == chosen else ""
        lines.append(f"  {partition}{mark}: largest {largest:,.0f}, {ratio}; shards "
                     + ", ".join(f"{i}: {cost:,.0f}" for i, cost in enumerate(per_shard)))
    return lines
