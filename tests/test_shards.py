"""Assignment of users to shards: pure, no processes."""

import pytest

from shardrun.errors import UsageError
from shardrun.sharding import ShardSpec, users_of_shard
from shardrun.shard.plan import plan_shard

USERS = sorted(f"user{n:03d}" for n in range(23))


@pytest.mark.parametrize("count", [1, 2, 3, 4, 7, 23, 40])
def test_shards_partition_the_users_exactly(count):
    seen = [u for i in range(count) for u in users_of_shard(USERS, ShardSpec(i, count))]
    assert sorted(seen) == USERS
    assert len(seen) == len(set(seen))


def test_user_belongs_to_index_mod_k():
    shard = ShardSpec(2, 4)
    assert users_of_shard(USERS, shard) == [USERS[i] for i in range(2, len(USERS), 4)]


@pytest.mark.parametrize("text,expected", [("0/4", ShardSpec(0, 4)), (" 3 / 4 ", ShardSpec(3, 4)), ("0/1", ShardSpec(0, 1))])
def test_parse_shard(text, expected):
    assert ShardSpec.parse(text) == expected


@pytest.mark.parametrize("text", ["4/4", "-1/4", "1/0", "a/b", "1", "1/4/5", ""])
def test_parse_shard_rejects_bad_specs(text):
    with pytest.raises(UsageError, match="--shard"):
        ShardSpec.parse(text)


def test_auto_sge_counts_from_one():
    assert ShardSpec.parse("auto", {"SGE_TASK_ID": "1", "SHARDRUN_SHARDS": "3"}) == ShardSpec(0, 3)


def test_auto_without_count_says_how_to_fix():
    with pytest.raises(UsageError, match="SHARDRUN_SHARDS"):
        ShardSpec.parse("auto", {"PBS_ARRAY_INDEX": "1"})


def test_auto_outside_a_job_array_is_an_error():
    with pytest.raises(UsageError, match="job array"):
        ShardSpec.parse("auto", {})


def test_plan_skips_committed_and_pilot_takes_the_first_users():
    shard = ShardSpec(1, 3)
    mine = users_of_shard(USERS, shard)
    plan = plan_shard(USERS, shard, pilot=None, committed={mine[0]: object(), mine[3]: object(), "other": object()})
    assert plan.assigned == tuple(mine)
    assert plan.done == (mine[0], mine[3])
    assert plan.todo == tuple(u for u in mine if u not in (mine[0], mine[3]))
    pilot = plan_shard(USERS, shard, pilot=2, committed={})
    assert pilot.todo == tuple(mine[:2])
