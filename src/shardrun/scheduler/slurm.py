"""The one place that talks to SLURM (sbatch, squeue, scancel, scontrol), and the run's record of
what was submitted (RUN/slurm.json).

`SlurmCommands` runs the commands through an injected `run` (subprocess.run by default); parsing
their output is pure (`parse_queue`, `parse_job_record`, `sighting_of`), so the rules are tested on
text and the commands on a real cluster (tests/test_slurm.py, tests/test_slurm_lease.py).

It also tells the shard lease which job a process runs in (`this_job`) and asks SLURM about another
holder's job (`lease_scheduler`): storage/lease.py decides from the answer.
"""

from __future__ import annotations

import logging
import re
import subprocess
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shardrun.errors import SchedulerError
from shardrun.storage.atomic import read_json, utc_now, write_json_atomic
from shardrun.storage.lease import JobActivity, JobAsker, JobSighting, SchedulerJob
from shardrun.storage.paths import RunPaths

log = logging.getLogger(__name__)

SLURM_JOB_ENV = "SLURM_JOB_ID"
SLURM_ARRAY_JOB_ENV = "SLURM_ARRAY_JOB_ID"
SLURM_ARRAY_TASK_ENV = "SLURM_ARRAY_TASK_ID"
SLURM_RESTART_ENV = "SLURM_RESTART_COUNT"  # absent in a job's first run
SLURM_NODE_ENV = "SLURMD_NODENAME"  # set by slurmd only: the process runs on that node, inside the job
SLURM_CLUSTER_ENV = "SLURM_CLUSTER_NAME"

# States in which an element is still SLURM's business: it will run (again) without anyone resubmitting it.
WAITING_OR_RUNNING = frozenset({
    "PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "REQUEUED", "REQUEUE_FED", "REQUEUE_HOLD", "RESIZING",
    "SUSPENDED", "SIGNALING", "STAGE_OUT", "STOPPED",
})
DEFAULT_MAX_ARRAY_SIZE = 1001  # SLURM's default MaxArraySize
# What a job's state says of its processes, for the lease (storage/lease.py: JobActivity). SLURM shows a
# job COMPLETING until every node reported its processes gone, and only then ended or pending again;
# any state not named here counts as "processes may be there" (JobActivity.PRESENT).
ENDED_STATES = frozenset({"COMPLETED", "CANCELLED", "FAILED", "TIMEOUT", "NODE_FAIL", "PREEMPTED", "BOOT_FAIL",
                          "DEADLINE", "OUT_OF_MEMORY", "REVOKED"})
