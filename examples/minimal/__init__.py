"""The smallest shardrun task: each user's count, mean and median of `value`, computed on the JVM.

From the repository root (docs/TASKS.md writes it step by step):
    PYTHONPATH=examples launch_shards --config examples/minimal/config.yaml --shards 2
"""

import csv
from dataclasses import dataclass

from shardrun.digest import file_sha256
from shardrun.task import Dataset, Task


class Minimal(Task):
    columns = ("n", "mean", "median")  # each row: user_id, status, reason, then these

    @dataclass(frozen=True)
    class Settings:  # the task's config keys, read and checked by the base class
        path: str  # a CSV with the columns user_id and value

    def load(self, settings, users=None):
        """Every user's values, read without a JVM (a task may ignore `users`)."""
        values = {}
        with open(settings.path, newline="") as file:
            for row in csv.DictReader(file):
                values.setdefault(row["user_id"], []).append(float(row["value"]))
        return Dataset(sorted(values), file_sha256(settings.path), values)

    def analyse(self, dataset, user_id, settings):
        """One user's row, by java.util.Arrays (the core has started the JVM)."""
        from jpype import JArray, JClass, JDouble

        arrays = JClass("java.util.Arrays")
        values = JArray(JDouble)(dataset.rows[user_id])
        arrays.sort(values)
        stats = arrays.stream(values).summaryStatistics()
        n = len(values)
        median = (values[(n - 1) // 2] + values[n // 2]) / 2
        return [{"user_id": user_id, "status": "ok", "reason": "", "n": int(stats.getCount()),
                 "mean": float(stats.getAverage()), "median": float(median)}]


task = Minimal()
