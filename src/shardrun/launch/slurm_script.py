"""A SLURM submission's parts, pure: the sbatch scripts (shard array, merge job) as text, and the
decisions made from the run's state (what to submit, its memory, what --time allows).

Every element runs one idempotent command whose K comes from run.json, so a requeue continues the
same shard; docs/CLUSTER.md explains the script line by line.
"""

from __future__ import annotations

import math
import re
import shlex
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from shardrun.errors import UsageError
from shardrun.launch.admission import shard_memory_bytes
from shardrun.observe.progress import format_seconds
from shardrun.partition import ShardSpec
from shardrun.scheduler.slurm import QueuedElement
from shardrun.states import ShardState
from shardrun.storage.paths import RunPaths
from shardrun.storage.status import status_document
from shardrun.units import MIB

# sbatch --signal=[B:]SIG[@SECONDS]: the signals a shard can take as its warning (run_production --preempt-signal).
_SIGNAL_RE = re.compile(r"^(?:B:)?(?:SIG)?(TERM|USR1|USR2)(?:@(\d+))?$")
DEFAULT_SIGNAL = "USR1@120"


@dataclass(frozen=True)
class WarningSignal:
    name: str  # TERM, USR1 or USR2
    lead_seconds: int

    @classmethod
    def parse(cls, text: str) -> WarningSignal:
        match = _SIGNAL_RE.match(text.strip().upper())
        if not match:
            raise UsageError(f"--signal {text!r}: give SIGNAL@SECONDS with SIGNAL one of TERM, USR1, USR2 (for example"
                             f" {DEFAULT_SIGNAL}: USR1 two minutes before the time limit).")
        lead = int(match.group(2) or 60)  # sbatch's own default lead is 60 s
        if not 10 <= lead <= 65535:
            raise UsageError(f"--signal {text!r}: the lead must be 10 to 65535 seconds (SLURM's limit), got {lead}.")
        return cls(match.group(1), lead)

    def __str__(self) -> str:
        return f"{self.name}@{self.lead_seconds}"


_TIME_RE = re.compile(r"^(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?$")


def time_limit_seconds(text: str) -> int | None:
    """sbatch --time in seconds (None: unlimited). SLURM's forms: M, M:S, H:M:S, D-H, D-H:M, D-H:M:S."""
    if text.strip().upper() in ("UNLIMITED", "INFINITE"):
        return None
    match = _TIME_RE.match(text.strip())
    if not match:
        raise UsageError(f"--time {text!r}: give a SLURM time limit such as 90 (minutes), 4:00:00 or 2-00:00:00.")
    days, first, second, third = (int(part) if part else None for part in match.groups())
    assert first is not None  # the pattern requires the first number
    if days is None and third is None:  # M or M:S
        seconds = first * 60 + (second or 0)
    else:  # H:M:S, D-H, D-H:M, D-H:M:S
        seconds = (days or 0) * 86400 + first * 3600 + (second or 0) * 60 + (third or 0)
    if seconds <= 0:
        raise UsageError(f"--time {text!r}: the time limit must be more than zero.")
    return seconds


@dataclass(frozen=True)
class ElementJob:
    """Everything one array of shard elements needs (one run may need several: index_offset)."""

    run_dir: Path
    config_path: Path
    shards: int
    array_ids: tuple[int, ...]  # SLURM_ARRAY_TASK_ID values; shard index = id + index_offset
    index_offset: int
    python: str
    workdir: Path
    log_dir: Path
    pilot: int | None
    xmx: str
    cpus: int
    mem_mib: int
    signal: WarningSignal
    requeue_limit: int
    max_parallel: int | None = None
    time_limit: str | None = None
    sbatch_options: tuple[str, ...] = ()
    commit_interval_seconds: float | None = None  # None: the shard's own default
    retry_failed: bool = False  # run the shard's failed users again (run_production --resume RUN --retry-failed)
    fail_fast: int | None = None  # None: the shard's own default (run_production --fail-fast)

    @property
    def shard_indices(self) -> list[int]:
        return [array_id + self.index_offset for array_id in self.array_ids]


def index_ranges(indices: Iterable[int]) -> str:
    """0,1,2,5,7,8 -> '0-2,5,7-8': sbatch --array syntax."""
    spans: list[list[int]] = []  # [first, last] of each run of consecutive indices
    for index in sorted(set(indices)):
        if spans and index == spans[-1][1] + 1:
            spans[-1][1] = index
        else:
            spans.append([index, index])
    return ",".join(str(first) if first == last else f"{first}-{last}" for first, last in spans)


