"""Assignment of users to shards: pure, no processes."""

import itertools

import numpy as np
import pytest

from shardrun.errors import UsageError
from shardrun.partition import (
    BALANCED,
    MODULO,
    ShardSpec,
    assign_users,
    balanced_assignment,
    resolve_auto_shard,
    users_of_shard,
)
from shardrun.shard.prepare import assign_index, partition_report, plan_shard
from shardrun.task import UserIndex

USERS = sorted(f"user{n:03d}" for n in range(23))


@pytest.mark.parametrize("count", [1, 2, 3, 4, 7, 23, 40])
def test_shards_partition_the_users_exactly(count):
    seen = [u for i in range(count) for u in users_of_shard(USERS, ShardSpec(i, count))]
    assert sorted(seen) == USERS
    assert len(seen) == len(set(seen))


def test_user_belongs_to_index_mod_k():
    shard = ShardSpec(2, 4)
    assert users_of_shard(USERS, shard) == [USERS[i] for i in range(2, len(USERS), 4)]


@pytest.mark.parametrize("text,expected", [("0/4", ShardSpec(0, 4)), (" 3 / 4 ", ShardSpec(3, 4)),
                                           ("0/1", ShardSpec(0, 1))])
def test_parse_shard(text, expected):
    assert ShardSpec.parse(text) == expected


@pytest.mark.parametrize("text", ["4/4", "-1/4", "1/0", "a/b", "1", "1/4/5", ""])
def test_parse_shard_rejects_bad_specs(text):
    with pytest.raises(UsageError, match="--shard"):
        ShardSpec.parse(text)


def test_auto_sge_counts_from_one():
    assert resolve_auto_shard({"SGE_TASK_ID": "1", "SHARDRUN_SHARDS": "3"}).spec == ShardSpec(0, 3)


def test_auto_without_count_says_how_to_fix():
    with pytest.raises(UsageError, match="SHARDRUN_SHARDS"):
        resolve_auto_shard({"PBS_ARRAY_INDEX": "1"})


def test_auto_outside_a_job_array_is_an_error():
    with pytest.raises(UsageError, match="job array"):
        resolve_auto_shard({})


def test_plan_skips_committed_and_pilot_takes_the_first_users():
    shard = ShardSpec(1, 3)
    mine = users_of_shard(USERS, shard)
    assignment = assign_users(USERS, 3)
    plan = plan_shard(assignment, shard, pilot=None,
                      committed={mine[0]: object(), mine[3]: object(), "other": object()})
    assert plan.assigned == tuple(mine)
    assert plan.done == (mine[0], mine[3])
    assert plan.todo == tuple(u for u in mine if u not in (mine[0], mine[3]))
    pilot = plan_shard(assignment, shard, pilot=2, committed={})
    assert pilot.todo == tuple(mine[:2])


def test_plan_refuses_an_assignment_of_another_k():
    with pytest.raises(ValueError, match="assignment of 2 shards for shard 1/3"):
        plan_shard(assign_users(USERS, 2), ShardSpec(1, 3), pilot=None, committed={})


# --- partition: balanced ----------------------------------------------------------------------


def heterogeneous(seed: int, count: int, per_shard: int) -> tuple[list[str], list[int]]:
    """Users with 29,000..61,000 observations each, `per_shard` of them (or up to twice that) per shard."""
    rng = np.random.default_rng(seed)
    n = per_shard * count + int(rng.integers(0, per_shard * count + 1))
    users = sorted(f"p{int(i):07d}" for i in rng.choice(10**7, n, replace=False))
    return users, rng.integers(29_000, 61_001, n).tolist()


def makespan(assignment, users, costs) -> int:
    cost_of = dict(zip(users, costs))
    return max(sum(cost_of[u] for u in shard) for shard in assignment)


@pytest.mark.parametrize("seed", range(40))
def test_balanced_puts_every_user_in_exactly_one_shard_in_sorted_order(seed):
    rng = np.random.default_rng(seed)
    count = int(rng.integers(1, 40))
    users, costs = heterogeneous(seed, count, int(rng.integers(0, 6)))
    assignment = balanced_assignment(users, costs, count)
    assert len(assignment) == count
    flat = [u for shard in assignment for u in shard]
    assert sorted(flat) == users and len(flat) == len(set(flat))
    assert all(shard == sorted(shard) for shard in assignment)  # a shard keeps the global order
    # The same answer however often and from whatever copy of the inputs (every shard computes it alone).
    assert balanced_assignment(list(users), list(costs), count) == assignment


