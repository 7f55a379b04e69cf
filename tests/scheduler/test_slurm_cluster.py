"""The test cluster itself (tests/slurm_cluster.py), on real daemons, and the SLURM behaviour the cluster
tests rely on, measured: what an array element is told (plain, stepped, sparse arrays), afterany, a requeue
(of one element, of a whole array) and how soon the element runs again, which process a warning signal
reaches. docs/dev/CLUSTER_TESTS.md lists
the figures.

The slow measurements (a requeued job left to its begin time, about 2 minutes; warning signals at a time
limit, about 1.5 minutes) are submitted when this module starts and checked by its last tests, so the
file takes about as long as the slowest of them.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from datetime import datetime
from pathlib import Path

import psutil
import pytest

from e2e_support import wait_for
from slurm_cluster import SlurmCluster, SlurmClusterError

PROBE = Path(__file__).resolve().parents[1] / "slurm_probe.py"
PYTHON = sys.executable


def probe_script(out: Path, *probe_args: str, exec_: bool = True, before: str = "") -> str:
    """A batch script that runs the probe (tests/slurm_probe.py) writing to `out`; `exec`s it unless told not to."""
    command = f"{PYTHON} {PROBE} {out} {' '.join(probe_args)}"
    return f"#!/bin/bash\n{before}\n{'exec ' if exec_ else ''}{command}\n"


def events(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.endswith("}")]


def wait_for_events(path: Path, condition, timeout: float, what: str) -> list[dict]:
    deadline = time.monotonic() + timeout
    while True:
        seen = events(path)
        if condition(seen):
            return seen
        if time.monotonic() > deadline:
            raise AssertionError(f"no {what} after {timeout:.0f} s; the probe recorded {seen}")
        time.sleep(0.1)


def starts(seen: list[dict]) -> list[dict]:
    return [event for event in seen if event["event"] == "start"]


def signals(seen: list[dict]) -> list[str]:
    return [event["signal"] for event in seen if event["event"] == "signal"]


def slurm_time(text: str) -> float:
    """A time as scontrol prints it (local time, seconds), as a Unix time."""
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S").timestamp()


def read_vars(path: Path) -> dict[str, str]:
    return dict(line.split("=", 1) for line in path.read_text().split())


ARRAY_VARS = ("SLURM_ARRAY_JOB_ID SLURM_ARRAY_TASK_ID SLURM_ARRAY_TASK_MIN SLURM_ARRAY_TASK_MAX "
              "SLURM_ARRAY_TASK_STEP SLURM_ARRAY_TASK_COUNT SLURM_JOB_ID")


def array_script(out_dir: Path, seconds: float = 0) -> str:
    """Each element writes SLURM's array variables, and its start and end times, to out_dir/<index>."""
    return f"""#!/bin/bash
start=$(date +%s.%N)
sleep {seconds}
{{ for v in {ARRAY_VARS}; do echo "$v=${{!v}}"; done; echo START=$start; echo END=$(date +%s.%N); }} \\
    > {out_dir}/$SLURM_ARRAY_TASK_ID.tmp
mv {out_dir}/$SLURM_ARRAY_TASK_ID.tmp {out_dir}/$SLURM_ARRAY_TASK_ID
"""


# --- the slow measurements, started first ---------------------------------------------------------------


@pytest.fixture(scope="module", autouse=True)
def slow(slurm_cluster, tmp_path_factory):
    """Submitted when the module starts: a job requeued while running and left to its begin time, and a job
    with a warning signal to its batch shell 50 s before a 1-minute time limit (it holds a CPU for up to
    95 s: on a 2-CPU machine the other tests get the other one)."""
    root = tmp_path_factory.mktemp("slurm-slow")
    cluster = slurm_cluster
    left = root / "left.jsonl"
    left_job = cluster.sbatch("--output=/dev/null", "--job-name=requeue-left",
                              script=probe_script(left, "--exit-on", "SIGTERM"))
    wait_for_events(left, lambda seen: len(starts(seen)) == 1, 120, "start of the job to requeue")
    requeued_at = time.time()
    cluster.scontrol("requeue", left_job)
    warned = root / "warned.jsonl"
    shell = root / "warned.shell"
    warned_job = cluster.sbatch("--output=/dev/null", "--time=1", "--signal=B:USR1@50", "--job-name=warned",
                                script=probe_script(warned, before=f"echo $$ > {shell}"))
    yield {"left": (left_job, left, requeued_at), "warned": (warned_job, warned, shell)}
    cluster.scancel(left_job, warned_job)
    cluster.wait_until_gone([left_job, warned_job], timeout=60)


