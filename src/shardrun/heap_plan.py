"""The heap a shard's JVM gets (`jvm.xmx: auto` from the task's per-user needs) and who exceeds it.

Pure, shared by shards and the launcher's admission; auto uses every user's need so all shards agree.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from shardrun.config import AUTO_HEAP, JvmConfig
from shardrun.errors import ConfigError
from shardrun.task import DEFAULT_HEAP_ADVICE, Dataset, Task, UserIndex
from shardrun.units import GIB, MIB, format_bytes, heap_bytes

log = logging.getLogger(__name__)

# Covers the heap model's ~10% error, G1's humongous-region rounding and not-yet-reclaimed garbage.
AUTO_HEAP_MARGIN = 0.25
AUTO_HEAP_STEP = 64 * MIB  # round up to this, so nearby data give the same flags
AUTO_HEAP_FLOOR = 128 * MIB  # below this the JVM's own start-up and JIT use matter more than the model
# Above 32 GiB the JVM drops compressed references: a 33 GiB heap holds less than a 31 GiB one.
AUTO_HEAP_CEILING = 31 * GIB
OVER_BUDGET_SHOWN = 20  # users listed by --dry-run and in the log; the rest are counted


def auto_heap_bytes(largest_need: int, at_least: int = 0) -> int:
    """The heap auto picks for a largest user need (bytes): margin, rounding, floor, ceiling.

    `at_least` is an explicit jvm.xms: the JVM refuses an initial heap above the maximum.
    """
    with_margin = math.ceil(largest_need * (1 + AUTO_HEAP_MARGIN))
    rounded = -(-with_margin // AUTO_HEAP_STEP) * AUTO_HEAP_STEP
    return max(min(max(rounded, AUTO_HEAP_FLOOR), AUTO_HEAP_CEILING), at_least)


def resolve_heap(jvm: JvmConfig, needs: Mapping[str, int]) -> JvmConfig:
    """The JvmConfig with `auto` replaced by sizes; xms auto = xmx, so the size admission counted is committed."""
    xmx = jvm.xmx
    if jvm.xmx == AUTO_HEAP:
        explicit_xms = heap_bytes(jvm.xms) if jvm.xms not in (None, AUTO_HEAP) else 0
        xmx = f"{auto_heap_bytes(max(needs.values(), default=0), at_least=explicit_xms) // MIB}m"
    xms = xmx if jvm.xms == AUTO_HEAP else jvm.xms
    return replace(jvm, xmx=xmx, xms=xms)


def task_heap_needs(task: Task, settings: Any, dataset: Any, jvm: JvmConfig) -> dict[str, int] | None:
    """The task's per-user heap needs, or None; jvm.xmx auto without them is an error."""
    needs = task.user_heap_needs(settings, dataset)
    if needs is None and jvm.xmx == AUTO_HEAP:
        raise ConfigError(f"jvm.xmx is auto, but the task {type(task).__name__} does not predict each user's heap"
                          " (it has no user_heap_needs, docs/TASKS.md); set jvm.xmx to a size such as 1g in the"
                          " config.")
    return None if needs is None else dict(needs)


def run_heap_needs(task: Task, settings: Any, index: UserIndex, whole: Dataset | None,
                   jvm: JvmConfig) -> tuple[dict[str, int] | None, Dataset | None]:
    """Every user's heap need (exact, or the index bound), and the whole Dataset if it had to be loaded.

    The whole input is loaded only for jvm.xmx auto without an index bound.
    """
    if whole is not None:
        return task_heap_needs(task, settings, whole, jvm), whole
    bounds = task.index_heap_needs(settings, index)
    if bounds is not None or not jvm.xmx_is_auto:
        return None if bounds is None else dict(bounds), None
    log.info("jvm.xmx auto: the task bounds no user's heap from the user index, so every user's rows are"
             " read to choose it; set jvm.xmx to a size to read only this shard's users")
    whole = task.load(settings)
    return task_heap_needs(task, settings, whole, jvm), whole


