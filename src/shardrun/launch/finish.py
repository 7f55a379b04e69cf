"""The end of a local launch: the summary, the launch's exit, then the merge and its validation."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from shardrun.errors import EXIT_OK, EXIT_USERS_FAILED, EXIT_VALIDATION_FAILED
from shardrun.launch import report
from shardrun.launch.launcher import Launcher
from shardrun.launch.policies import REFUSALS
from shardrun.launch.run_dir import HeldRun
from shardrun.launch.supervisor import overall_exit
from shardrun.results.merge import merge_result_set
from shardrun.results.tolerance import FailedTolerance
from shardrun.results.validate import validation_of, write_validation
from shardrun.storage.durability import Remedy, durable_write


@dataclass
class LaunchResult:
    run_dir: Path
    shard_codes: dict[str, int] = field(default_factory=dict)
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
    result = LaunchResult(run_dir=run.dir, shard_codes=codes, exit_code=overall_exit(codes),
                          shards_seconds=shards_seconds, max_parallel=options.max_parallel)
    if launcher.storage_failure is not None:
        raise launcher.storage_failure  # exit 6: the shards have stopped; the error says how to continue
    # after a storage failure the dir is left as it is: it may hold the run (renamed, read-only)
    held.forget_if_empty()
    if result.exit_code not in (EXIT_OK, EXIT_USERS_FAILED):
        interrupted = result.exit_code not in REFUSALS
        out(f"not merging: {report.resume_hint(run, options, launcher.config.source, interrupted)}")
        return result
    if options.merge:
        result.merged_dir = run.merged
        result.exit_code = merge_and_validate(run.shard_dirs(), run.merged, options.max_failed,
                                              launcher.storage_remedy(), out)
    return result


def merge_and_validate(shard_dirs: list[Path], merged: Path, max_failed: FailedTolerance, remedy: Remedy,
                       out: Callable[[str], None]) -> int:
    """Merge the run's shards into RUN/merged and validate it; failures beyond --max-failed fail validation."""
    merged_set = merge_result_set(shard_dirs, merged, overwrite=True, remedy=remedy)
    validation = validation_of(merged, frame=merged_set.frame, max_failed=max_failed)
    durable_write("validation.json", merged,
                  lambda: write_validation(merged, validation.problems, verdict=validation.document()), remedy=remedy)
    out(f"merged {merged_set.report.rows} rows for {merged_set.report.users} users into {merged}/results.csv"
        " (and .parquet)")
    if validation.problems:
        out(f"{len(validation.problems)} validation problem(s):\n  - " + "\n  - ".join(validation.problems))
    for line in validation.lines():
        out(line)
    if validation.problems:
        out(f"validation FAILED ({len(validation.problems)} problem(s) above): {merged}/validation.json")
        return EXIT_VALIDATION_FAILED
    out(f"validation passed: {merged}/validation.json")
    return EXIT_OK  # failed users, if any, are within --max-failed
