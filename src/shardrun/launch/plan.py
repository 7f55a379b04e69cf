"""The plan step of a launch: preflight, data, heap, the run's identity, before anything is written."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace

from shardrun.config import RunConfig
from shardrun.heap_plan import HeapPlan
from shardrun.launch.admission import LaunchData, measure_launch_data, refuse_shards_without_users
from shardrun.launch.run_dir import RunDir, check_same_run
from shardrun.shard.dirs import ensure_run_document, run_document, run_label
from shardrun.shard.prepare import assign_index, partition_report, preflight, refuse_if, task_heap
from shardrun.storage.durability import durable_write
from shardrun.storage.paths import RunPaths
from shardrun.task import Task, load_task


@dataclass(frozen=True)
class RunPlan:
    config: RunConfig  # with the heap resolved (jvm.xmx auto is a size here): what every shard is given
    task: Task
    data: LaunchData
    heap: HeapPlan
    where: RunDir

    def label(self, pilot: int | None) -> str:
        """A new run dir's name before its time."""
        return run_label(self.task, self.config, pilot)

    def partition_lines(self, shards: int) -> list[str]:
        return partition_report(self.data.index, shards, self.config.partition)

    def users_per_shard(self, shards: int, pilot: int | None) -> list[int]:
        """Each shard's users to do (a pilot's at most), for the progress view."""
        shares = [len(users) for users in assign_index(self.data.index, shards, self.config.partition)]
        return shares if pilot is None else [min(users, pilot) for users in shares]

    def user_seconds(self) -> Mapping[str, float] | None:
        """The task's estimate of every user's time (reads all the rows), None when it makes none."""
        return self.task.user_seconds(self.config.settings, self.task.load(self.config.settings))

    def write_run_json(self, run: RunPaths, shards: int, pilot: int | None) -> None:
        document = {**run_document(self.config, self.task, self.data.index, shards, pilot),
                    "jvm": self.config.jvm.jvm_args()}
        durable_write("run.json", run.dir, lambda: ensure_run_document(run, document))


def plan_run(config: RunConfig, where: RunDir, shards: int, pilot: int | None) -> RunPlan:
    """The plan every shard starts with, or a refusal (preflight, other data, more shards than users)."""
    task = load_task(config.task)
    problems = preflight(task, config)
    refuse_if(problems)  # cheap: before reading the data
    data = measure_launch_data(task, config.settings, config.jvm, shards, config.partition)
    if where.existing:
        assert where.run is not None
        check_same_run(where.run, where.flag, shards, config.hash, pilot, data.index.fingerprint)
    else:
        refuse_shards_without_users(shards, len(data.index.user_ids))
    heap, problems = task_heap(task, config, data.needs, list(data.index.user_ids), data.checked, problems)
    refuse_if(problems)
    return RunPlan(replace(config, jvm=heap.jvm), task, data, heap, where)
