"""The end of a local launch: the summary, the launch's exit, then the merge and its validation."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from shardrun.errors import EXIT_OK, EXIT_USERS_FAILED, EXIT_VALIDATION_FAILED
from shardrun.launch import report
from shardrun.launch.launcher import Launcher
from shardrun.launch.policies import REFUSALS
from shardrun.launch.run_dir import HeldRun
from shardrun.launch.supervisor import overall_exit
from shardrun.results.merge import merge_result_set
from shardrun.results.validate import validation_of, write_validation
from shardrun.storage.durability import durable_write


@dataclass
class LaunchResult:
    run_dir: Path
    exit_code: int = EXIT_OK
    merged_dir: Path | None = None
    shards_seconds: float | None = None  # wall time from the first shard's start to the last one's exit
    max_parallel: int | None = None  # the shards that ran at most at once (None: all)


def finish(launcher: Launcher, held: HeldRun, shards_seconds: float, out: Callable[[str], None]) -> LaunchResult:
    """Say how each shard ended; merge and validate when every shard ended with its users done."""
    run, options = launcher.run, launcher.options
    written = run.run_json.is_file() or launcher.storage_failure is not None
    codes = report.summary(run, launcher.supervisor, launcher.views(), launcher.config.output.log_dir, written,
                           launcher.out)
    result = LaunchResult(run_dir=run.dir, exit_code=overall_exit(codes),
                          shards_seconds=shards_seconds, max_parallel=options.max_parallel)
    if launcher.storage_failure is not None:
        raise launcher.storage_failure  # exit 6: the shards have stopped; the error says how to continue
    # after a storage failure the dir is left as it is: it may hold the run (renamed, read-only)
    held.forget_if_empty()
    if result.exit_code not in (EXIT_OK, EXIT_USERS_FAILED):
        interrupted = result.exit_code not in REFUSALS
        out(f"not merging: {report.resume_hint(run, options, launcher.config.source, interrupted)}")
        return result
    if not options.merge:
        return result
    remedy, merged = launcher.storage_remedy(), run.merged
    merged_set = merge_result_set(run.shard_dirs(), merged, overwrite=True, remedy=remedy)
    validation = validation_of(merged, frame=merged_set.frame, max_failed=options.max_failed)
    problems = validation.problems
    durable_write("validation.json", merged,
                  lambda: write_validation(merged, problems, verdict=validation.document()), remedy=remedy)
    out(f"merged {merged_set.report.rows} rows for {merged_set.report.users} users into {merged}/results.csv"
        " (and .parquet)")
    if problems:
        out(f"{len(problems)} validation problem(s):\n  - " + "\n  - ".join(problems))
    for line in validation.lines():
        out(line)
    # failed users beyond --max-failed are a problem; those within it pass
    out(f"validation FAILED ({len(problems)} problem(s) above): {merged}/validation.json" if problems
        else f"validation passed: {merged}/validation.json")
    result.merged_dir, result.exit_code = merged, EXIT_VALIDATION_FAILED if problems else EXIT_OK
    return result
