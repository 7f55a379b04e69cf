"""Which users a shard runs: its share of the sorted user list, less those already committed (pure)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from shardrun.sharding import ShardSpec, users_of_shard
from shardrun.states import UserStatus, user_outcome


@dataclass(frozen=True)
class ShardPlan:
    """Pure: which users this shard owns, which are already committed, which remain."""

    shard: ShardSpec
    assigned: tuple[str, ...]
    done: tuple[str, ...]
    todo: tuple[str, ...]
    retry: tuple[str, ...] = ()  # in todo although committed: failed users run again (--retry-failed)


def plan_shard(
    sorted_user_ids: Sequence[str],
    shard: ShardSpec,
    pilot: int | None,
    committed: Mapping[str, Any],
    retry_failed: bool = False,
) -> ShardPlan:
    assigned = users_of_shard(sorted_user_ids, shard)
    if pilot is not None:
        assigned = assigned[:pilot]
    retry = tuple(
        u for u in assigned if retry_failed and u in committed and user_outcome(committed[u].rows) == UserStatus.FAILED
    )
    done = tuple(u for u in assigned if u in committed and u not in retry)
    todo = tuple(u for u in assigned if u not in done)
    return ShardPlan(shard=shard, assigned=tuple(assigned), done=done, todo=todo, retry=retry)
