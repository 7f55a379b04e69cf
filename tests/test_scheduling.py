"""The launcher's policies, as plain values: no processes."""

import signal

import pytest

from shardrun.launch.policies import CpuThrottle, RestartPolicy, describe_exit, died_abnormally, shards_to_start


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