# --- the cluster --------------------------------------------------------------------------------------------


def test_the_cluster_is_up_with_the_machines_size(slurm_cluster):
    node = slurm_cluster.node()
    assert node["NodeName"] == "localhost" and node["Partitions"] == "debug"
    assert int(node["CPUTot"]) == len(os.sched_getaffinity(0))
    assert int(node["RealMemory"]) == psutil.virtual_memory().total // 2**20
    config = slurm_cluster.scontrol("show", "config")
    assert f"ClusterName             = {slurm_cluster.name}" in config
    assert "KillWait                = 5 sec" in config
    assert slurm_cluster.startup_seconds < 30  # measured: about 1 s


def test_an_array_with_a_concurrency_cap_then_an_afterany_job(slurm_cluster, tmp_path):
    out = tmp_path / "elements"
    out.mkdir()
    array = slurm_cluster.sbatch("--output=/dev/null", "--array=0-3%2", script=array_script(out, seconds=1))
    after = slurm_cluster.sbatch("--output=/dev/null", f"--dependency=afterany:{array}",
                                 script=f"#!/bin/bash\ndate +%s.%N > {tmp_path}/after\nls {out} > {tmp_path}/seen\n")
    # A loaded slurmctld may show another reason until its scheduler has tested the dependency once.
    pending = wait_for(lambda: (record := slurm_cluster.job(after))["Reason"] == "Dependency" and record,
                       timeout=30, every=0.2)
    assert pending["JobState"] == "PENDING"
    slurm_cluster.wait_until_gone([array, after], timeout=120)

    written = {int(path.name): read_vars(path) for path in out.iterdir()}
    assert sorted(written) == [0, 1, 2, 3]
    for index, values in written.items():
        assert values["SLURM_ARRAY_TASK_ID"] == str(index)
        assert values["SLURM_ARRAY_JOB_ID"] == array
        assert (values["SLURM_ARRAY_TASK_MIN"], values["SLURM_ARRAY_TASK_MAX"],
                values["SLURM_ARRAY_TASK_STEP"], values["SLURM_ARRAY_TASK_COUNT"]) == ("0", "3", "1", "4")
    # Each element has its own job id; the last element keeps the array's own.
    assert len({values["SLURM_JOB_ID"] for values in written.values()}) == 4
    assert written[3]["SLURM_JOB_ID"] == array
    # %2: never more than two elements at once.
    spans = [(float(v["START"]), float(v["END"])) for v in written.values()]
    for start, _ in spans:
        assert sum(1 for s, e in spans if s <= start < e) <= 2
    # afterany: after every element ended, and it saw all their files.
    assert float((tmp_path / "after").read_text()) >= max(end for _, end in spans)
    assert sorted((tmp_path / "seen").read_text().split()) == ["0", "1", "2", "3"]
    states = {record["ArrayTaskId"]: record["JobState"] for record in slurm_cluster.jobs(array)}
    assert states == {"0": "COMPLETED", "1": "COMPLETED", "2": "COMPLETED", "3": "COMPLETED"}


@pytest.mark.parametrize(("spec", "indices", "min_max_step_count"), [
    ("0-6:2", [0, 2, 4, 6], ("0", "6", "2", "4")),
    ("3-9:3", [3, 6, 9], ("3", "9", "3", "3")),
    ("0,5,9", [0, 5, 9], ("0", "9", "1", "3")),       # sparse: STEP is 1, the indices are not MIN + i*STEP
    ("1-5:2,8", [1, 3, 5, 8], ("1", "8", "2", "4")),  # mixed: STEP is the range's, 8 is off that grid
    ("1", [1], ("1", "1", "1", "1")),                 # one element resubmitted: COUNT is 1, not the run's K
])
def test_what_an_element_of_a_stepped_or_sparse_array_is_told(slurm_cluster, tmp_path, spec, indices,
                                                              min_max_step_count):
    array = slurm_cluster.sbatch("--output=/dev/null", f"--array={spec}", script=array_script(tmp_path))
    slurm_cluster.wait_until_gone([array], timeout=120)
    written = {int(path.name): read_vars(path) for path in tmp_path.iterdir()}
    assert sorted(written) == indices
    for index, values in written.items():
        assert values["SLURM_ARRAY_TASK_ID"] == str(index)
        assert (values["SLURM_ARRAY_TASK_MIN"], values["SLURM_ARRAY_TASK_MAX"],
                values["SLURM_ARRAY_TASK_STEP"], values["SLURM_ARRAY_TASK_COUNT"]) == min_max_step_count


