"""`launch_shards --scheduler slurm`: a run's shards as a SLURM job array, then a merge job.

One command starts and continues a run (only shards neither complete nor queued are submitted again).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from shardrun.config import RunConfig
from shardrun.launch.plan import RunPlan, plan_run
from shardrun.launch.run_dir import given_run_dir, hold_run
from shardrun.launch.slurm_script import (
    COMPLETE,
    ElementJob,
    WarningSignal,
    array_script,
    describe_shard,
    element_memory_mib,
    failed_users_by_shard,
    index_ranges,
    merge_memory_mib,
    merge_script,
    merged_valid,
    shard_states,
    shards_to_submit,
    split_for_array_size,
    status_documents,
    time_limit_lines,
    time_limit_seconds,
)
from shardrun.results.tolerance import NO_FAILED, FailedTolerance
from shardrun.scheduler.slurm import SlurmCommands, array_job_name, merge_job_name, queue_by_index, record_submission
from shardrun.storage.atomic import write_bytes_atomic
from shardrun.storage.durability import durable_write
from shardrun.storage.paths import RunPaths


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
    to_submit: list[int]
    arrays: list[dict] = field(default_factory=list)  # {"job_id", "index_offset", "indices"}
    merge_job_id: str | None = None


# --- the submission ---------------------------------------------------------------------------------


def submit_array(run: RunPaths, job: ElementJob, script: str, slurm: SlurmCommands) -> dict:
    """Keep the script in RUN/slurm/, submit it, and record it in slurm.json at once (else it is resubmitted)."""
    path = run.slurm_scripts / f"array_{datetime.now():%Y%m%d_%H%M%S_%f}.sh"

    def write() -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_bytes_atomic(path, script.encode())

    durable_write("the sbatch script", run.slurm_scripts, write)
    array = {"job_id": slurm.submit(script), "index_offset": job.index_offset, "indices": job.shard_indices,
             "script": str(path.relative_to(run.dir))}
    durable_write("slurm.json", run.dir, lambda: record_submission(run, [array], None))
    return array


def submit_run(config: RunConfig, options: ClusterOptions, slurm: SlurmCommands | None = None,
               out: Callable[[str], None] = print) -> Submission:
    slurm = slurm or SlurmCommands()
    out_dir = options.out.resolve() if options.out is not None else None
    where = given_run_dir(config, options.shards, options.pilot, out_dir, retry_failed=options.retry_failed)
    plan = plan_run(config, where, options.shards, options.pilot)
    for line in [*plan.heap.report_lines(), *plan.partition_lines(options.shards)]:
        out(line)
    limit_seconds = time_limit_seconds(options.time_limit) if options.time_limit else None
    # The time estimates need every user's rows: read only when --time asks for them.
    predicted = plan.user_seconds() if limit_seconds else None
    for line in time_limit_lines(predicted, limit_seconds, options.signal.lead_seconds):
        out(line)
    run = where.run or RunPaths(config.output.root.resolve()
                                / f"{plan.label(options.pilot)}_{datetime.now():%Y%m%d_%H%M%S}")
    with ExitStack() as held:
        if not options.dry_run:  # one submission of a run at a time, and none while a local launcher runs it
            held.callback(hold_run(run, new_run=not where.existing, fix=(
                f"wait for it to end, then run this command again: it submits only what is neither complete nor in"
                f" the queue (follow the run with: monitor_progress {run.dir} --watch).")).release)
        submission, queue = what_to_submit(run, where.existing, options, slurm, out)
        mem_mib = options.mem_mib or element_memory_mib(plan.heap.heap, plan.data.share_bytes)
        jobs = element_jobs(run, plan, options, submission.to_submit, mem_mib, slurm.max_array_size())
        # The merge job waits for every element of the run still in the queue, old arrays and new.
        wait_for = sorted({element.array_job_id for element in queue.values() if element.waiting_or_running})
        merge_mem_mib = options.merge_mem_mib or merge_memory_mib(
            len(plan.data.index.user_ids),
            len(plan.task.failed_rows(plan.config.settings, "any user", "rows per user")),
            len(plan.task.result_columns(plan.config.settings)))
        merge_text = merge_script(run.dir, options.config_path.resolve(), sys.executable, Path.cwd(),
                                  plan.config.output.log_dir.resolve(), merge_job_name(run.dir), options.sbatch_options,
                                  max_failed=str(options.max_failed), mem_mib=merge_mem_mib)
        merge_needed = options.merge and bool(jobs or wait_for or not merged_valid(run.merged))
        out(f"memory per shard: {mem_mib} MiB (sbatch --mem; jvm {plan.heap.jvm_line()})")
        if merge_needed:
            out(f"memory of the merge job: {merge_mem_mib} MiB (sbatch --mem; set it with --merge-mem)")
        if not submission.to_submit:
            out("nothing to submit: every shard is complete or in the queue")
        scripts = {f"array of shards {index_ranges(job.shard_indices)}": array_script(job, array_job_name(run.dir))
                   for job in jobs}
        if options.dry_run:
            for what, script in [*scripts.items(), *([("merge job", merge_text)] if merge_needed else [])]:
                out(f"--- {what} (dry run: not submitted)"
                    f"{', after the arrays end (afterany)' if what == 'merge job' else ''} ---")
                out(script)
            return submission
        plan.write_run_json(run, options.shards, options.pilot)
        submit_all(run, plan, submission, list(zip(jobs, scripts.values())), merge_text if merge_needed else None,
                   wait_for, slurm, options, out)
        return submission


def what_to_submit(run: RunPaths, existing: bool, options: ClusterOptions, slurm: SlurmCommands,
                   out: Callable[[str], None]) -> tuple[Submission, dict]:
    """The shards neither complete (unless retried) nor queued, explained; and the queue by index."""
    docs = status_documents(run, options.shards) if existing else {}
    states = shard_states(docs)
    failed = failed_users_by_shard(docs)
    queue = queue_by_index(run, slurm) if existing else {}
    queued = [index for index, element in queue.items() if element.waiting_or_running]
    complete = [index for index, state in states.items() if state in COMPLETE]
    retry = [index for index, count in failed.items() if count > 0] if options.retry_failed else []
    if existing:
        out(f"run {run.dir}: {len(complete)} of {options.shards} shards complete, {len(queued)} in the queue")
        for index in range(options.shards):
            if index not in complete or index in retry:
                said = describe_shard(index, states.get(index), queue.get(index), failed.get(index, 0),
                                      options.retry_failed)
                out(f"  {said}")
    return Submission(shards_to_submit(options.shards, complete, queued, retry)), queue


def element_jobs(run: RunPaths, plan: RunPlan, options: ClusterOptions, to_submit: list[int], mem_mib: int,
                 max_array_size: int) -> list[ElementJob]:
    """The shards to submit as job arrays of at most SLURM's MaxArraySize."""
    return [
        ElementJob(run_dir=run.dir, config_path=options.config_path.resolve(), shards=options.shards,
                   array_ids=tuple(ids), index_offset=offset, python=sys.executable, workdir=Path.cwd(),
                   log_dir=plan.config.output.log_dir.resolve(), pilot=options.pilot, xmx=plan.heap.jvm.xmx,
                   cpus=options.cpus, mem_mib=mem_mib, signal=options.signal, requeue_limit=options.requeue_limit,
                   max_parallel=options.max_parallel, time_limit=options.time_limit,
                   sbatch_options=options.sbatch_options, commit_interval_seconds=options.commit_interval_seconds,
                   retry_failed=options.retry_failed, fail_fast=options.fail_fast)
        for offset, ids in split_for_array_size(to_submit, max_array_size)
    ]


def submit_all(run: RunPaths, plan: RunPlan, submission: Submission, arrays: list[tuple[ElementJob, str]],
               merge_text: str | None, wait_for: list[str], slurm: SlurmCommands, options: ClusterOptions,
               out: Callable[[str], None]) -> None:
    """Submit the arrays, then the merge job after every element of the run (afterany), and say how to go on."""
    log_dir = plan.config.output.log_dir.resolve()
    # SLURM cannot open an element's --output in a missing dir: the element would fail before it starts.
    durable_write("the log dir", log_dir, lambda: log_dir.mkdir(parents=True, exist_ok=True))
    for job, script in arrays:
        submission.arrays.append(submit_array(run, job, script, slurm))
        out(f"submitted shards {index_ranges(job.shard_indices)} of {options.shards} as array job"
            f" {submission.arrays[-1]['job_id']}")
    if merge_text is not None:
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