@dataclass(frozen=True)
class HeapPlan:
    """The heap a shard starts with, and the users predicted not to fit in it."""

    configured: JvmConfig  # as written in the config (may say auto)
    jvm: JvmConfig  # resolved: what the JVM gets, what status.json and run.json record
    largest_need: int | None  # over every user of the data; None when the task predicts no needs
    largest_user: str | None
    users_considered: int  # the users `over_budget` was computed over (a shard's users to do)
    over_budget: tuple[tuple[str, int], ...]  # (user id, need) of the first OVER_BUDGET_SHOWN of them
    over_budget_count: int
    over_budget_largest: int = 0  # the largest need among all of them, shown or not
    advice: str = DEFAULT_HEAP_ADVICE  # the task's way to need less heap (Task.heap_advice)

    @property
    def heap(self) -> int:
        return self.jvm.xmx_bytes

    def jvm_line(self) -> str:
        """The JVM flags, and with auto how they were chosen."""
        flags = " ".join(self.jvm.jvm_args())
        if not self.configured.xmx_is_auto:
            return flags
        if self.largest_need is None or self.largest_user is None:
            return f"{flags} (jvm.xmx auto: no users, so the floor of {AUTO_HEAP_FLOOR // MIB} MiB)"
        return (f"{flags} (jvm.xmx auto: user {self.largest_user!r} needs {format_bytes(self.largest_need)};"
                f" the largest user need + {AUTO_HEAP_MARGIN:.0%}, rounded up to a multiple of"
                f" {AUTO_HEAP_STEP // MIB} MiB, at least {AUTO_HEAP_FLOOR // MIB} MiB and at most"
                f" {AUTO_HEAP_CEILING // GIB} GiB)")

    def report_lines(self) -> list[str]:
        """What --dry-run prints under the JVM flags: who is predicted to exceed the heap."""
        heap = format_bytes(self.heap)
        if self.largest_need is None:
            return ["heap: the task does not predict each user's heap; no per-user check"]
        if not self.over_budget_count:
            return [f"heap: all {self.users_considered} users to do fit in -Xmx{self.jvm.xmx}"
                    f" (the largest predicted need of the data is {format_bytes(self.largest_need)},"
                    f" user {self.largest_user!r})"]
        lines = [f"heap: {self.over_budget_count} of the {self.users_considered} users to do are predicted to need"
                 f" more than the {heap} heap (-Xmx{self.jvm.xmx}); they would fail with 'Java heap exhausted':"]
        lines += [f"  user {user!r}: needs {format_bytes(need)}, heap {heap}" for user, need in self.over_budget]
        if self.over_budget_count > len(self.over_budget):
            lines.append(f"  ... and {self.over_budget_count - len(self.over_budget)} more")
        fix = (f"{self.advice} (auto stops at {AUTO_HEAP_CEILING // GIB} GiB)" if self.configured.xmx_is_auto
               else f"raise jvm.xmx to {auto_heap_bytes(self.over_budget_largest) // MIB}m (their largest need"
                    f" + {AUTO_HEAP_MARGIN:.0%}), or set jvm.xmx: auto")
        lines.append(f"  fix: {fix}")
        return lines


def plan_heap(jvm: JvmConfig, needs: Mapping[str, int] | None, users: Sequence[str],
              advice: str = DEFAULT_HEAP_ADVICE, checked: Mapping[str, int] | None = None) -> HeapPlan:
    """Resolve the heap from every user's need, then list which of `users` exceed it (pure).

    `checked`: exact needs of `users`, when `needs` are only bounds from the index.
    """
    resolved = resolve_heap(jvm, needs or {})
    if not needs:
        return HeapPlan(jvm, resolved, None, None, len(users), (), 0, advice=advice)
    checked = needs if checked is None else checked
    largest_user = max(needs, key=needs.__getitem__)
    heap = resolved.xmx_bytes
    need_of = {user: checked.get(user, needs.get(user, 0)) for user in users}
    over = [(user, need) for user, need in need_of.items() if need > heap]
    return HeapPlan(configured=jvm, jvm=resolved, largest_need=needs[largest_user], largest_user=largest_user,
                    users_considered=len(users), over_budget=tuple(over[:OVER_BUDGET_SHOWN]),
                    over_budget_count=len(over), over_budget_largest=max((need for _, need in over), default=0),
                    advice=advice)