def start_again_now(cluster, element: str, out: Path, begin_time: float) -> tuple[list[dict], list[str]]:
    """StartTime=now on a requeued element until its second start shows in the probe's record, before its
    own begin time; one update starts it in about 1 s. The update is made again every 10 s while the
    element waits for a begin time still ahead, and each update's outcome is kept for the test's output
    (and, with the daemons' logs, for its failure message)."""
    updates = []
    while True:
        try:
            cluster.start_now(element)
        except SlurmClusterError as exc:  # e.g. "Job has already finished": its restart failed
            raise AssertionError(f"{exc}; updates before: {updates}; the element now: {cluster.jobs(element)};"
                                 f" the probe saw: {events(out)}\n{cluster.log_tail(60)}") from None
        record = cluster.job(element)
        updates.append(f"{record['JobState']} {record.get('Reason')} eligible {record.get('EligibleTime')}")
        window = min(10.0, begin_time - time.time() - 2)
        try:
            return (wait_for_events(out, lambda seen: len(starts(seen)) == 2, window, "the element's second start"),
                    updates)
        except AssertionError:
            if time.time() + 12 >= begin_time:
                raise AssertionError(f"the element did not start again before its begin time;"
                                     f" updates: {updates}") from None


def test_a_requeued_element_waits_for_its_begin_time_unless_moved_to_now(slurm_cluster, tmp_path):
    out = tmp_path / "probe.jsonl"
    script = f"#!/bin/bash\n[ $SLURM_ARRAY_TASK_ID = 1 ] || exit 0\nexec {PYTHON} {PROBE} {out} --exit-on SIGTERM\n"
    array = slurm_cluster.sbatch("--output=/dev/null", "--array=0-1", script=script)
    element = f"{array}_1"
    first = starts(wait_for_events(out, lambda seen: len(starts(seen)) == 1, 120, "the element's start"))[0]
    job_id = first["env"]["SLURM_JOB_ID"]
    assert "SLURM_RESTART_COUNT" not in first["env"]

    requeued_at = time.time()
    slurm_cluster.scontrol("requeue", element)
    requeue_done = time.time()
    record = slurm_cluster.wait_for_state(element, "PENDING", timeout=30)
    assert record["Reason"] == "BeginTime" and record["Restarts"] == "1"
    # The begin time is cred_expire (120 s by default) + 1 s after the requeue.
    assert 115 <= slurm_time(record["EligibleTime"]) - requeued_at <= 125
    # how the running element was stopped (the probe may write it a moment after the job is pending)
    wait_for_events(out, lambda seen: "SIGTERM" in signals(seen), 30, "the element's SIGTERM")

    # The requeue revoked the job's credential; slurmd refuses a credential made in that same second
    # ("Killing non-startable batch JobId=...: Job credential revoked": the element ends FAILED, exit 1).
    # That is what the begin time (cred_expire + 1 s) guards; a restart asked for sooner must wait for a
    # later second. Without this wait it failed three times in about a dozen CI runs.
    time.sleep(max(0.0, int(requeue_done) + 1.25 - time.time()))
    seen, updates = start_again_now(slurm_cluster, element, out, begin_time=slurm_time(record["EligibleTime"]))
    again = time.time() - requeued_at
    second = starts(seen)[1]
    assert time.time() < slurm_time(record["EligibleTime"])  # long before its begin time (measured: 2 to 3 s)
    assert second["env"]["SLURM_RESTART_COUNT"] == "1"
    assert second["env"]["SLURM_JOB_ID"] == job_id and second["env"]["SLURM_ARRAY_TASK_ID"] == "1"
    print(f"requeued element ran again after {again:.1f} s with StartTime=now ({updates})")
    slurm_cluster.scancel(array)
    slurm_cluster.wait_until_gone([array], timeout=60)


