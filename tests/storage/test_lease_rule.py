"""The lease's rule for a holder on another host (storage/lock.py: staleness, scheduler_verdict), with
SLURM's answers as scontrol gave them on a real cluster (tests/slurm_cluster.py, SLURM 22.05), replayed
by a stand-in for the command runner: this machine has one host, and the policy is pure. The real
commands against a real cluster: tests/scheduler/test_slurm_lease.py.

Also real processes across "hosts": a holder process whose lease names another host (a stand-in: this
test has one host) paused with SIGSTOP, and a newcomer that asks the (replayed) scheduler.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest

from shardrun.errors import ShardLocked
from shardrun.scheduler.slurm import (
    SlurmCommands,
    expand_hostlist,
    lease_scheduler,
    node_lost,
    parse_job_record,
    sighting_of,
    this_job,
)
from shardrun.storage.lock import (
    Holder,
    JobActivity,
    JobSighting,
    Lease,
    LeaseState,
    SchedulerJob,
    read_lease,
    scheduler_verdict,
    staleness,
)

REPO = Path(__file__).resolve().parents[2]

# `scontrol --oneliner show job 1_1` on the test cluster, an array element running (trimmed of the fields
# after NodeList/BatchHost that the rule does not read; the format is scontrol's).
RUNNING_RECORD = (
    "JobId=8 ArrayJobId=7 ArrayTaskId=1 JobName=sbatch UserId=root(0) GroupId=root(0) MCS_label=N/A "
    "Priority=4294901759 Nice=0 Account=(null) QOS=(null) JobState=RUNNING Reason=None Dependency=(null) "
    "Requeue=1 Restarts=0 BatchFlag=1 Reboot=0 ExitCode=0:0 RunTime=00:00:00 TimeLimit=365-00:00:00 "
    "AllocNode:Sid=localhost:12974 ReqNodeList=(null) ExcNodeList=(null) NodeList=nodea BatchHost=nodea "
    "NumNodes=1 NumCPUs=1 NumTasks=1 CPUs/Task=1 ReqB:S:C:T=0:0:*:* TRES=cpu=1,mem=12052M,node=1,billing=1 "
    "WorkDir=/tmp StdErr=/dev/null StdIn=/dev/null StdOut=/dev/null Power= \n")
UNREACHABLE = "slurm_load_jobs error: Unable to contact slurm controller (connect failure)\n"
# `scontrol --oneliner show node nodea`, trimmed likewise
NODE_RECORD = ("NodeName=nodea Arch=x86_64 CoresPerSocket=1  CPUAlloc=1 CPUEfctv=2 CPUTot=2 CPULoad=4.58 "
               "NodeAddr=10.0.0.2 NodeHostName=nodea Version=22.05.8 OS=Linux 6.18.44-fc-v1300 #1 SMP "
               "PREEMPT_DYNAMIC @0  RealMemory=24105 AllocMem=0 FreeMem=20250 Sockets=2 Boards=1 State={state} "
               "ThreadsPerCore=1 TmpDisk=0 Weight=1 Owner=N/A MCS_label=N/A Partitions=debug\n")

HOLDER_JOB = SchedulerJob(scheduler="slurm", cluster="lab", element="7_1", restart=0, node="nodea")
HOLDER = Holder(host="nodea", pid=4242, boot_id="boot-a", started=1.0, token="f00d",
                acquired_at="2026-12-07T10:00:00+00:00", job=HOLDER_JOB)
NEWCOMER = Holder(host="nodeb", pid=99, boot_id="boot-b", started=2.0, token="beef", acquired_at="")
NOW = 1_000_000.0
STALE_AFTER = 120.0
FRESH, OLD = NOW - 5, NOW - 1000  # heartbeats: 5 s old, and 1000 s old (a holder paused that long)


def record(state: str = "RUNNING", restarts: int = 0, nodes: str = "nodea", batch_host: str | None = None) -> str:
    """RUNNING_RECORD with another state, run count and node list, as scontrol shows them (a pending job
    has NodeList=(null) and no BatchHost)."""
    text = RUNNING_RECORD.replace("JobState=RUNNING", f"JobState={state}").replace("Restarts=0", f"Restarts={restarts}")
    host = batch_host if batch_host is not None else ("" if nodes == "(null)" else nodes)
    batch = f" BatchHost={host}" if host else ""
    return text.replace(" NodeList=nodea BatchHost=nodea", f" NodeList={nodes}{batch}")


class ReplayedSlurm:
    """Stands in for subprocess.run of SLURM's commands: answers `scontrol show job` with a recorded
    answer (text, exit status, stderr) or raises as a missing or hung command would, and `scontrol show
    node` with the holder's node in `node_state` (None: a node SLURM does not know); counts the calls."""

    def __init__(self, show_job: str | BaseException, returncode: int = 0, stderr: str = "", cluster: str = "lab",
                 node_state: str | None = "MIXED"):
        self.show_job, self.returncode, self.stderr, self.cluster = show_job, returncode, stderr, cluster
        self.node_state = node_state
        self.calls: list[list[str]] = []

    def __call__(self, argv, **kwargs):
        self.calls.append(argv)
        if isinstance(self.show_job, BaseException):
            raise self.show_job
        if argv[:3] == ["scontrol", "show", "config"]:
            return subprocess.CompletedProcess(argv, 0, f"ClusterName             = {self.cluster}\n", "")
        if argv[:4] == ["scontrol", "--oneliner", "show", "node"]:
            if self.node_state is None:
                return subprocess.CompletedProcess(argv, 1, f"Node {argv[-1]} not found\n", "")
            return subprocess.CompletedProcess(argv, 0, NODE_RECORD.format(state=self.node_state), "")
        assert argv[:4] == ["scontrol", "--oneliner", "show", "job"], argv
        return subprocess.CompletedProcess(argv, self.returncode, self.show_job, self.stderr)