@pytest.mark.parametrize("seed", range(40))
def test_balanced_makespan_is_within_ten_percent_of_the_lower_bound(seed):
    count = int(np.random.default_rng(seed + 1000).integers(2, 65))
    users, costs = heterogeneous(seed, count, per_shard=8)
    bound = max(sum(costs) / count, max(costs))
    assert makespan(balanced_assignment(users, costs, count), users, costs) <= 1.10 * bound


@pytest.mark.parametrize("seed", range(40))
def test_balanced_never_exceeds_the_list_scheduling_bound(seed):
    """Whatever the number of users: the last user put on the fullest shard found it least loaded."""
    rng = np.random.default_rng(seed + 2000)
    count = int(rng.integers(1, 30))
    n = int(rng.integers(0, 4 * count + 2))
    users = [f"u{i:04d}" for i in range(n)]
    costs = rng.integers(1, 100_000, n).tolist()
    if n:
        assert makespan(balanced_assignment(users, costs, count), users, costs) <= sum(costs) / count + max(costs)


@pytest.mark.parametrize("seed", range(30))
def test_balanced_is_within_lpt_guarantee_of_the_true_optimum_on_small_cases(seed):
    rng = np.random.default_rng(seed + 3000)
    count, n = int(rng.integers(2, 4)), int(rng.integers(3, 9))
    users = [f"u{i}" for i in range(n)]
    costs = rng.integers(29_000, 61_001, n).tolist()
    optimum = min(max(sum(c for c, s in zip(costs, shards) if s == k) for k in range(count))
                  for shards in itertools.product(range(count), repeat=n))
    assert makespan(balanced_assignment(users, costs, count), users, costs) <= (4 / 3 - 1 / (3 * count)) * optimum


def test_balanced_breaks_ties_by_user_id_then_by_lowest_shard():
    users = ["a", "b", "c", "d", "e"]
    # b and d cost the most (b first: its id is lower), to shards 0 and 1; then a, c and e (equal costs)
    # in id order, each to the least-loaded shard, shard 0 before shard 1 when they are level.
    assert balanced_assignment(users, [1, 5, 1, 5, 1], 2) == [["a", "b", "e"], ["c", "d"]]
    assert balanced_assignment(users, [2, 2, 2, 2, 2], 3) == [["a", "d"], ["b", "e"], ["c"]]


def test_equal_costs_give_modulo_and_unknown_costs_are_equal():
    users = [f"u{i:03d}" for i in range(50)]
    for count in (1, 3, 7):
        assert assign_users(users, count, BALANCED) == assign_users(users, count, MODULO)
        assert assign_index(UserIndex(tuple(users), "fp"), count, BALANCED) == assign_users(users, count)


def test_the_balanced_assignment_beats_modulo_on_skewed_users():
    users = [f"u{i:03d}" for i in range(40)]
    costs = [100_000 if i % 4 == 0 else 1_000 for i in range(40)]  # modulo puts every large user on shard 0
    index = UserIndex(tuple(users), "fp", tuple(costs))
    assert (makespan(assign_index(index, 4, BALANCED), users, costs)
            < makespan(assign_index(index, 4, MODULO), users, costs) / 3)
    lines = partition_report(index, 4, BALANCED)
    assert lines[0] == "predicted cost per shard (observations; lower bound 257,500):"
    assert lines[1].startswith("  modulo: largest 1,000,000, 3.883x the lower bound; shards 0: 1,000,000, 1: 10,000")
    # Ten large users on four shards: three on two of them is the optimum; the small ones fill the others.
    assert lines[2] == ("  balanced (this run): largest 300,000, 1.165x the lower bound; shards 0: 300,000,"
                        " 1: 300,000, 2: 215,000, 3: 215,000")


def test_an_unknown_partition_is_refused():
    with pytest.raises(ValueError, match="unknown partition 'striped'"):
        assign_users(USERS, 2, "striped")