def test_the_last_element_keeps_the_arrays_id_which_requeues_every_element():
    """`<array>_<index>` requeues that element alone, even the one whose job id is the array's own;
    the array's id requeues them all. A cluster of its own, of four CPUs: this module's slow
    measurements hold the shared one's."""
    with SlurmCluster(cpus=4) as cluster:
        def running_pair() -> tuple[str, dict]:
            array = cluster.sbatch("--array=0-1", "--requeue", "--output=/dev/null", script="#!/bin/bash\nsleep 300\n")
            for index in (0, 1):
                cluster.wait_for_state(f"{array}_{index}", "RUNNING", timeout=60)
            return array, {record["ArrayTaskId"]: record for record in cluster.jobs(array)}

        array, elements = running_pair()
        assert elements["1"]["JobId"] == array != elements["0"]["JobId"], elements
        cluster.scontrol("requeue", f"{array}_1")
        cluster.wait_for_state(f"{array}_1", "PENDING", timeout=30)
        first = cluster.job(f"{array}_0")
        assert (first["JobState"], first["Restarts"]) == ("RUNNING", "0"), first

        other, _elements = running_pair()
        cluster.scontrol("requeue", other)
        for index in (0, 1):
            record = cluster.wait_for_state(f"{other}_{index}", "PENDING", timeout=30)
            assert record["Restarts"] == "1", record


def test_scontrol_release_does_not_lift_a_requeued_jobs_begin_time(slurm_cluster, tmp_path):
    out = tmp_path / "probe.jsonl"
    job = slurm_cluster.sbatch("--output=/dev/null", script=probe_script(out, "--exit-on", "SIGTERM"))
    wait_for_events(out, lambda seen: len(starts(seen)) == 1, 120, "the job's start")
    slurm_cluster.scontrol("requeue", job)
    slurm_cluster.wait_for_state(job, "PENDING", timeout=30)
    slurm_cluster.scontrol("release", job)  # accepted (exit 0) ...
    time.sleep(4)
    record = slurm_cluster.job(job)  # ... but the job still waits for its begin time
    assert record["JobState"] == "PENDING" and record["Reason"] == "BeginTime"
    assert len(starts(events(out))) == 1


def test_a_signal_to_the_batch_step_reaches_the_program_the_script_execd(slurm_cluster, tmp_path):
    out, shell = tmp_path / "probe.jsonl", tmp_path / "shell"
    job = slurm_cluster.sbatch("--output=/dev/null", script=probe_script(out, before=f"echo $$ > {shell}"))
    wait_for_events(out, lambda seen: len(starts(seen)) == 1, 120, "the job's start")
    # Without --batch, scancel signals the job's steps only (as --signal without B: does): a batch job
    # without srun steps gets nothing.
    slurm_cluster.scancel("--signal=USR1", job)
    time.sleep(3)
    assert signals(events(out)) == []
    sent = time.time()
    slurm_cluster.scancel("--batch", "--signal=USR1", job)
    seen = wait_for_events(out, lambda seen: "SIGUSR1" in signals(seen), 10, "SIGUSR1")
    usr1 = next(event for event in seen if event.get("signal") == "SIGUSR1")
    assert usr1["pid"] == int(shell.read_text()) == starts(seen)[0]["pid"]  # exec: the shell's pid
    assert usr1["wall"] - sent < 5
    # scancel: SIGCONT and SIGTERM to it, SIGKILL KillWait (5 s) later; the job ends CANCELLED.
    slurm_cluster.scancel(job)
    slurm_cluster.wait_until_gone([job], timeout=30)
    assert sorted(signals(events(out))[-2:]) == ["SIGCONT", "SIGTERM"]
    assert slurm_cluster.state(job) == "CANCELLED"


def test_without_exec_a_signal_to_the_batch_step_kills_the_shell_and_orphans_the_program(slurm_cluster, tmp_path):
    out = tmp_path / "probe.jsonl"
    job = slurm_cluster.sbatch("--output=/dev/null", script=probe_script(out, exec_=False))
    pid = starts(wait_for_events(out, lambda seen: len(starts(seen)) == 1, 120, "the job's start"))[0]["pid"]
    try:
        slurm_cluster.scancel("--batch", "--signal=USR1", job)
        slurm_cluster.wait_until_gone([job], timeout=30)
        record = slurm_cluster.job(job)
        assert record["JobState"] == "FAILED" and record["ExitCode"] == f"0:{int(signal.SIGUSR1)}"
        # bash had no trap: USR1 killed it; the program never saw the signal, and with
        # proctrack/linuxproc nothing kills it when the job ends (cgroups would).
        assert signals(events(out)) == []
        assert psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
        assert pid in slurm_cluster.job_pids()  # stop() would kill it
    finally:
        os.kill(pid, signal.SIGKILL)


