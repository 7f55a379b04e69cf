"""The one place that talks to SLURM (sbatch, squeue, scancel, scontrol), and RUN/slurm.json. Parsing is
pure so the rules test on text; the commands are tested on a cluster (docs/dev/CLUSTER_TESTS.md)."""

from __future__ import annotations

import logging
import re
import subprocess
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, TypedDict

from shardrun.errors import SchedulerError
from shardrun.storage.atomic import read_json, utc_now, write_json_atomic
from shardrun.storage.lock import JobActivity, JobAsker, JobSighting, SchedulerJob
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
# For the lease: SLURM shows COMPLETING until every node reports its processes gone; any state not
# named here counts as "processes may be there".
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
    """`<array job id>_<task id>` for an array element, else SLURM_JOB_ID; None outside SLURM.
    Not SLURM_JOB_ID for an element: the last one to start has the array's id, which requeues them all."""
    array_job, task = env.get(SLURM_ARRAY_JOB_ENV, "").strip(), env.get(SLURM_ARRAY_TASK_ENV, "").strip()
    if array_job and task:
        return f"{array_job}_{task}"
    return env.get(SLURM_JOB_ENV, "").strip() or None


def this_job(env: Mapping[str, str]) -> SchedulerJob | None:
    """The SLURM job this process runs in, for its lease; None outside one or without SLURMD_NODENAME
    (an `salloc` shell on a login node has a job's variables but is not in it)."""
    element, node = own_slurm_job(env), env.get(SLURM_NODE_ENV, "").strip()
    if element is None or not node:
        return None
    restart = env.get(SLURM_RESTART_ENV, "").strip()
    return SchedulerJob(scheduler="slurm", cluster=env.get(SLURM_CLUSTER_ENV, "").strip() or None, element=element,
                        restart=int(restart) if restart.isdigit() else 0, node=node)


def parse_job_record(text: str) -> dict[str, str]:
    """`scontrol --oneliner show job|node` -> its `Key=Value` fields (pure); keys may hold ':' and '/',
    values may hold spaces (OS=Linux 6.1 #1 SMP)."""
    record: dict[str, str] = {}
    line = next((line for line in text.splitlines() if line.strip()), "")
    for field in re.split(r" +(?=[A-Za-z][\w/:]*=)", line.strip()):
        key, sep, value = field.partition("=")
        if sep:
            record.setdefault(key, value)
    return record


def expand_hostlist(text: str) -> frozenset[str] | None:
    """`nodea,node[01-03,7]` -> node names; None if empty or unreadable: the caller assumes any node (pure)."""
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
    """True if SLURM has lost contact with the node (DOWN, NOT_RESPONDING, `IDLE*`) (pure)."""
    if record is None:
        return True
    flags = set(record.get("State", "").replace("*", "+NOT_RESPONDING").upper().split("+"))
    return bool(flags & {"DOWN", "NOT_RESPONDING", "UNKNOWN"})


def sighting_of(record: Mapping[str, str] | None, cluster: str | None, lost: bool = False) -> JobSighting:
    """What SLURM's record of a job (None: unknown) says of its processes (pure)."""
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
    """What `scontrol show job` says of one job that a stopping element decides on (shard/lifecycle.py)."""

    state: str  # JobState: RUNNING, COMPLETING (being requeued or ending), ...
    restarts: int  # how often SLURM has requeued the job so far (Restarts)
    preempt_time: str | None  # when SLURM chose to preempt the job (PreemptTime); None when it has not
    end_time: str | None = None  # EndTime, local time; for a preempted job the preemption + GraceTime

    def requeued_since(self, restart_count: int) -> bool:
        """SLURM has requeued the job since run `restart_count` (SLURM_RESTART_COUNT) started."""
        return self.restarts > restart_count


