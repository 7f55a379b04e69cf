"""The sbatch scripts a run submits (shard array, merge job), as text (pure).

Every element runs one idempotent command whose K comes from run.json, so a requeue continues the
same shard; docs/CLUSTER.md explains the script line by line.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from shardrun.errors import UsageError

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
    if days is not None:  # D-H, D-H:M, D-H:M:S
        seconds = days * 86400 + first * 3600 + (second or 0) * 60 + (third or 0)
    elif third is not None:  # H:M:S
        seconds = first * 3600 + (second or 0) * 60 + third
    else:  # M or M:S
        seconds = first * 60 + (second or 0)
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
    ordered = sorted(set(indices))
    parts = []
    start = previous = None
    for index in [*ordered, None]:
        if start is not None and index is not None and index - 1 == previous:
            previous = index
            continue
        if start is not None:
            parts.append(str(start) if start == previous else f"{start}-{previous}")
        start = previous = index
    return ",".join(parts)


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


def log_pattern(job: ElementJob) -> str:
    """SLURM's --output: `analysis/shard<i>.log`; with an offset, `slurm-<array>_<id>.log` and the script
    writes shard<i>.log itself."""
    name = "shard%a.log" if job.index_offset == 0 else "slurm-%A_%a.log"
    return str(job.log_dir / name)


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
        f"#SBATCH --output={log_pattern(job)}",
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