def test_a_second_cluster_is_separate_and_stop_leaves_no_process(slurm_cluster, tmp_path):
    cluster = SlurmCluster(cpus=1).start()
    try:
        assert cluster.startup_seconds < 30
        assert cluster.name != slurm_cluster.name
        assert {cluster.ctld_port, cluster.slurmd_port}.isdisjoint({slurm_cluster.ctld_port, slurm_cluster.slurmd_port})
        orphan = tmp_path / "orphan"
        job = cluster.sbatch("--output=/dev/null", script=f"#!/bin/bash\necho $SLURM_CLUSTER_NAME > {tmp_path}/name\n"
                                                           f"setsid sleep 300 </dev/null >/dev/null 2>&1 &\n"
                                                           f"echo $! > {orphan}\n")
        cluster.wait_until_gone([job], timeout=60)
        assert (tmp_path / "name").read_text().strip() == cluster.name
        assert cluster.state(job) == "COMPLETED"
        sleeper = psutil.Process(int(orphan.read_text()))  # outlived its job: linuxproc lost it
        daemons = [psutil.Process(process.pid) for process in cluster.processes.values()]
        root = cluster.root
    finally:
        cluster.stop()
    _gone, alive = psutil.wait_procs([sleeper, *daemons], timeout=5)
    assert alive == []
    assert not root.exists()
    # The session's cluster did not notice.
    assert all(process.poll() is None for process in slurm_cluster.processes.values())
    assert slurm_cluster.node_state() in ("idle", "mixed", "allocated")


def test_a_cluster_that_cannot_start_says_why_with_its_logs():
    cluster = SlurmCluster(extra_config="NoSuchOption=1")
    with pytest.raises(SlurmClusterError) as error:
        cluster.start()
    assert "slurmctld exited" in str(error.value)
    assert "unrecognized key: NoSuchOption" in str(error.value)  # from slurmctld's output
    assert cluster.root is None and cluster.processes == {}


# --- the slow measurements, checked last --------------------------------------------------------------------


def test_a_warning_signal_reaches_the_execd_program_before_the_time_limit(slurm_cluster, slow):
    warned_job, warned, shell = slow["warned"]
    slurm_cluster.wait_until_gone([warned_job], timeout=150)
    seen = events(warned)
    start = starts(seen)[0]
    got = [(event["signal"], event["after"], event["pid"]) for event in seen if event["event"] == "signal"]
    print(f"--time=1 --signal=B:USR1@50: {got}")
    usr1 = [after for name, after, _ in got if name == "SIGUSR1"]
    term = [after for name, after, _ in got if name == "SIGTERM"]
    # B:USR1 reaches the exec'd program (the batch shell's pid), once, with a SIGCONT, before the limit:
    # due 10 s after the start, it comes at slurmctld's next time-limit pass (every 30 s).
    assert len(usr1) == 1 and usr1[0] < 60
    assert {pid for _, _, pid in got} == {start["pid"]} and start["pid"] == int(shell.read_text())
    assert "SIGCONT" in [name for name, after, _ in got if abs(after - usr1[0]) < 1]
    # At the limit (enforced by the same pass, so up to 30 s late): SIGTERM, then SIGKILL KillWait later.
    assert len(term) == 1 and 60 <= term[0] < 100 and term[0] > usr1[0]
    assert slurm_cluster.state(warned_job) == "TIMEOUT"


def test_a_requeued_job_left_alone_starts_again_after_its_begin_time(slurm_cluster, slow):
    _job, out, requeued_at = slow["left"]
    seen = wait_for_events(out, lambda seen: len(starts(seen)) == 2, 200, "the requeued job's second start")
    again = starts(seen)[1]["wall"] - requeued_at
    print(f"requeued job ran again after {again:.1f} s without StartTime=now")
    # cred_expire (120 s) + 1, then the next main scheduling pass (sched_interval=2 here; 60 s by default).
    assert 120 <= again < 135
    assert starts(seen)[1]["env"]["SLURM_RESTART_COUNT"] == "1"
