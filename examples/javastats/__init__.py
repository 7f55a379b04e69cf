"""An example shardrun task: per-user summary statistics computed on the JVM by the Java standard library.

No JIDT, no jar: the JVM's own classes do the work, through JPype.
- java.util.DoubleSummaryStatistics (via java.util.Arrays.stream(double[]).summaryStatistics()) gives
  each user's count, mean, minimum and maximum of the readings;
- java.math.BigDecimal adds the readings exactly as they are written in the file (exact_sum, a
  decimal string), so the sum does not depend on floating-point order.

Plug it in with `task: javastats:task` (the package on PYTHONPATH; docs/TASKS.md is the tutorial):

    PYTHONPATH=examples shardrun launch --config examples/javastats/config.yaml --shards 2

Config keys of the task (besides the core's task, jvm and output):

    data:
      path: examples/javastats/readings.csv   # relative to the directory you run from
      user_column: user_id
      value_column: value
    min_readings: 5                            # a user with fewer readings is skipped
"""

from __future__ import annotations

import csv
import math
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

from shardrun.digest import file_sha256
from shardrun.errors import DataError
from shardrun.section import Section
from shardrun.task import Task

VERSION = "1.0"
# Java heap per user: the JVM's own baseline plus a double[] and a BigDecimal per reading, generously.
BASELINE_HEAP_BYTES = 32 * 2**20
BYTES_PER_READING = 256


# --- settings: the task's own config keys, read strictly -------------------------------------


@dataclass(frozen=True)
class Settings:
    path: Path
    user_column: str
    value_column: str
    min_readings: int


@dataclass(frozen=True)
class Readings:
    """The Dataset: the sorted user ids, the file's sha256, and each user's readings in file order."""

    user_ids: list[str]
    fingerprint: str
    texts: Mapping[str, tuple[str, ...]]  # the readings as written (for BigDecimal)
    values: Mapping[str, tuple[float, ...]]  # the same readings as numbers


def _row(user_id: str, status: str, reason: str, **values: Any) -> dict[str, Any]:
    return {"user_id": user_id, "status": status, "reason": reason, "n": None, "mean": None, "min": None,
            "max": None, "exact_sum": None, **values}


class JavaStatsTask(Task):
    """Per-user statistics by the JVM's standard library; the heap hook and checks besides the two required."""

    columns = ("n", "mean", "min", "max", "exact_sum")

    def parse_settings(self, section: Section) -> Settings:
        """`data.path`, `data.user_column`, `data.value_column`, `min_readings` (a nested mapping: read here)."""
        data = section.section("data")

        def non_empty(value: str) -> str | None:
            return None if value.strip() else "must not be empty"

        path = data.get("path", str, check=non_empty)
        user_column = data.get("user_column", str, default="user_id", check=non_empty)
        value_column = data.get("value_column", str, default="value", check=non_empty)
        min_readings = section.get("min_readings", int, default=5,
                                   check=lambda value: None if value >= 1 else "must be at least 1")
        return Settings(Path(path), user_column, value_column, min_readings)

    def load(self, settings: Settings, users: Collection[str] | None = None) -> Readings:
        """The CSV at data.path, every user (no JVM); DataError naming the fix when it cannot be used."""
        path = settings.path
        if not path.is_file():
            raise DataError(f"data.path {path} is not a file; point data.path in the config at the readings CSV"
                            " (examples/javastats/make_data.py writes one).")
        texts: dict[str, list[str]] = {}
        with path.open(newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            header = reader.fieldnames or []
            for column, key in ((settings.user_column, "data.user_column"),
                                (settings.value_column, "data.value_column")):
                if column not in header:
                    raise DataError(f"{path} has no column {column!r} (its columns: {', '.join(header) or 'none'});"
                                    f" set {key} in the config to the right name.")
            for line, record in enumerate(reader, start=2):
                user = (record[settings.user_column] or "").strip()
                text = (record[settings.value_column] or "").strip()
                if not user:
                    raise DataError(f"{path} line {line}: the user id is empty; fill it in or drop the line.")
                try:
                    number = Decimal(text)
                except InvalidOperation:
                    number = None
                if number is None or not number.is_finite():
                    raise DataError(f"{path} line {line}: {settings.value_column} is {text!r}, not a finite"
                                    " decimal number; fix the value or drop the line.")
                texts.setdefault(user, []).append(text)
        if not texts:
            raise DataError(f"{path} has no readings; it needs a header and at least one line per user.")
        return Readings(
            user_ids=sorted(texts),
            fingerprint=file_sha256(path),
            texts={user: tuple(values) for user, values in texts.items()},
            values={user: tuple(float(v) for v in values) for user, values in texts.items()},
        )

    def analyse(self, dataset: Readings, user_id: str, settings: Settings) -> list[Mapping[str, Any]]:
        """One row per user, from Java's DoubleSummaryStatistics and BigDecimal."""
        from jpype import JArray, JClass, JDouble  # the JVM is already running: the core started it

        values = dataset.values[user_id]
        if len(values) < settings.min_readings:
            return [_row(user_id, "skipped",
                         f"{len(values)} readings, fewer than min_readings={settings.min_readings}", n=len(values))]
        stats = JClass("java.util.Arrays").stream(JArray(JDouble)(values)).summaryStatistics()
        big_decimal = JClass("java.math.BigDecimal")
        total = big_decimal.ZERO
        for text in dataset.texts[user_id]:
            total = total.add(big_decimal(text))
        return [_row(user_id, "ok", "", n=int(stats.getCount()), mean=float(stats.getAverage()),
                     min=float(stats.getMin()), max=float(stats.getMax()), exact_sum=str(total.toPlainString()))]

    def check_rows(self, frame: Any, settings: Settings) -> list[str]:
        """Value ranges of a merged result set (ok rows)."""
        problems = []
        for row in frame[frame["status"] == "ok"].itertuples(index=False):
            where = f"user {row.user_id!r}"
            if not row.n >= settings.min_readings:
                problems.append(f"{where}: n = {row.n} is below min_readings = {settings.min_readings}")
            if not row.min <= row.mean <= row.max:
                problems.append(f"{where}: mean {row.mean} is not between min {row.min} and max {row.max}")
            elif not math.isclose(float(Decimal(str(row.exact_sum))), row.mean * row.n, rel_tol=1e-9, abs_tol=1e-6):
                problems.append(f"{where}: exact_sum {row.exact_sum} is not n x mean ({row.n} x {row.mean})")
        return problems

    def user_heap_needs(self, settings: Settings, dataset: Readings) -> dict[str, int]:
        """What `jvm.xmx: auto` is chosen from: fast, no JVM."""
        return {user: BASELINE_HEAP_BYTES + BYTES_PER_READING * len(dataset.values[user]) for user in dataset.user_ids}

    def describe_versions(self) -> dict[str, str]:
        """Recorded in run.json (the core adds shardrun's, Python's; status.json Java's)."""
        return {"javastats": VERSION}

    def run_label(self, settings: Settings) -> str:  # run dirs are named <config stem>_full_javastats_<time>
        return "javastats"

    def heap_advice(self, settings: Settings) -> str:  # said where the core advises more heap
        return "split the users with the most readings into several ids"


task = JavaStatsTask()
