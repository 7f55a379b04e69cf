"""`launch_shards --scheduler slurm`: a run's shards as a SLURM job array, then a merge job.

One command both starts and continues a run. On a new run it writes run.json (so every element
takes K from the run), submits an array of K elements and a merge + validate job that waits for
them (afterany). On an existing run (`--out DIR`) it submits only the shards that are neither
complete (status.json) nor still SLURM's business (waiting, running, requeued), by index, and a new
merge job in place of the one still pending. With `--retry-failed` the complete shards that have
failed users are submitted too, and every element runs its shard's failed users again. `--dry-run` prints all of it and submits nothing.
Every decision is a pure function below; SLURM itself is behind scheduler.slurm.SlurmCommands.
"""

from __future__ import annotations

import math
import sys
from contextlib import ExitStack
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Callable, Iterable, Mapping

from shardrun.config import RunConfig
from shardrun.errors import EXIT_OK, UsageError
from shardrun.heap_plan import plan_heap
from shardrun.launch.admission import measure_launch_data, refuse_shards_without_users, shard_memory_bytes
from shardrun.launch.launcher import check_same_run, hold_run, refuse_a_dir_of_something_else, refuse_if
from shardrun.launch.slurm_script import (
    ElementJob, WarningSignal, array_script, index_ranges, merge_script, split_for_array_size, time_limit_seconds,
)
from shardrun.observe.progress import format_seconds
from shardrun.results.tolerance import NO_FAILED, FailedTolerance
from shardrun.scheduler.slurm import (
    QueuedElement, SlurmCommands, array_job_name, merge_job_name, queue_by_index, record_submission,
)
from shardrun.shard.jvm import task_classpath
from shardrun.shard.plan import partition_report
from shardrun.shard.prepare import run_label
from shardrun.shard.run import ensure_run_document, run_document
from shardrun.sharding import ShardSpec
from shardrun.states import ShardState
from shardrun.storage.atomic import read_json, write_bytes_atomic
from shardrun.storage.durability import durable_write
from shardrun.storage.paths import RunPaths
from shardrun.storage.status import status_document
from shardrun.task import load_task
from shardrun.units import MIB

COMPLETE = frozenset({ShardState.COMPLETED, ShardState.COMPLETED_WITH_FAILURES})


@dataclass(frozen=True)
class ClusterOptions:
    config_path: Path
    shards: int
    signal: WarningSignal
    out: Path | None = None
    pilot: int | None = None
    dry_run: bool = False
    merge: bool = True
    max_parallel: int | None = None  # the array's %M
    cpus: int = 1
    mem_mib: int | None = None  # None: from the heap model and the data
    merge_mem_mib: int | None = None  # None: from the result set's expected size (merge_memory_mib)
    time_limit: str | None = None
    requeue_limit: int = 3
    sbatch_options: tuple[str, ...] = ()
    commit_interval_seconds: float | None = None  # None: the shard's own default
    retry_failed: bool = False  # the elements run their shard's failed users again; complete shards with some too
    fail_fast: int | None = None  # None: the shard's own default (run_production --fail-fast)
    max_failed: FailedTolerance = NO_FAILED  # the merge job's validation: failed users the run may have
    invocation: str = "launch_shards"  # the command the user ran, which the continue hint repeats


@dataclass
class Submission:
    run_dir: Path
    to_submit: list[int]
    arrays: list[dict] = field(default_factory=list)  # {"job_id", "index_offset", "indices"}
    merge_job_id: str | None = None
    exit_code: int = EXIT_OK


# --- pure decisions -------------------------------------------------------------------------------


def element_memory_mib(heap_bytes: int, data_bytes: int) -> int:
    """sbatch --mem for one shard: its Java heap, the process beyond the heap (measured, admission.py)
    and the load peak of its share of the input (admission's rule)."""
    return math.ceil(shard_memory_bytes(heap_bytes, data_bytes) / MIB)


# A merge peaked at 2.4 GiB for 2,000,000 rows x 32 columns plus 505 MiB in its picture process
# (docs/dev/PERFORMANCE.md, "Merge and validate"): about 46 bytes a cell; 64 leaves room for wider text.
MERGE_BYTES_PER_CELL = 64
MERGE_BASE_MIB = 768  # Python, pandas, pyarrow and matplotlib in the merge and its picture process


def merge_memory_mib(users: int, rows_per_user: int, columns: int) -> int:
    """sbatch --mem for the merge + validate job: a base for two processes' libraries and the result
    set's cells (every user's rows), which the merge and its picture hold in memory at once."""
    cells = users * max(rows_per_user, 1) * max(columns, 1)
    return MERGE_BASE_MIB + math.ceil(cells * MERGE_BYTES_PER_CELL / MIB)


def shards_to_submit(shards: int, complete: Iterable[int], queued: Iterable[int],
                     retry: Iterable[int] = ()) -> list[int]:
    """The shard indices that are neither complete nor still waiting or running in the queue; a
    complete shard in `retry` (--retry-failed: it has failed users) is submitted again unless queued."""
    settled = (set(complete) - set(retry)) | set(queued)
    return [index for index in range(shards) if index not in settled]