def job_record_of(fields: Mapping[str, str]) -> JobRecord | None:
    """A job's fields -> its JobRecord (pure); None when they are not a job's."""
    state, restarts = fields.get("JobState"), fields.get("Restarts", "")
    if not state or not restarts.isdigit():
        return None
    def time_field(name: str) -> str | None:
        value = fields.get(name)
        return None if value in (None, "", "None", "(null)", "Unknown") else value

    return JobRecord(state.upper(), int(restarts), time_field("PreemptTime"), time_field("EndTime"))


def config_value(config_text: str, name: str) -> str | None:
    """One setting of `scontrol show config` (None when it is not listed)."""
    values = (line.partition("=") for line in config_text.splitlines())
    return next((value.strip() for key, _, value in values if key.strip() == name), None)


def parse_max_array_size(config_text: str) -> int:
    """MaxArraySize from `scontrol show config` (SLURM's default when it is not listed)."""
    value = config_value(config_text, "MaxArraySize")
    return int(value) if value and value.isdigit() else DEFAULT_MAX_ARRAY_SIZE


def said(result: subprocess.CompletedProcess) -> str:
    """What a failed command said, on one line."""
    return " ".join((result.stderr or result.stdout or "").split())


class SlurmCommands:
    def __init__(self, run: Callable[..., subprocess.CompletedProcess] = subprocess.run):
        self._run = run  # tests pass a stand-in

    def _run_command(self, command: Sequence[str], stdin: str | None, timeout: float) -> subprocess.CompletedProcess:
        try:
            return self._run(list(command), input=stdin, capture_output=True, text=True, timeout=timeout)
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
        """Every element of the arrays named `job_name` (by name: a forgotten id would make squeue fail)."""
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
        """SLURM's record of one job or element; None when unknown (forgotten after MinJobAge)."""
        return self._show("job", job, timeout)

    def job_state(self, job: str, timeout: float = 30) -> JobRecord:
        """Its job's state, restarts and preemption, with a short timeout: SLURM's kill does not wait."""
        fields = self.job_record(job, timeout)
        record = job_record_of(fields) if fields is not None else None
        if record is None:
            raise SchedulerError(f"scontrol show job {job} answered without JobState and Restarts: {fields!r}")
        return record

    def node_record(self, node: str) -> dict[str, str] | None:
        """SLURM's record of one node (None when SLURM does not know it)."""
        return self._show("node", node, 30)

    def _show(self, kind: str, name: str, timeout: float) -> dict[str, str] | None:
        result = self._run_command(["scontrol", "--oneliner", "show", kind, name], None, timeout=timeout)
        if result.returncode == 0:
            return parse_job_record(result.stdout)
        answer = said(result)
        if "Invalid job id specified" in answer or answer == f"{kind.capitalize()} {name} not found":
            return None
        raise SchedulerError(f"scontrol show {kind} {name} failed: {answer}")


def lease_scheduler(env: Mapping[str, str], slurm: SlurmCommands | None = None) -> dict[str, Any]:
    """This process's job and an `ask_scheduler` for a lease's holder elsewhere (storage/lock.py).
    Given outside SLURM too (a login-node resume); without SLURM's commands it answers None."""
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


class SlurmSubmission(TypedDict):
    """An entry of slurm.json's `submissions`."""

    submitted_at: Annotated[str, "when SLURM accepted it"]
    arrays: Annotated[list[dict[str, Any]], "each `job_id`, `index_offset`, `indices` and `script` (the sbatch script"
                                            " kept in `slurm/`)"]
    merge_job_id: Annotated[str | None, "the merge and validate job"]


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
    entry: SlurmSubmission = {"submitted_at": utc_now(), "arrays": [dict(a) for a in arrays],
                              "merge_job_id": merge_job_id}
    submissions.append(dict(entry))
    write_json_atomic(run.slurm_json, {"format": 1, "submissions": submissions})


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
    offsets = {array["job_id"]: int(array.get("index_offset", 0)) for submission in read_submissions(run)
               for array in submission.get("arrays", [])
               if isinstance(array, dict) and isinstance(array.get("job_id"), str)}
    return scheduler_view(slurm.queue(array_job_name(run.dir)), offsets) if offsets else {}