def split_for_array_size(indices: Sequence[int], max_array_size: int) -> list[tuple[int, list[int]]]:
    """Shard indices as arrays whose ids stay below MaxArraySize: [(index_offset, array ids)]."""
    if max_array_size < 1:
        raise ValueError("MaxArraySize must be at least 1")
    groups: dict[int, list[int]] = {}
    for index in sorted(set(indices)):
        offset = index // max_array_size * max_array_size
        groups.setdefault(offset, []).append(index - offset)
    return sorted(groups.items())


def _q(value: object) -> str:
    return shlex.quote(str(value))


def element_command(job: ElementJob) -> list[str]:
    """The element's one command (--retry-failed with --resume, harmless for a shard never started)."""
    mode = ["--full"] if job.pilot is None else ["--pilot", str(job.pilot)]
    where = ["--resume", str(job.run_dir), "--retry-failed"] if job.retry_failed else ["--out", str(job.run_dir)]
    return [job.python, "-m", "shardrun", "run", "--config", str(job.config_path), *mode, "--shard", "auto",
            *where, "--xmx", job.xmx, "--threads", str(job.cpus),
            "--preempt-signal", job.signal.name, "--preempt-lead", str(job.signal.lead_seconds),
            "--requeue-limit", str(job.requeue_limit),
            *([] if job.commit_interval_seconds is None else ["--commit-interval", str(job.commit_interval_seconds)]),
            *([] if job.fail_fast is None else ["--fail-fast", str(job.fail_fast)])]


def array_script(job: ElementJob, job_name: str) -> str:
    cap = f"%{job.max_parallel}" if job.max_parallel else ""
    lines = [
        "#!/bin/bash",
        f"# shardrun: {len(job.array_ids)} of the {job.shards} shards of {job.run_dir} as a SLURM job array.",
        "# Written by launch_shards --scheduler slurm; docs/CLUSTER.md explains every line.",
        f"#SBATCH --job-name={job_name}",
        f"#SBATCH --array={index_ranges(job.array_ids)}{cap}",
        "#SBATCH --ntasks=1",
        f"#SBATCH --cpus-per-task={job.cpus}",
        f"#SBATCH --mem={job.mem_mib}M",
        *([f"#SBATCH --time={job.time_limit}"] if job.time_limit else []),
        f"#SBATCH --signal=B:{job.signal}",
        "#SBATCH --requeue",
        "#SBATCH --open-mode=append",
        # shard<i>.log; with an offset SLURM's %a is no shard index: the script writes shard<i>.log itself
        f"#SBATCH --output={job.log_dir / ('shard%a.log' if job.index_offset == 0 else 'slurm-%A_%a.log')}",
        f"#SBATCH --chdir={job.workdir}",
        *(f"#SBATCH {option}" for option in job.sbatch_options),
        "",
        "set -eu",
        "# K is the run's (run.json); said here too, so an element never takes the array's size for it.",
        f"export SHARDRUN_SHARDS={job.shards}",
    ]
    if job.index_offset:
        lines += [f"export SHARDRUN_INDEX_OFFSET={job.index_offset}",
                  f'exec >>{_q(job.log_dir)}/"shard$((SLURM_ARRAY_TASK_ID + {job.index_offset})).log" 2>&1']
    lines += [
        'echo "=== $(date -u +%Y-%m-%dT%H:%M:%SZ) SLURM job ${SLURM_JOB_ID} (array ${SLURM_ARRAY_JOB_ID}'
        ' element ${SLURM_ARRAY_TASK_ID}) on $(hostname), restart ${SLURM_RESTART_COUNT:-0}"',
        "# exec: the shard itself is the batch step, so the --signal warning (B:) reaches it directly.",
        "exec " + " ".join(_q(part) for part in element_command(job)),
        "",
    ]
    return "\n".join(lines)


def merge_script(run_dir: Path, config_path: Path, python: str, workdir: Path, log_dir: Path, job_name: str,
                 sbatch_options: Sequence[str] = (), max_failed: str = "0", mem_mib: int | None = None) -> str:
    """The merge job (afterany every element); it fails (exit 5) with more failures than `max_failed`."""
    merged = run_dir / "merged"
    return "\n".join([
        "#!/bin/bash",
        f"# shardrun: merge and validate {run_dir} once its shards have ended (afterany).",
        f"#SBATCH --job-name={job_name}",
        "#SBATCH --ntasks=1",
        "#SBATCH --cpus-per-task=1",
        *([f"#SBATCH --mem={mem_mib}M"] if mem_mib else []),
        "#SBATCH --open-mode=append",
        f"#SBATCH --output={log_dir / 'merge.log'}",
        f"#SBATCH --chdir={workdir}",
        *(f"#SBATCH {option}" for option in sbatch_options),
        "",
        "set -u",
        'echo "=== $(date -u +%Y-%m-%dT%H:%M:%SZ) SLURM job ${SLURM_JOB_ID}: merge"',
        f"{_q(python)} -m shardrun merge --run {_q(run_dir)} --output {_q(merged)} --overwrite || exit $?",
        f"exec {_q(python)} -m shardrun validate --dir {_q(merged)} --config {_q(config_path)}"
        f" --max-failed {_q(max_failed)}",
        "",
    ])


