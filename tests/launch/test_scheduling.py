"""The launcher's policies, as plain values: no processes (max-parallel and its default from the cores too)."""

import signal

import pytest

from shardrun.launch.admission import CpuMeter, cpus_busy, share_of_cpus
from shardrun.launch.policies import (
    CpuThrottle,
    RestartPolicy,
    describe_exit,
    died_abnormally,
    one_shard_percent,
    parallel_for_cores,
    shards_to_start,
)
from shardrun.launch.supervisor import CpuReading


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


def test_cpu_throttle_suspends_down_to_one_running_shard_never_none():
    throttle = CpuThrottle(limit=60)
    assert throttle.decide(75, 70, running=[0, 1, 2], suspended=[]) == ("suspend", 2)
    assert throttle.decide(100, 10, running=[0], suspended=[1, 2]) is None  # other programs' load: the last runs on
    assert throttle.decide(100, 0, running=[], suspended=[1, 2]) == ("resume", 1)  # none running: whatever the load
    assert throttle.decide(5, 5, running=[0], suspended=[]) is None


def test_cpu_throttle_resumes_a_shard_when_one_more_fits_under_the_limit():
    throttle = CpuThrottle(limit=60)
    # one running shard uses 25% of the CPUs: 35% + 25% fits in 60%, 40% + 25% does not
    assert throttle.decide(35, 25, running=[0], suspended=[1, 2]) == ("resume", 1)
    assert throttle.decide(40, 25, running=[0], suspended=[1]) is None
    # two shards on two CPUs and nothing else: the second would make 100%, so it stays suspended (no flapping)
    assert throttle.decide(50, 50, running=[0], suspended=[1]) is None
    assert throttle.decide(60, 0, running=[0], suspended=[1]) == ("resume", 1)  # exactly the limit fits
    assert one_shard_percent(90, 3) == 30 and one_shard_percent(0, 0) == 0


# --- the CPU readings (launch/admission.py) --------------------------------------------------------


def test_the_runs_share_counts_each_process_by_pid_and_start_time():
    before = {(10, 1.0): 4.0, (11, 1.0): 1.0, (12, 1.0): 3.0}
    after = {(10, 1.0): 6.0,  # 2 s more
             (11, 1.0): 1.0,  # suspended: nothing more
             (13, 5.0): 1.0,  # started in between: all of its second
             (12, 9.0): 0.5}  # pid 12 again, a new process: its own half second, not 0.5 - 3
    # 3.5 CPU seconds in 2 s on 2 CPUs
    assert share_of_cpus(before, after, elapsed_seconds=2.0, cpus=2) == 87.5
    assert share_of_cpus(before, {}, 2.0, 2) == 0.0  # every process ended
    assert share_of_cpus({}, {(1, 0.0): 100.0}, 1.0, 2) == 100.0  # never more than all of the CPUs
    assert share_of_cpus(before, after, 0.0, 2) == 0.0


def test_the_cpus_busy_are_those_of_the_affinity():
    assert cpus_busy([100.0, 0.0, 50.0, 0.0], cpus=[0, 2]) == 75.0
    assert cpus_busy([100.0, 0.0, 50.0, 0.0], cpus=None) == 37.5


def test_the_meter_reads_since_its_previous_reading():
    clock, seconds = [0.0], {(7, 1.0): 0.0}
    meter = CpuMeter(lambda: dict(seconds), per_cpu=lambda: [80.0, 100.0], cpus=None, clock=lambda: clock[0])
    clock[0], seconds[(7, 1.0)] = 2.0, 1.0
    assert meter() == CpuReading(cpus_percent=90.0, run_percent=25.0)  # 1 CPU second in 2 s on 2 CPUs
    clock[0] = 4.0  # the shard was suspended: no more CPU time
    assert meter() == CpuReading(cpus_percent=90.0, run_percent=0.0)
    lagging = CpuMeter(lambda: {(7, 1.0): 0.0}, per_cpu=lambda: [10.0], cpus=[0], clock=lambda: clock[0])
    clock[0] = 5.0
    assert lagging().cpus_percent == 10.0
    # the run's use is part of the CPUs' use, though two reads a moment apart may disagree
    catching_up = CpuMeter(lambda: {(7, 1.0): clock[0]}, per_cpu=lambda: [10.0], cpus=[0], clock=lambda: clock[0])
    clock[0] = 6.0
    assert catching_up() == CpuReading(cpus_percent=100.0, run_percent=100.0)


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