def newcomer_env(element: str | None = None, restart: int = 0, node: str = "nodeb") -> dict[str, str]:
    """A newcomer's environment: in an element of array 7 on `node` (element "7_<task>"), or outside SLURM."""
    if element is None:
        return {}
    array, task = element.split("_")
    env = {"SLURM_JOB_ID": "9", "SLURM_ARRAY_JOB_ID": array, "SLURM_ARRAY_TASK_ID": task, "SLURMD_NODENAME": node,
           "SLURM_CLUSTER_NAME": "lab"}
    return env | ({"SLURM_RESTART_COUNT": str(restart)} if restart else {})


def judge(slurm: ReplayedSlurm, env: dict[str, str], heartbeat: float, holder: Holder | None = HOLDER):
    scheduler = lease_scheduler(env, SlurmCommands(run=slurm))
    me = replace(NEWCOMER, job=scheduler["job"])
    return staleness(LeaseState(holder=holder, heartbeat=heartbeat, inode=(0, 0)), me, NOW, STALE_AFTER,
                     ask_scheduler=scheduler["ask_scheduler"])


# (case, SLURM's answer about the holder's element 7_1, the newcomer's environment, heartbeat,
#  taken over?, words of the reason)
CASES = [
    ("same element restarted on another node", ReplayedSlurm(record(restarts=1, nodes="nodeb")),
     newcomer_env("7_1", restart=1), FRESH, True, "now runs on nodeb, not on nodea (this process is that job's run 1)"),
    ("same element restarted on the holder's node (after a reboot)", ReplayedSlurm(record(restarts=1)),
     newcomer_env("7_1", restart=1, node="nodea"), FRESH, True, "is at run 1 on nodea, after the holder's run 0"),
    ("the holder's run still completing on its node (its processes being killed)",
     ReplayedSlurm(record("COMPLETING", restarts=1)), newcomer_env("7_1", restart=1), OLD, False,
     "is COMPLETING on nodea"),
    ("job cancelled", ReplayedSlurm(record("CANCELLED")), newcomer_env("7_2"), FRESH, True, "has ended (CANCELLED)"),
    ("job completed", ReplayedSlurm(record("COMPLETED")), {}, FRESH, True, "has ended (COMPLETED)"),
    ("job ended and forgotten", ReplayedSlurm("", 1, "slurm_load_jobs error: Invalid job id specified\n"), {},
     FRESH, True, "has ended (no longer known to SLURM)"),
    ("element unknown in a known array", ReplayedSlurm("Job 7_1 not found\n", 1), {}, FRESH, True,
     "no longer known to SLURM"),
    ("job pending after a requeue", ReplayedSlurm(record("PENDING", restarts=1, nodes="(null)")), newcomer_env("7_2"),
     FRESH, True, "is PENDING (no longer running on nodea)"),
    ("job running on another node", ReplayedSlurm(record(nodes="nodec")), {}, FRESH, True,
     "now runs on nodec, not on nodea"),
    ("job running on the holder's node, the holder paused 1000 s", ReplayedSlurm(record()), newcomer_env("7_2"), OLD,
     False, "is RUNNING on nodea (run 0): the holder is alive there"),
    ("job suspended on the holder's node", ReplayedSlurm(record("SUSPENDED")), {}, OLD, False, "is SUSPENDED on nodea"),
    ("job on several nodes, the holder's among them",
     ReplayedSlurm(record(nodes="nodea,node[01-02]", batch_host="node01")), {}, OLD, False, "is RUNNING on nodea"),
    ("job on nodes written in a form not read", ReplayedSlurm(record(nodes="rack[1-2]-n[1-2]")), {}, OLD, False,
     "is RUNNING on nodea"),
    ("a state this rule does not know, on the holder's node", ReplayedSlurm(record("NEW_STATE")), {}, OLD, False,
     "is NEW_STATE on nodea"),
    ("job pending again after its node failed (node down)",
     ReplayedSlurm(record("PENDING", restarts=1, nodes="(null)"), node_state="DOWN+NOT_RESPONDING"), {}, FRESH, False,
     "its heartbeat (on host nodea) is 5 s old"),
    ("job on a node that does not respond, old heartbeat", ReplayedSlurm(record(), node_state="ALLOCATED*"), {}, OLD,
     True, "its heartbeat (on host nodea) is 1000 s old"),
    ("the holder's node unknown to SLURM", ReplayedSlurm(record("CANCELLED"), node_state=None), {}, FRESH, False,
     "its heartbeat"),
    ("scheduler unreachable, fresh heartbeat", ReplayedSlurm("", 1, UNREACHABLE), newcomer_env("7_1", restart=1),
     FRESH, False, "its heartbeat (on host nodea) is 5 s old, not older than 120 s"),
    ("scheduler unreachable, old heartbeat", ReplayedSlurm("", 1, UNREACHABLE), {}, OLD, True,
     "its heartbeat (on host nodea) is 1000 s old, older than 120 s"),
    ("scontrol hangs", ReplayedSlurm(subprocess.TimeoutExpired(["scontrol"], 30)), {}, FRESH, False,
     "its heartbeat (on host nodea) is 5 s old"),
    ("scontrol missing", ReplayedSlurm(FileNotFoundError("scontrol")), {}, OLD, True, "is 1000 s old"),
    ("another cluster answers", ReplayedSlurm(record("CANCELLED"), cluster="other"), {}, FRESH, False,
     "its heartbeat (on host nodea) is 5 s old"),
    ("SLURM is at an earlier run than the holder's (not its job)", ReplayedSlurm(record("CANCELLED")), {}, FRESH, False,
     "its heartbeat"),
]


