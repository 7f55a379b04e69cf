"""An example shardrun task: per-user summary statistics computed on the JVM by the Java standard library.

No JIDT, no jar: the JVM's own classes do the work, through JPype.
- java.util.DoubleSummaryStatistics (via java.util.Arrays.stream(double[]).summaryStatistics()) gives
  each user's count, mean, minimum and maximum of the readings;
- java.math.BigDecimal adds the readings exactly as they are written in the file (exact_sum, a
  decimal string), so the sum does not depend on floating-point order.

Plug it in with `task: javastats:task` (the package on PYTHONPATH; docs/TASKS.md walks through it):

    PYTHONPATH=examples python -m shardrun launch --config examples/javastats/config.yaml --shards 2

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
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, Mapping

from shardrun.digest import file_sha256
from shardrun.errors import DataError
from shardrun.section import Section

VERSION = "1.0"
COLUMNS = ["user_id", "status", "reason", "n", "mean", "min", "max", "exact_sum"]
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


def parse_settings(section: Section) -> Settings:
    """Task.parse_settings: `data.path`, `data.user_column`, `data.value_column`, `min_readings`."""
    data = section.section("data")
    non_empty = lambda value: None if value.strip() else "must not be empty"  # noqa: E731
    path = data.get("path", str, check=non_empty)
    user_column = data.get("user_column", str, default="user_id", check=non_empty)
    value_column = data.get("value_column", str, default="value", check=non_empty)
    min_readings = section.get("min_readings", int, default=5,
                               check=lambda value: None if value >= 1 else "must be at least 1")
    return Settings(Path(path), user_column, value_column, min_readings)


# --- data: read once per process, no JVM -------------------------------------------------------


@dataclass(frozen=True)
class Readings:
    """Task's Dataset: the sorted user ids, the file's sha256, and each user's readings in file order."""

    user_ids: list[str]
    fingerprint: str
    texts: Mapping[str, tuple[str, ...]]  # the readings as written (for BigDecimal)
    values: Mapping[str, tuple[float, ...]]  # the same readings as numbers


def load(settings: Settings) -> Readings:
    """Task.load: the CSV at data.path; DataError naming the fix when it cannot be used."""
    path = settings.path
    if not path.is_file():
        raise DataError(f"data.path {path} is not a file; point data.path in the config at the readings CSV"
                        " (examples/javastats/make_data.py writes one).")
    texts: dict[str, list[str]] = {}
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        header = reader.fieldnames or []
        for column, key in ((settings.user_column, "data.user_column"), (settings.value_column, "data.value_column")):
            if column not in header:
                raise DataError(f"{path} has no column {column!r} (its columns: {', '.join(header) or 'none'});"
                                f" set {key} in the config to the right name.")
        for line, record in enumerate(reader, start=2):
            user, text = (record[settings.user_column] or "").strip(), (record[settings.value_column] or "").strip()
            if not user:
                raise DataError(f"{path} line {line}: the user id is empty; fill it in or drop the line.")
            try:
                number = Decimal(text)
            except InvalidOperation:
                number = None
            if number is None or not number.is_finite():
                raise DataError(f"{path} line {line}: {settings.value_column} is {text!r}, not a finite decimal"
                                " number; fix the value or drop the line.")
            texts.setdefault(user, []).append(text)
    if not texts:
        raise DataError(f"{path} has no readings; it needs a header and at least one line per user.")
    return Readings(
        user_ids=sorted(texts),
        fingerprint=file_sha256(path),
        texts={user: tuple(values) for user, values in texts.items()},
        values={user: tuple(float(v) for v in values) for user, values in texts.items()},
    )


# --- the analysis: one user's row, on the JVM ----------------------------------------------------


def result_columns(settings: Settings) -> list[str]:
    """Task.result_columns."""
    return list(COLUMNS)


def _row(user_id: str, status: str, reason: str, **values: Any) -> dict[str, Any]:
    return {"user_id": user_id, "status": status, "reason": reason, "n": None, "mean": None, "min": None,
            "max": None, "exact_sum": None, **values}


def failed_rows(settings: Settings, user_id: str, reason: str) -> list[Mapping[str, Any]]:
    """Task.failed_rows: the row of a user whose analysis raised."""
    return [_row(user_id, "failed", reason)]


def analyse(dataset: Readings, user_id: str, settings: Settings) -> list[Mapping[str, Any]]:
    """Task.analyse: one row per user, from Java's DoubleSummaryStatistics and BigDecimal."""
    from jpype import JArray, JClass, JDouble  # the JVM is already running: the core started it

    values = dataset.values[user_id]
    if len(values) < settings.min_readings:
        return [_row(user_id, "skipped", f"{len(values)} readings, fewer than min_readings={settings.min_readings}",
                     n=len(values))]
    stats = JClass("java.util.Arrays").stream(JArray(JDouble)(values)).summaryStatistics()
    big_decimal = JClass("java.math.BigDecimal")
    total = big_decimal.ZERO
    for text in dataset.texts[user_id]:
        total = total.add(big_decimal(text))
    return [_row(user_id, "ok", "", n=int(stats.getCount()), mean=float(stats.getAverage()),
                 min=float(stats.getMin()), max=float(stats.getMax()), exact_sum=str(total.toPlainString()))]


def check_rows(frame: Any, settings: Settings) -> list[str]:
    """Task.check_rows: value ranges of a merged result set (ok rows)."""
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


def preflight(settings: Settings, heap_bytes: int) -> list[str]:
    """Task.preflight: nothing configured here can be impossible (the per-user heap check covers the rest)."""
    return []


def user_heap_needs(settings: Settings, dataset: Readings) -> dict[str, int]:
    """PredictsHeap.user_heap_needs, which `jvm.xmx: auto` uses: fast, no JVM."""
    return {user: BASELINE_HEAP_BYTES + BYTES_PER_READING * len(dataset.values[user]) for user in dataset.user_ids}


def describe_versions() -> dict[str, str]:
    """Task.describe_versions: recorded in run.json (the core adds shardrun's, Python's; status.json Java's)."""
    return {"javastats": VERSION}


class JavaStatsTask:
    """The Task protocol of shardrun.task, bound to this module's functions."""

    key_columns = ("user_id",)
    parse_settings = staticmethod(parse_settings)
    preflight = staticmethod(preflight)
    load = staticmethod(load)
    result_columns = staticmethod(result_columns)
    failed_rows = staticmethod(failed_rows)
    analyse = staticmethod(analyse)
    check_rows = staticmethod(check_rows)
    describe_versions = staticmethod(describe_versions)
    user_heap_needs = staticmethod(user_heap_needs)  # optional (PredictsHeap)

    @staticmethod
    def run_label(settings: Settings) -> str:  # optional: run dirs are named full_javastats_<time>
        return "javastats"

    @staticmethod
    def heap_advice(settings: Settings) -> str:  # optional (RunsOnJvm): said where the core advises more heap
        return "split the users with the most readings into several ids"


task = JavaStatsTask()
