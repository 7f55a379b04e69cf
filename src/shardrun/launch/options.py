"""What a local launch was asked: launch_shards' flags, as the plan, the loop and the summary read them."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from shardrun.launch.admission import shard_memory_bytes
from shardrun.launch.policies import CpuThrottle, RestartPolicy
from shardrun.launch.supervisor import SupervisorPolicy
from shardrun.results.tolerance import NO_FAILED, FailedTolerance
from shardrun.storage.paths import recorded_shard_count
from shardrun.units import heap_bytes

DEFAULT_SHARDS = 4


def shards_to_launch(given: int | None, where: Path | None) -> int:
    """--shards, else the K of the run --out or --run-dir names, else DEFAULT_SHARDS."""
    if given is not None:
        return given
    recorded = recorded_shard_count(where) if where is not None and where.is_dir() else None
    return recorded[1] if recorded else DEFAULT_SHARDS


@dataclass(frozen=True)
class LaunchOptions:
    config_path: Path
    shards: int
    run_dir: Path | None = None  # an existing run dir: continue it (every shard resumes)
    out: Path | None = None  # start the run here, or continue it if this dir holds the same run
    pilot: int | None = None
    merge: bool = True
    grace_seconds: float = 120.0
    progress_every: float = 30.0
    max_parallel: int | None = None
    cpu_limit: float | None = None
    cpu_check_every: float = 2.0
    nice: int = 0
    cooldown_seconds: float = 0.0
    commit_interval_seconds: float | None = None  # None: the shard's own default (run_production --commit-interval)
    restart: RestartPolicy = RestartPolicy()
    live: bool = False  # redraw a table on the terminal instead of plain lines
    retry_failed: bool = False  # every shard runs its failed users again (run_production --retry-failed)
    fail_fast: int | None = None  # None: the shard's own default (run_production --fail-fast)
    max_failed: FailedTolerance = NO_FAILED  # the failed users the merged set may have and still pass
    shard_data_bytes: int | None = None  # one shard's input in memory, as the admission measured it (plan_launch)
    invocation: str = "launch_shards"  # the command the user ran, which the hints repeat (or the wrapper script)

    @property
    def at_once(self) -> int:
        """The shards that run at once: --max-parallel, or all K."""
        return min(self.shards, self.max_parallel or self.shards)

    def supervisor_policy(self, xmx: str) -> SupervisorPolicy:
        return SupervisorPolicy(shards=self.shards, xmx=xmx, restart=self.restart, max_parallel=self.max_parallel,
                                grace_seconds=self.grace_seconds,
                                throttle=CpuThrottle(self.cpu_limit) if self.cpu_limit else None)

    def memory_budget_bytes(self, xmx: str) -> int | None:
        """What the admission counted for a shard at this heap (merge_report.json's memory budget)."""
        return None if self.shard_data_bytes is None else shard_memory_bytes(heap_bytes(xmx), self.shard_data_bytes)

    def continue_command(self, config_source: Path | None, run_dir: Path | str | None) -> str:
        """The command that continues this run (at `run_dir`), or starts it again (None: --out as given)."""
        where = run_dir if run_dir is not None else self.out
        pilot = "" if self.pilot is None else f" --pilot {self.pilot}"
        out = f" --out {where}" if where is not None else ""
        return f"{self.invocation} --config {config_source} --shards {self.shards}{out}{pilot}"