@pytest.mark.parametrize("case, slurm, env, heartbeat, stale, why", CASES, ids=[case[0] for case in CASES])
def test_a_holder_on_another_host_by_slurms_answer(case, slurm, env, heartbeat, stale, why):
    holder = replace(HOLDER, job=replace(HOLDER_JOB, restart=2)) if "earlier run" in case else HOLDER
    judgement = judge(slurm, env, heartbeat, holder)
    assert (judgement.stale, why in judgement.why) == (stale, True), judgement
    assert slurm.calls and all(argv[-1] == "7_1" for argv in slurm.calls if "job" in argv), (
        "SLURM was asked, about the holder's element only")


def test_a_holder_without_a_scheduler_job_is_judged_by_its_heartbeat_alone():
    slurm = ReplayedSlurm(record("CANCELLED"))
    no_job = replace(HOLDER, job=None)
    assert not judge(slurm, newcomer_env("7_1", restart=1), FRESH, no_job).stale
    assert judge(slurm, newcomer_env("7_1", restart=1), OLD, no_job).why.startswith("its heartbeat")
    assert slurm.calls == []


def test_a_lease_written_before_jobs_were_recorded_reads_and_counts_by_its_heartbeat():
    old_format = json.dumps({"host": "nodea", "pid": 4242, "boot_id": "boot-a", "started": 1.0, "token": "f00d",
                             "acquired_at": "2026-01-01T00:00:00+00:00"})
    holder = Holder.from_json(old_format)
    assert holder == replace(HOLDER, job=None, acquired_at="2026-01-01T00:00:00+00:00")
    slurm = ReplayedSlurm(record("CANCELLED"))
    assert not judge(slurm, {}, FRESH, holder).stale
    assert judge(slurm, {}, OLD, holder).stale and slurm.calls == []


def test_a_lease_records_its_holders_job_and_reads_it_back():
    holder = Holder.this_process(HOLDER_JOB)
    assert Holder.from_json(holder.to_json()) == holder
    assert json.loads(holder.to_json())["job"] == {"scheduler": "slurm", "cluster": "lab", "element": "7_1",
                                                   "restart": 0, "node": "nodea"}
    garbled = json.loads(holder.to_json()) | {"job": {"element": "7_1"}}
    assert Holder.from_json(json.dumps(garbled)) == replace(holder, job=None)  # an unreadable job: the heartbeat


def test_the_job_a_process_runs_in():
    env = newcomer_env("7_1", restart=2, node="nodeb")
    assert this_job(env) == SchedulerJob("slurm", "lab", "7_1", 2, "nodeb")
    assert this_job({"SLURM_JOB_ID": "12", "SLURMD_NODENAME": "nodeb"}) == SchedulerJob("slurm", None, "12", 0, "nodeb")
    # a shell of salloc on the login node has the job's id but runs outside the job's nodes
    assert this_job({"SLURM_JOB_ID": "12", "SLURM_CLUSTER_NAME": "lab"}) is None
    assert this_job({}) is None


