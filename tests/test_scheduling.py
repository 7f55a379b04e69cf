"""The launcher's policies, as plain values: no processes (max-parallel and its default from the cores too)."""

import signal

import pytest

from shardrun.launch.policies import (
    CpuThrottle, RestartPolicy, describe_exit, died_abnormally, parallel_for_cores, shards_to_start,
)


@pytest.mark.parametrize("code,abnormal", [
    (0, False), (1, False), (2, False), (3, False), (4, False), (6, False),
    (-signal.SIGKILL, True), (-signal.SIGSEGV, True), (-signal.SIGABRT, True), (70, True), (134, True),
])
def test_which_exits_are_abnormal(code, abnormal):
    assert died_abnormally(code) is abnormal


def test_sigkill_is_explained_as_the_oom_killer():
    assert "likely the OOM killer" in describe_exit(-signal.SIGKILL)
    assert "JVM crash" in describe_exit(-signal.SIGABRT)
    assert "hs_err" in describe_exit(70)


def test_restarts_are_bounded_and_only_for_abnormal_deaths():
    policy = RestartPolicy(max_restarts=2)
    assert policy.should_restart(-signal.SIGKILL, 0) and policy.should_restart(-signal.SIGKILL, 1)
    assert not policy.should_restart(-signal.SIGKILL, 2)
    assert not policy.should_restart(1, 0) and not policy.should_restart(3, 0) and not policy.should_restart(2, 0)
    assert not RestartPolicy().should_restart(-signal.SIGKILL, 0)


def test_restart_heap_grows_by_the_factor():
    policy = RestartPolicy(max_restarts=3, heap_factor=1.5)
    assert policy.heap_for_restart("256m", 0) == "384m"
    assert policy.heap_for_restart("1g", 1) == "2304m"
    assert RestartPolicy(max_restarts=1).heap_for_restart("1g", 0) == "1g"


def test_max_parallel_starts_only_what_fits():
    assert shards_to_start([0, 1, 2, 3], active=0, max_parallel=None) == [0, 1, 2, 3]
    assert shards_to_start([0, 1, 2, 3], active=0, max_parallel=2) == [0, 1]
    assert shards_to_start([2, 3], active=2, max_parallel=2) == []
    assert shards_to_start([3], active=1, max_parallel=2) == [3]


def test_cpu_throttle_has_a_band_between_suspend_and_resume():
    throttle = CpuThrottle(limit=60, hysteresis=10)
    assert throttle.decide(75, running=[0, 1, 2], suspended=[]) == ("suspend", 2)
    assert throttle.decide(55, running=[0, 1], suspended=[2]) is None  # inside the band: hold
    assert throttle.decide(45, running=[0, 1], suspended=[2, 3]) == ("resume", 2)
    assert throttle.decide(95, running=[], suspended=[0, 1]) is None
    assert throttle.decide(5, running=[0], suspended=[]) is None


# --- max-parallel's default from the cores ------------------------------------------------------


def test_more_shards_than_cores_run_at_most_as_many_as_the_cores_by_default():
    plan = parallel_for_cores(4, 2, "affinity 2; cgroup quota none", None, None)
    assert (plan.max_parallel, plan.threads) == (2, 1)
    assert plan.line == ("4 shards on 2 cores available (affinity 2; cgroup quota none): running at most 2 at once,"
                         " 1 thread each (jvm.threads auto), the others as earlier ones finish;"
                         " pass --max-parallel 4 to run all at once")


def test_shards_that_fit_the_cores_all_run_at_once_sharing_them_as_threads():
    plan = parallel_for_cores(2, 8, "affinity 8; cgroup quota none", None, None)
    assert (plan.max_parallel, plan.threads) == (None, 4)
    assert plan.line.endswith(": all at once, 4 threads each (jvm.threads auto)")
    alone = parallel_for_cores(1, 2, "affinity 2; cgroup quota none", None, None)
    assert (alone.max_parallel, alone.threads) == (None, 2)
    assert "pass --max-parallel" not in alone.line


def test_each_shard_counts_its_configured_threads():
    plan = parallel_for_cores(4, 8, "affinity 8; cgroup quota none", 3, None)
    assert (plan.max_parallel, plan.threads) == (2, 3)  # 8 // 3
    assert "running at most 2 at once, 3 threads each (jvm.threads)" in plan.line
    wide = parallel_for_cores(3, 2, "affinity 2; cgroup quota none", 4, None)
    assert wide.max_parallel == 1  # a shard wider than the machine still runs, one at a time


def test_an_explicit_max_parallel_always_wins():
    more = parallel_for_cores(4, 2, "affinity 2; cgroup quota none", None, 4)
    assert (more.max_parallel, more.threads) == (4, 1)
    assert "running at most 4 at once (--max-parallel 4)" in more.line and "4 threads share 2 cores" in more.line
    fewer = parallel_for_cores(4, 8, "affinity 8; cgroup quota none", None, 1)
    assert (fewer.max_parallel, fewer.threads) == (1, 8)
    assert "share" not in fewer.line


def test_the_policy_refuses_nonsense():
    with pytest.raises(ValueError):
        parallel_for_cores(0, 2, "", None, None)
    with pytest.raises(ValueError):
        parallel_for_cores(2, 0, "", None, None)