def users_over_time_limit(predicted: Mapping[str, float], limit_seconds: int, lead_seconds: int) -> list[tuple[str, float]]:
    """Users whose predicted time exceeds what an element has before its warning (the limit less the
    lead): they would be abandoned at every requeue. Longest first (pure)."""
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


# --- the run on disk --------------------------------------------------------------------------------


def status_documents(run: RunPaths, shards: int) -> dict[int, dict]:
    """Each shard's status.json by index, read once ({} for a shard without one)."""
    return {index: status_document(run.shard(ShardSpec(index, shards)).status) for index in range(shards)}


def shard_states(docs: Mapping[int, Mapping]) -> dict[int, str | None]:
    return {index: doc.get("state") for index, doc in docs.items()}


def failed_users_by_shard(docs: Mapping[int, Mapping]) -> dict[int, int]:
    """Each shard's failed users as its status.json counts them (0 when it has none or no status)."""
    counts = {index: doc.get("users_failed") for index, doc in docs.items()}
    return {index: count if isinstance(count, int) else 0 for index, count in counts.items()}


def resolve_run_dir(config: RunConfig, options: ClusterOptions, data_fingerprint: str) -> tuple[RunPaths, bool]:
    """(the run dir, whether it holds this run already); a new one is only named, not created."""
    if options.out is not None:
        run = RunPaths(options.out.resolve())
        if run.run_json.is_file():
            check_same_run(run, "--out", options.shards, config.hash, options.pilot, data_fingerprint)
            return run, True
        refuse_a_dir_of_something_else(run)
        return run, False
    task = load_task(config.task)
    name = f"{run_label(task, config, options.pilot)}_{datetime.now():%Y%m%d_%H%M%S}"
    return RunPaths(config.output.root.resolve() / name), False


# --- the submission ---------------------------------------------------------------------------------


def merged_valid(run: RunPaths) -> bool:
    """The run's own merge exists and passed validation."""
    try:
        return read_json(run.merged / "validation.json").get("valid") is True
    except (OSError, ValueError, AttributeError):
        return False


def submit_array(run: RunPaths, job: ElementJob, script: str, slurm: SlurmCommands) -> dict:
    """Keep the script in RUN/slurm/, submit it, and record the array in slurm.json at once: a
    submission that is not recorded would be submitted again by the next resubmission."""
    path = run.slurm_scripts / f"array_{datetime.now():%Y%m%d_%H%M%S_%f}.sh"
    durable_write("the sbatch script", run.slurm_scripts,
                  lambda: (path.parent.mkdir(parents=True, exist_ok=True), write_bytes_atomic(path, script.encode())))
    array = {"job_id": slurm.submit(script), "index_offset": job.index_offset, "indices": job.shard_indices,
             "script": str(path.relative_to(run.dir))}
    durable_write("slurm.json", run.dir, lambda: record_submission(run, [array], None))
    return array