def test_slurm_node_lists():
    assert expand_hostlist("nodea") == {"nodea"}
    assert expand_hostlist("nodea,node[01-03,7],gpu[2]x") == {"nodea", "node01", "node02", "node03", "node7", "gpu2x"}
    assert expand_hostlist("(null)") is None and expand_hostlist("") is None
    assert expand_hostlist("rack[1-2]-node[1-2]") is None  # a form not read: the rule then assumes any node


def test_slurms_record_of_a_job():
    fields = parse_job_record(record("COMPLETING", restarts=1))
    assert (fields["JobState"], fields["Restarts"], fields["NodeList"], fields["AllocNode:Sid"]) == (
        "COMPLETING", "1", "nodea", "localhost:12974")
    assert sighting_of(fields, "lab") == JobSighting("lab", JobActivity.PRESENT, "COMPLETING", frozenset({"nodea"}), 1)
    pending = sighting_of(parse_job_record(record("PENDING", restarts=1, nodes="(null)")), "lab")
    assert (pending.activity, pending.nodes) == (JobActivity.WAITING, None)
    assert sighting_of(None, "lab").activity is JobActivity.GONE
    node = parse_job_record(NODE_RECORD.format(state="IDLE"))
    assert (node["State"], node["OS"]) == ("IDLE", "Linux 6.18.44-fc-v1300 #1 SMP PREEMPT_DYNAMIC @0")
    assert not node_lost(node)
    assert all(node_lost(parse_job_record(NODE_RECORD.format(state=state)))
               for state in ("DOWN", "DOWN+NOT_RESPONDING", "IDLE*", "MIXED+NOT_RESPONDING"))
    assert node_lost(None)


def test_the_verdict_without_a_cluster_name_settles_nothing():
    unnamed = replace(HOLDER_JOB, cluster=None)
    assert scheduler_verdict(unnamed, JobSighting(None, JobActivity.GONE, "CANCELLED")) is None
    assert scheduler_verdict(HOLDER_JOB, JobSighting(None, JobActivity.GONE, "CANCELLED")) is None


# --- real processes ---------------------------------------------------------------------------------

HOLD = """
import socket, sys, time
from pathlib import Path
from shardrun.storage.lock import Lease, SchedulerJob
socket.gethostname = lambda: "nodea"  # stands in for another host: this test has one
lost = []
lease = Lease(Path(sys.argv[1]), stale_after=float(sys.argv[2]), on_lost=lambda: lost.append(True),
              job=SchedulerJob("slurm", "lab", "7_1", 0, "nodea"))
lease.acquire()
print("held", flush=True)
while not lost:
    time.sleep(0.05)
print("lost", flush=True)
"""


def sighting(state: str, activity: JobActivity, nodes: set[str] | None = None, restart: int = 0):
    return lambda job: JobSighting("lab", activity, state, frozenset(nodes) if nodes else None, restart)


def test_a_paused_holder_on_another_host_is_kept_while_slurm_runs_its_job_there_and_taken_over_once_not(tmp_path):
    """A real holder process (its lease names host nodea and its job 7_1 there) is paused with SIGSTOP
    until its heartbeat is older than the stale time; a newcomer that SLURM tells (a replayed answer)
    the job still runs on nodea is refused; once SLURM says the job is pending again (requeued), the
    newcomer takes over at once, and the holder, resumed, finds its lease gone."""
    path, stale_after = tmp_path / "lease", 1.0
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(path), str(stale_after)], stdout=subprocess.PIPE,
                              text=True, cwd=REPO)
    try:
        assert holder.stdout.readline().strip() == "held"
        os.kill(holder.pid, signal.SIGSTOP)
        time.sleep(stale_after * 2)
        assert time.time() - read_lease(path).heartbeat > stale_after  # by the heartbeat alone: stale
        running_there = Lease(path, stale_after=stale_after, ask_scheduler=sighting("RUNNING", JobActivity.RUNNING,
                                                                                    {"nodea"}))
        with pytest.raises(ShardLocked, match=r'"host": "nodea".*"job": "slurm job 7_1 \(run 0\) on nodea".*RUNNING'):
            running_there.acquire()
        assert read_lease(path).holder.pid == holder.pid

        newcomer = Lease(path, stale_after=600, ask_scheduler=sighting("PENDING", JobActivity.WAITING, restart=1))
        newcomer.acquire()
        try:
            assert newcomer.took_over == "its slurm job 7_1 is PENDING (no longer running on nodea)"
            os.kill(holder.pid, signal.SIGCONT)
            assert holder.stdout.readline().strip() == "lost"  # the old holder noticed within a heartbeat
            assert holder.wait(timeout=30) == 0
            assert read_lease(path).holder == newcomer.holder
        finally:
            newcomer.release()
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()
