"""Which users a shard runs: its share of the run's assignment, less those committed (pure)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from shardrun.partition import PARTITIONS, ShardSpec, assign_users, shard_costs
from shardrun.states import UserStatus, user_outcome
from shardrun.task import UserIndex


@dataclass(frozen=True)
class ShardPlan:
    """Pure: which users this shard owns, which are already committed, which remain."""

    shard: ShardSpec
    assigned: tuple[str, ...]
    done: tuple[str, ...]
    todo: tuple[str, ...]
    retry: tuple[str, ...] = ()  # in todo although committed: failed users run again (--retry-failed)


def assign_index(index: UserIndex, count: int, partition: str) -> list[list[str]]:
    """Every shard's users under `partition`, from the user index."""
    return assign_users(index.user_ids, count, partition, index.costs())


def plan_shard(
    assignment: Sequence[Sequence[str]],
    shard: ShardSpec,
    pilot: int | None,
    committed: Mapping[str, Any],
    retry_failed: bool = False,
) -> ShardPlan:
    """`assignment`: every shard's users (assign_index), shard i's at index i."""
    if len(assignment) != shard.count:
        raise ValueError(f"an assignment of {len(assignment)} shards for shard {shard}")
    assigned = list(assignment[shard.index])
    if pilot is not None:
        assigned = assigned[:pilot]
    retry = tuple(
        u for u in assigned if retry_failed and u in committed and user_outcome(committed[u].rows) == UserStatus.FAILED
    )
    done = tuple(u for u in assigned if u in committed and u not in retry)
    todo = tuple(u for u in assigned if u not in done)
    return ShardPlan(shard=shard, assigned=tuple(assigned), done=done, todo=todo, retry=retry)


def partition_report(index: UserIndex, count: int, chosen: str) -> list[str]:
    """Each shard's predicted cost under every partition, for --dry-run (pure).

    Lower bound no assignment can beat: max(total / K, the largest user)."""
    costs = index.costs()
    cost_of = dict(zip(index.user_ids, costs))
    unit = "observations" if index.observations is not None else "users"
    bound = max(sum(costs) / count, max(costs, default=0))
    lines = [f"predicted cost per shard ({unit}; lower bound {bound:,.0f}):"]
    for partition in PARTITIONS:
        per_shard = shard_costs(assign_users(index.user_ids, count, partition, costs), cost_of)
        largest = max(per_shard, default=0)
        ratio = f"{largest / bound:.3f}x the lower bound" if bound else "no users"
        mark = " (this run)" if partition == chosen else ""
        lines.append(f"  {partition}{mark}: largest {largest:,.0f}, {ratio}; shards "
                     + ", ".join(f"{i}: {cost:,.0f}" for i, cost in enumerate(per_shard)))
    return lines