def submit_run(config: RunConfig, options: ClusterOptions, slurm: SlurmCommands | None = None,
               out: Callable[[str], None] = print) -> Submission:
    slurm = slurm or SlurmCommands()
    task = load_task(config.task)
    if not config.jvm.xmx_is_auto:
        refuse_if(task.preflight(config.settings, config.jvm.xmx_bytes))
    task_classpath(task, config.settings, config.jvm)
    data = measure_launch_data(task, config.settings, config.jvm, options.shards, config.partition)
    heap = plan_heap(config.jvm, data.needs, list(data.index.user_ids), advice=task.heap_advice(config.settings),
                     checked=data.checked)
    refuse_if(task.preflight(config.settings, heap.heap))
    for line in heap.report_lines():
        out(line)
    for line in partition_report(data.index, options.shards, config.partition):
        out(line)
    limit_seconds = time_limit_seconds(options.time_limit) if options.time_limit else None
    # The time estimates need every user's rows: read only when --time asks for them.
    predicted = task.user_seconds(config.settings, task.load(config.settings)) if limit_seconds else None
    for line in time_limit_lines(predicted, limit_seconds, options.signal.lead_seconds):
        out(line)
    config = replace(config, jvm=heap.jvm)
    run, existing = resolve_run_dir(config, options, data.index.fingerprint)
    if not existing:
        refuse_shards_without_users(options.shards, len(data.index.user_ids))
    if options.retry_failed and not existing:
        raise UsageError(f"--retry-failed: {run.dir} holds no run (no run.json), so it has no failed users to run"
                         " again; pass the dir of the run whose failed users to retry with --out.")

    with ExitStack() as held:
        if not options.dry_run:  # one submission of a run at a time, and none while a local launcher runs it
            held.callback(hold_run(
                run, new_run=not existing,
                fix=f"wait for it to end, then run this command again: it submits only what is neither complete"
                    f" nor in the queue (follow the run with: monitor_progress {run.dir} --watch).").release)
        docs = status_documents(run, options.shards) if existing else {}
        states = shard_states(docs)
        failed = failed_users_by_shard(docs)
        queue = queue_by_index(run, slurm) if existing else {}
        queued = [index for index, element in queue.items() if element.waiting_or_running]
        complete = [index for index, state in states.items() if state in COMPLETE]
        retry = [index for index, count in failed.items() if count > 0] if options.retry_failed else []
        submission = Submission(run.dir, shards_to_submit(options.shards, complete, queued, retry))
        if existing:
            out(f"run {run.dir}: {len(complete)} of {options.shards} shards complete, {len(queued)} in the queue")
            for index in range(options.shards):
                if index not in complete or index in retry:
                    said = describe_shard(index, states.get(index), queue.get(index), failed.get(index, 0),
                                          options.retry_failed)
                    out(f"  {said}")

        mem_mib = options.mem_mib or element_memory_mib(heap.heap, data.share_bytes)
        workdir = Path.cwd()
        log_dir = config.output.log_dir.resolve()
        jobs = [
            ElementJob(run_dir=run.dir, config_path=options.config_path.resolve(), shards=options.shards,
                       array_ids=tuple(ids), index_offset=offset, python=sys.executable, workdir=workdir, log_dir=log_dir,
                       pilot=options.pilot, xmx=heap.jvm.xmx, cpus=options.cpus, mem_mib=mem_mib, signal=options.signal,
                       requeue_limit=options.requeue_limit, max_parallel=options.max_parallel,
                       time_limit=options.time_limit, sbatch_options=options.sbatch_options,
                       commit_interval_seconds=options.commit_interval_seconds, retry_failed=options.retry_failed,
                       fail_fast=options.fail_fast)
            for offset, ids in split_for_array_size(submission.to_submit, slurm.max_array_size())
        ]
        scripts = [array_script(job, array_job_name(run.dir)) for job in jobs]
        # The merge job waits for every element of the run still in the queue, old arrays and new.
        wait_for = sorted({element.array_job_id for element in queue.values() if element.waiting_or_running})
        merge_mem_mib = options.merge_mem_mib or merge_memory_mib(
            len(data.index.user_ids), len(task.failed_rows(config.settings, "any user", "rows per user")),
            len(task.result_columns(config.settings)))
        merge_text = merge_script(run.dir, options.config_path.resolve(), sys.executable, workdir, log_dir,
                                  merge_job_name(run.dir), options.sbatch_options, max_failed=str(options.max_failed),
                                  mem_mib=merge_mem_mib)
        merge_needed = options.merge and bool(jobs or wait_for or not merged_valid(run))
        out(f"memory per shard: {mem_mib} MiB (sbatch --mem; jvm {heap.jvm_line()})")
        if merge_needed:
            out(f"memory of the merge job: {merge_mem_mib} MiB (sbatch --mem; set it with --merge-mem)")
        if not submission.to_submit:
            out("nothing to submit: every shard is complete or in the queue")

        if options.dry_run:
            for job, script in zip(jobs, scripts):
                out(f"--- array of shards {index_ranges(job.shard_indices)} (dry run: not submitted) ---")
                out(script)
            if merge_needed:
                out("--- merge job (dry run: not submitted), after the arrays end (afterany) ---")
                out(merge_text)
            return submission

        document = {**run_document(config, task, data.index, options.shards, options.pilot), "jvm": config.jvm.jvm_args()}
        durable_write("run.json", run.dir, lambda: ensure_run_document(run, document))
        # SLURM cannot open an element's --output in a missing dir: the element would fail before it starts.
        durable_write("the log dir", log_dir, lambda: log_dir.mkdir(parents=True, exist_ok=True))
        for job, script in zip(jobs, scripts):
            submission.arrays.append(submit_array(run, job, script, slurm))
            out(f"submitted shards {index_ranges(job.shard_indices)} of {options.shards} as array job"
                f" {submission.arrays[-1]['job_id']}")
        if merge_needed:
            slurm.cancel_pending(merge_job_name(run.dir))  # an earlier merge job would merge too early
            after = [*wait_for, *(array["job_id"] for array in submission.arrays)]
            submission.merge_job_id = slurm.submit(merge_text, dependency=f"afterany:{':'.join(after)}" if after else None)
            durable_write("slurm.json", run.dir, lambda: record_submission(run, [], submission.merge_job_id))
            out(f"submitted the merge + validate job {submission.merge_job_id}"
                + (f" (after {', '.join(after)} end)" if after else ""))
        out(f"run dir: {run.dir}")
        out(f"follow it: monitor_progress {run.dir} --watch   (SLURM's view: squeue --name={array_job_name(run.dir)})")
        out(f"continue it (resubmit what is missing): {options.invocation} --scheduler slurm --config {options.config_path}"
            f" --shards {options.shards} --out {run.dir}" + (f" --pilot {options.pilot}" if options.pilot else ""))
        return submission

