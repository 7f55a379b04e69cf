"""The one place that talks to SLURM (sbatch, squeue, scancel, scontrol), and the run's record of
what was submitted (RUN/slurm.json).

`SlurmCommands` runs the commands through an injected `run` (subprocess.run by default); parsing
their output is pure (`parse_queue`), so the rules are tested on text and the commands on a real
cluster (tests/test_slurm.py).
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

from shardrun.errors import SchedulerError
from shardrun.storage.atomic import read_json, utc_now, write_json_atomic
from shardrun.storage.paths import RunPaths

# States in which an element is still SLURM's business: it will run (again) without anyone resubmitting it.
WAITING_OR_RUNNING = frozenset({
    "PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "REQUEUED", "REQUEUE_FED", "REQUEUE_HOLD", "RESIZING",
    "SUSPENDED", "SIGNALING", "STAGE_OUT", "STOPPED",
})
DEFAULT_MAX_ARRAY_SIZE = 1001  # SLURM's default MaxArraySize


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


def parse_job_record(text: str) -> JobRecord | None:
    """`scontrol --oneliner show job <one job>` -> its record (pure); None when the text holds no job."""
    fields = dict(part.split("=", 1) for part in text.split() if "=" in part)
    state, restarts = fields.get("JobState"), fields.get("Restarts", "")
    if not state or not restarts.isdigit():
        return None
    def time_field(name: str) -> str | None:
        value = fields.get(name)
        return None if value in (None, "", "None", "(null)", "Unknown") else value

    return JobRecord(state.upper(), int(restarts), time_field("PreemptTime"), time_field("EndTime"))


def parse_max_array_size(config_text: str) -> int:
    """MaxArraySize from `scontrol show config` (SLURM's default when it is not listed)."""
    for line in config_text.splitlines():
        key, _, value = line.partition("=")
        if key.strip() == "MaxArraySize" and value.strip().isdigit():
            return int(value.strip())
    return DEFAULT_MAX_ARRAY_SIZE


class SlurmCommands:
    def __init__(self, run: Callable[..., subprocess.CompletedProcess] = subprocess.run,
                 env: Mapping[str, str] | None = None):
        self._run = run
        self._env = dict(env) if env is not None else None

    def _call(self, command: Sequence[str], stdin: str | None = None, what: str = "", timeout: float = 120) -> str:
        try:
            result = self._run(list(command), input=stdin, capture_output=True, text=True, timeout=timeout,
                               env=self._env)
        except FileNotFoundError:
            raise SchedulerError(f"{command[0]} was not found: run launch_shards --scheduler slurm on a machine where"
                                 " SLURM's commands work (a login node), or use --scheduler local.") from None
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise SchedulerError(f"{' '.join(command)} did not answer ({exc}); is slurmctld up? (sinfo tells)") from None
        if result.returncode != 0:
            said = " ".join((result.stderr or result.stdout).split())
            raise SchedulerError(f"{what or command[0]} failed: {said}")
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

    def job_record(self, job_id: str, timeout: float = 120) -> JobRecord:
        """SLURM's record of one job or array element (`<array>_<task>`): its state, restarts and
        preemption. A stopping element asks with a short timeout: SLURM's kill does not wait."""
        out = self._call(["scontrol", "--oneliner", "show", "job", job_id], what=f"scontrol show job {job_id}",
                         timeout=timeout)
        record = parse_job_record(out)
        if record is None:
            raise SchedulerError(f"scontrol show job {job_id} answered without JobState and Restarts: {out.strip()!r}")
        return record

    def max_array_size(self) -> int:
        return parse_max_array_size(self._call(["scontrol", "show", "config"], what="scontrol show config"))


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