WAITING_STATES = frozenset({"PENDING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "SPECIAL_EXIT", "RESV_DEL_HOLD"})


@dataclass(frozen=True)
class QueuedElement:
    array_job_id: str
    array_task_id: int
    job_id: str
    state: str
    reason: str

    @property
    def waiting_or_running(self) -> bool:
        return self.state in WAITING_OR_RUNNING

    def __str__(self) -> str:
        """'pending (Resources) 1234', 'running 1235', 'cancelled 1236': squeue's words, its empty reasons left out."""
        reason = f" ({self.reason})" if self.reason and self.reason not in ("None", "(null)") else ""
        return f"{self.state.lower()}{reason} {self.job_id}"


def parse_queue(text: str) -> list[QueuedElement]:
    """`squeue --array --noheader --format=%F|%K|%A|%T|%r` lines -> elements (pure; other lines are skipped)."""
    elements = []
    for line in text.splitlines():
        parts = line.strip().split("|")
        if len(parts) != 5 or not parts[1].isdigit():
            continue
        array_job_id, task_id, job_id, state, reason = parts
        elements.append(QueuedElement(array_job_id, int(task_id), job_id, state.upper(), reason))
    return elements


def own_slurm_job(env: Mapping[str, str]) -> str | None:
    """The name by which SLURM's commands act on this job alone: `<array job id>_<task id>` for an
    array element, SLURM_JOB_ID otherwise; None outside SLURM.

    An element's SLURM_JOB_ID will not do: the array's last element to start keeps the array's own
    id as its SLURM_JOB_ID, and `scontrol requeue <array id>` requeues every element of the array."""
    array_job, task = env.get(SLURM_ARRAY_JOB_ENV, "").strip(), env.get(SLURM_ARRAY_TASK_ENV, "").strip()
    if array_job and task:
        return f"{array_job}_{task}"
    return env.get(SLURM_JOB_ENV, "").strip() or None


def this_job(env: Mapping[str, str]) -> SchedulerJob | None:
    """The SLURM job this process runs in, for its lease; None outside a job, and for a process that has
    a job's variables but was not started by slurmd on a node of it (a shell of `salloc` on a login node
    has SLURM_JOB_ID but no SLURMD_NODENAME): SLURM's view of the job says nothing about such a process."""
    element, node = own_slurm_job(env), env.get(SLURM_NODE_ENV, "").strip()
    if element is None or not node:
        return None
    restart = env.get(SLURM_RESTART_ENV, "").strip()
    return SchedulerJob(scheduler="slurm", cluster=env.get(SLURM_CLUSTER_ENV, "").strip() or None, element=element,
                        restart=int(restart) if restart.isdigit() else 0, node=node)


def parse_job_record(text: str) -> dict[str, str]:
    """`scontrol --oneliner show job <id>` of one job (or `show node` of one node) -> its `Key=Value`
    fields (pure). A key is a word that may hold ':' and '/' (AllocNode:Sid, CPUs/Task); a value may
    hold spaces (OS=Linux 6.1 #1 SMP) but no space followed by such a word and '='."""
    record: dict[str, str] = {}
    line = next((line for line in text.splitlines() if line.strip()), "")
    for field in re.split(r" +(?=[A-Za-z][\w/:]*=)", line.strip()):
        key, sep, value = field.partition("=")
        if sep:
            record.setdefault(key, value)
    return record


def expand_hostlist(text: str) -> frozenset[str] | None:
    """SLURM's node list (`nodea,node[01-03,7]`) -> the node names; None if empty or in a form this does
    not read (two bracket groups in one name, say): the caller then assumes any node (pure)."""
    names: set[str] = set()
    for part in re.findall(r"[^,\[]+(?:\[[^\]]*\][^,\[]*)?", text.strip()):
        match = re.fullmatch(r"([^\[\]]*)(?:\[([^\]]*)\]([^\[\]]*))?", part)
        if match is None or part in ("(null)", "None"):
            return None
        prefix, ranges, suffix = match.groups()
        if ranges is None:
            names.add(prefix)
            continue
        for item in ranges.split(","):
            low, _, high = item.partition("-")
            if not low.isdigit() or (high and not high.isdigit()):
                return None
            width = len(low)
            for number in range(int(low), int(high or low) + 1):
                names.add(f"{prefix}{number:0{width}d}{suffix}")
    return frozenset(names) or None


def node_lost(record: Mapping[str, str] | None) -> bool:
    """True if SLURM's record of a node (None: SLURM does not know it) says SLURM has lost contact with it
    (DOWN, NOT_RESPONDING: `State=DOWN+NOT_RESPONDING`, `IDLE*`): it cannot say what still runs there (pure)."""
    if record is None:
        return True
    flags = set(record.get("State", "").replace("*", "+NOT_RESPONDING").upper().split("+"))
    return bool(flags & {"DOWN", "NOT_RESPONDING", "UNKNOWN"})


def sighting_of(record: Mapping[str, str] | None, cluster: str | None, lost: bool = False) -> JobSighting:
    """What SLURM's record of a job (None: SLURM does not know the job) says of its processes; `lost`: SLURM
    has lost the node the lease's holder ran on (node_lost) (pure)."""
    if record is None:
        return JobSighting(cluster=cluster, activity=JobActivity.GONE, state="no longer known to SLURM",
                           node_lost=lost)
    state = record.get("JobState", "").upper()
    restarts = record.get("Restarts", "")
    restart = int(restarts) if restarts.isdigit() else None
    if state in ENDED_STATES:
        activity = JobActivity.GONE
    elif state in WAITING_STATES:
        activity = JobActivity.WAITING
    else:
        activity = JobActivity.RUNNING if state == "RUNNING" else JobActivity.PRESENT
    nodes = expand_hostlist(record.get("NodeList", ""))
    if nodes is not None and record.get("BatchHost", "(null)") not in ("", "(null)", "None"):
        nodes = nodes | {record["BatchHost"]}
    return JobSighting(cluster=cluster, activity=activity, state=state or "in no state", nodes=nodes, restart=restart,
                       node_lost=lost)


@dataclass(frozen=True)
class JobRecord:
    """What `scontrol show job` says of one job that a stopping element decides on (shard/requeue.py)."""

    state: str  # JobState: RUNNING, COMPLETING (being requeued or ending), ...
    restarts: int  # how often SLURM has requeued the job so far (Restarts)
    preempt_time: str | None  # when SLURM chose to preempt the job (PreemptTime); None when it has not
    end_time: str | None = None  # EndTime, local time; for a preempted job the preemption + GraceTime

    def requeued_since(self, restart_count: int) -> bool:
        """SLURM has requeued the job since its run number `restart_count` (SLURM_RESTART_COUNT) started:
        that run ends and SLURM starts the job again by itself."""
        return self.restarts > restart_count


def job_record_of(fields: Mapping[str, str]) -> JobRecord | None:
    """A job's fields (parse_job_record) -> what a stopping element decides on (pure); None when they are
    not a job's."""
    state, restarts = fields.get("JobState"), fields.get("Restarts", "")
    if not state or not restarts.isdigit():
        return None
    def time_field(name: str) -> str | None:
        value = fields.get(name)
        return None if value in (None, "", "None", "(null)", "Unknown") else value

    return JobRecord(state.upper(), int(restarts), time_field("PreemptTime"), time_field("EndTime"))


def config_value(config_text: str, name: str) -> str | None:
    """One setting of `scontrol show config` (None when it is not listed)."""
    for line in config_text.splitlines():
        key, _, value = line.partition("=")
        if key.strip() == name:
            return value.strip()
    return None


def parse_max_array_size(config_text: str) -> int:
    """MaxArraySize from `scontrol show config` (SLURM's default when it is not listed)."""
    value = config_value(config_text, "MaxArraySize")
    return int(value) if value and value.isdigit() else DEFAULT_MAX_ARRAY_SIZE


def said(result: subprocess.CompletedProcess) -> str:
    """What a failed command said, on one line."""
    return " ".join((result.stderr or result.stdout or "").split())


class SlurmCommands:
    def __init__(self, run: Callable[..., subprocess.CompletedProcess] = subprocess.run,
                 env: Mapping[str, str] | None = None):
        self._run = run
        self._env = dict(env) if env is not None else None

    def _run_command(self, command: Sequence[str], stdin: str | None, timeout: float) -> subprocess.CompletedProcess:
        try:
            return self._run(list(command), input=stdin, capture_output=True, text=True, timeout=timeout, env=self._env)
        except FileNotFoundError:
            raise SchedulerError(f"{command[0]} was not found: run launch_shards --scheduler slurm on a machine where"
                                 " SLURM's commands work (a login node), or use --scheduler local.") from None
        except (OSError, subprocess.TimeoutExpired) as exc:
            silent = f"{' '.join(command)} did not answer ({exc})"
            raise SchedulerError(f"{silent}; is slurmctld up? (sinfo tells)") from None

    def _call(self, command: Sequence[str], stdin: str | None = None, what: str = "", timeout: float = 120) -> str:
        result = self._run_command(command, stdin, timeout)
        if result.returncode != 0:
            raise SchedulerError(f"{what or command[0]} failed: {said(result)}. That is SLURM's own answer: fix what it"
                                 " names (`sinfo` shows whether SLURM answers from this machine; submit from a login"
                                 " node), or run on this machine with --scheduler local.")
        return result.stdout

    def submit(self, script: str, dependency: str | None = None) -> str:
        """sbatch the script (from stdin); the new job id."""
        command = ["sbatch", "--parsable", *([f"--dependency={dependency}"] if dependency else [])]
        out = self._call(command, stdin=script, what="sbatch").strip()
        job_id = out.split(";")[0]  # --parsable: "id" or "id;cluster"
        if not job_id.isdigit():
            raise SchedulerError(f"sbatch answered {out!r}, not a job id.")
        return job_id

    def queue(self, job_name: str) -> list[QueuedElement]:
        """Every element of the arrays named `job_name` that SLURM still lists (by name: an id SLURM has
        forgotten would make squeue fail)."""
        out = self._call(["squeue", "--array", "--noheader", "--states=all", "--format=%F|%K|%A|%T|%r",
                          f"--name={job_name}"], what="squeue")
        return parse_queue(out)

    def cancel_pending(self, job_name: str) -> None:
        """Cancel the jobs named `job_name` that have not started (an earlier merge job of the run)."""
        self._call(["scancel", "--state=PENDING", f"--name={job_name}"], what="scancel")

    def requeue(self, job_id: str) -> None:
        """Ask SLURM to stop this job and start it again (the job must allow requeue: sbatch --requeue)."""
        self._call(["scontrol", "requeue", job_id], what=f"scontrol requeue {job_id}")

    def max_array_size(self) -> int:
        return parse_max_array_size(self._call(["scontrol", "show", "config"], what="scontrol show config"))

    def cluster_name(self) -> str | None:
        return config_value(self._call(["scontrol", "show", "config"], what="scontrol show config", timeout=30),
                            "ClusterName")

    def job_record(self, job: str, timeout: float = 30) -> dict[str, str] | None:
        """SLURM's record of one job or array element (`<array>_<task>`); None when SLURM does not know it
        (ended long enough ago to be forgotten: MinJobAge, or never there)."""
        result = self._run_command(["scontrol", "--oneliner", "show", "job", job], None, timeout=timeout)
        if result.returncode == 0:
            return parse_job_record(result.stdout)
        answer = said(result)
        if "Invalid job id specified" in answer or answer == f"Job {job} not found":
            return None
        raise SchedulerError(f"scontrol show job {job} failed: {answer}")

    def job_state(self, job: str, timeout: float = 30) -> JobRecord:
        """What a stopping element decides on (shard/requeue.py): its job's state, restarts and preemption.
        It asks with a short timeout: SLURM's kill does not wait."""
        fields = self.job_record(job, timeout)
        record = job_record_of(fields) if fields is not None else None
        if record is None:
            raise SchedulerError(f"scontrol show job {job} answered without JobState and Restarts: {fields!r}")
        return record

    def node_record(self, node: str) -> dict[str, str] | None:
        """SLURM's record of one node (None when SLURM does not know it)."""
        result = self._run_command(["scontrol", "--oneliner", "show", "node", node], None, timeout=30)
        if result.returncode == 0:
            return parse_job_record(result.stdout)
        answer = said(result)
        if answer == f"Node {node} not found":
            return None
        raise SchedulerError(f"scontrol show node {node} failed: {answer}")


def lease_scheduler(env: Mapping[str, str], slurm: SlurmCommands | None = None) -> dict[str, Any]:
    """What a shard lock needs to ask SLURM about a lease's holder on another host: this process's own
    job (`job`, recorded in its lease) and `ask_scheduler` (storage/lease.py decides from the answer).
    Outside SLURM the asker is still given: a lease written inside a job, found by a process outside
    one (a resume from the login node), is asked about too, and where SLURM's commands are missing the
    asker answers None and the heartbeat decides."""
    commands = slurm or SlurmCommands()

    def ask(job: SchedulerJob) -> JobSighting | None:
        if job.scheduler != "slurm":
            return None
        try:
            cluster = env.get(SLURM_CLUSTER_ENV, "").strip() or commands.cluster_name()
            record = commands.job_record(job.element)
            lost = node_lost(commands.node_record(job.node))
        except SchedulerError as error:
            log.warning("could not ask SLURM about job %s of the shard lease's holder (%s): its heartbeat decides",
                        job.element, error)
            return None
        return sighting_of(record, cluster, lost)

    asker: JobAsker = ask
    return {"job": this_job(env), "ask_scheduler": asker}


# --- RUN/slurm.json -------------------------------------------------------------------------------


def read_submissions(run: RunPaths) -> list[dict[str, Any]]:
    """Every submission of the run, oldest first ([] before the first)."""
    try:
        doc = read_json(run.slurm_json)
    except FileNotFoundError:
        return []
    submissions = doc.get("submissions") if isinstance(doc, dict) else None
    return [s for s in submissions if isinstance(s, dict)] if isinstance(submissions, list) else []


def record_submission(run: RunPaths, arrays: Sequence[Mapping[str, Any]], merge_job_id: str | None) -> None:
    submissions = read_submissions(run)
    submissions.append({"submitted_at": utc_now(), "arrays": [dict(a) for a in arrays], "merge_job_id": merge_job_id})
    write_json_atomic(run.slurm_json, {"format": 1, "submissions": submissions})


def recorded_arrays(submissions: Sequence[Mapping[str, Any]]) -> dict[str, int]:
    """{array job id: index offset} of every array the run submitted."""
    arrays = {}
    for submission in submissions:
        for array in submission.get("arrays", []):
            if isinstance(array, dict) and isinstance(array.get("job_id"), str):
                arrays[array["job_id"]] = int(array.get("index_offset", 0))
    return arrays


def scheduler_view(elements: Iterable[QueuedElement], offsets: Mapping[str, int]) -> dict[int, QueuedElement]:
    """Each shard index's newest element in the queue (a later submission wins over an earlier one)."""
    view: dict[int, QueuedElement] = {}
    for element in sorted(elements, key=lambda e: int(e.array_job_id) if e.array_job_id.isdigit() else 0):
        if element.array_job_id in offsets:
            view[element.array_task_id + offsets[element.array_job_id]] = element
    return view


def array_job_name(run_dir: Path) -> str:
    """The name of every array a run submits: squeue finds the run's elements by it."""
    return f"shardrun-{run_dir.name}"


def merge_job_name(run_dir: Path) -> str:
    return f"shardrun-merge-{run_dir.name}"


def queue_by_index(run: RunPaths, slurm: SlurmCommands) -> dict[int, QueuedElement]:
    """SLURM's view of each shard of a run it was given ({} for a run never submitted to SLURM)."""
    offsets = recorded_arrays(read_submissions(run))
    return scheduler_view(slurm.queue(array_job_name(run.dir)), offsets) if offsets else {}