COMPLETE = frozenset({ShardState.COMPLETED, ShardState.COMPLETED_WITH_FAILURES})


def element_memory_mib(heap_bytes: int, data_bytes: int) -> int:
    """sbatch --mem for one shard, as admission.py counts it."""
    return math.ceil(shard_memory_bytes(heap_bytes, data_bytes) / MIB)


# A merge peaked at 2.4 GiB for 2,000,000 rows x 32 columns plus 505 MiB in its picture process
# (docs/dev/PERFORMANCE.md, "Merge and validate"): about 46 bytes a cell; 64 leaves room for wider text.
MERGE_BYTES_PER_CELL = 64
MERGE_BASE_MIB = 768  # Python, pandas, pyarrow and matplotlib in the merge and its picture process


def merge_memory_mib(users: int, rows_per_user: int, columns: int) -> int:
    """sbatch --mem for the merge + validate job: a base plus the result set's cells."""
    cells = users * max(rows_per_user, 1) * max(columns, 1)
    return MERGE_BASE_MIB + math.ceil(cells * MERGE_BYTES_PER_CELL / MIB)


def shards_to_submit(shards: int, complete: Iterable[int], queued: Iterable[int],
                     retry: Iterable[int] = ()) -> list[int]:
    """The shards neither complete (unless in `retry`) nor queued."""
    settled = (set(complete) - set(retry)) | set(queued)
    return [index for index in range(shards) if index not in settled]


def users_over_time_limit(predicted: Mapping[str, float], limit_seconds: int,
                          lead_seconds: int) -> list[tuple[str, float]]:
    """Users predicted to outlast the time before the warning (abandoned at every requeue), longest first."""
    budget = limit_seconds - lead_seconds
    return sorted(((user, seconds) for user, seconds in predicted.items() if seconds > budget),
                  key=lambda item: (-item[1], item[0]))


def time_limit_lines(predicted: Mapping[str, float] | None, limit_seconds: int | None, lead_seconds: int) -> list[str]:
    """What the submission says about --time: the longest user, and every user that cannot finish."""
    if limit_seconds is None:
        return []
    if predicted is None:
        return ["time: the task estimates no user's time; nothing checked against --time"]
    if not predicted:
        return []
    longest = max(predicted.values())
    lines = [f"time: {format_seconds(limit_seconds)} per element; the longest user is estimated at"
             f" {format_seconds(longest)} (the task's estimate)"]
    over = users_over_time_limit(predicted, limit_seconds, lead_seconds)
    for user, seconds in over[:20]:
        lines.append(f"  cannot finish within --time: user {user!r} (estimated {format_seconds(seconds)}, over the"
                     f" {format_seconds(limit_seconds - lead_seconds)} an element has before its warning)")
    if len(over) > 20:
        lines.append(f"  ... and {len(over) - 20} more users")
    if over:
        lines.append(f"  {len(over)} users would be abandoned at every requeue: raise --time above"
                     f" {format_seconds(over[0][1] + lead_seconds)}")
    return lines


def describe_shard(index: int, state: str | None, queued: QueuedElement | None, failed_users: int = 0,
                   retry: bool = False) -> str:
    if queued is not None and queued.waiting_or_running:
        return f"shard {index}: in the queue ({queued})"
    if state in COMPLETE and retry and failed_users:
        return f"shard {index}: to submit, to run its {failed_users} failed users again ({state})"
    if state in COMPLETE:
        return f"shard {index}: {state}"
    return f"shard {index}: to submit ({state or 'never started'})"


# --- the run on disk ---------------------------------------------------------------------------------


def status_documents(run: RunPaths, shards: int) -> dict[int, dict]:
    """Each shard's status.json by index, read once ({} for a shard without one)."""
    return {index: status_document(run.shard(ShardSpec(index, shards)).status) for index in range(shards)}


def shard_states(docs: Mapping[int, Mapping]) -> dict[int, str | None]:
    return {index: doc.get("state") for index, doc in docs.items()}


def failed_users_by_shard(docs: Mapping[int, Mapping]) -> dict[int, int]:
    """Each shard's failed users as its status.json counts them (0 when it has none or no status)."""
    counts = {index: doc.get("users_failed") for index, doc in docs.items()}
    return {index: count if isinstance(count, int) else 0 for index, count in counts.items()}


def merged_valid(merged: Path) -> bool:
    """The run's own merge exists and passed validation."""
    return status_document(merged / "validation.json").get("valid") is True
