"""What a shard measures of each attempt at a user (cheap enough for every user), and of its memory.

status.json carries the peaks forward across the shard's processes, for the merge report (results/timeline.py).
"""

from __future__ import annotations

import os
import socket
import time
import traceback
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any

from shardrun.errors import HeapTooSmall
from shardrun.platforms import peak_rss, process_start_time
from shardrun.shard.jvm import heap_used_bytes, is_heap_exhaustion, java_class_name, java_stack
from shardrun.storage.atomic import write_json_atomic
from shardrun.storage.commits import ATTEMPT, GroupCommitter, append_line_once, error_line
from shardrun.storage.durability import SHARD, durable_write
from shardrun.storage.paths import ShardPaths
from shardrun.storage.status import ShardStatus, status_document
from shardrun.units import MIB


class Attempts:
    """Starts the attempts of one shard process, numbered on from `earlier` recorded ones; the probes
    (clocks, the JVM's heap in use, the peak RSS) are injected for tests."""

    def __init__(self, earlier: Mapping[str, int], heap_used: Callable[[], int | None] = heap_used_bytes,
                 rss: Callable[[], int] = peak_rss, clock: Callable[[], float] = time.monotonic,
                 cpu_clock: Callable[[], float] = time.process_time,
                 now: Callable[[], datetime] = lambda: datetime.now(UTC)):
        self._counts = dict(earlier)
        self.heap_used, self.rss, self.now = heap_used, rss, now
        self.clock, self.cpu_clock = clock, cpu_clock
        self.host, self.pid = socket.gethostname(), os.getpid()

    def start(self, user_id: str) -> Attempt:
        number = self._counts.get(user_id, 0) + 1
        self._counts[user_id] = number
        return Attempt(self, number)


class Attempt:
    """One attempt in flight; `stop` reads its clocks and the memory once, `record` is what is stored."""

    def __init__(self, probes: Attempts, number: int):
        self._probes = probes
        self.number = number
        self._started_at = probes.now()
        self._started = probes.clock()
        self._cpu_started = probes.cpu_clock()
        self.seconds: float | None = None
        self._cpu_seconds: float | None = None
        self.heap_used_bytes: int | None = None
        self._peak_rss_bytes: int | None = None

    def stop(self) -> None:
        probes = self._probes
        self.seconds = round(probes.clock() - self._started, 3)
        self._cpu_seconds = round(probes.cpu_clock() - self._cpu_started, 3)
        self.heap_used_bytes = probes.heap_used()
        self._peak_rss_bytes = probes.rss()

    def record(self, status: str, failure: BaseException | None) -> dict[str, Any]:
        if self.seconds is None:
            raise RuntimeError("an attempt is recorded after stop()")
        return {
            "number": self.number,
            "host": self._probes.host,
            "pid": self._probes.pid,
            "start": timestamp(self._started_at),
            "end": timestamp(self._started_at + timedelta(seconds=self.seconds)),
            "seconds": self.seconds,
            "cpu_seconds": self._cpu_seconds,
            "status": str(status),
            "error_class": error_class(failure) if failure is not None else None,
            "heap_used_bytes": self.heap_used_bytes,
            "peak_rss_bytes": self._peak_rss_bytes,
        }


def timestamp(moment: datetime) -> str:
    """UTC, ISO 8601, milliseconds (the resolution of `seconds`)."""
    return moment.astimezone(UTC).isoformat(timespec="milliseconds")


def error_class(failure: BaseException) -> str:
    """The Java class of a Java exception, else the Python class, of what the analysis raised."""
    return java_class_name(failure) or type(failure).__name__


def carried_memory(status_path: Path) -> dict[str, int]:
    """The peaks an earlier process of this shard recorded in status.json, to carry forward."""
    doc = status_document(status_path)
    return {key: doc[key] for key in ("peak_rss_bytes", "peak_heap_used_bytes")
            if isinstance(doc.get(key), int) and not isinstance(doc.get(key), bool)}


def scheduler_memory_bytes(environ: Mapping[str, str]) -> int | None:
    """SLURM's memory grant: SLURM_MEM_PER_NODE, or SLURM_MEM_PER_CPU x SLURM_CPUS_ON_NODE (MiB); else None."""
    per_node = _mib(environ.get("SLURM_MEM_PER_NODE"))
    if per_node is not None:
        return per_node * MIB
    per_cpu, cpus = _mib(environ.get("SLURM_MEM_PER_CPU")), _mib(environ.get("SLURM_CPUS_ON_NODE"))
    return per_cpu * cpus * MIB if per_cpu is not None and cpus is not None else None


def _mib(text: str | None) -> int | None:
    return int(text) if text is not None and text.strip().isdigit() else None


def error_record(user_id: str, shard: str, exc: BaseException, xmx: str, attempt: Mapping[str, Any],
                 task: Any) -> dict[str, Any]:
    """A failed user's line in errors.jsonl: the error, its Java class and stack, the heap it had."""
    record: dict[str, Any] = {
        "user_id": user_id,
        "shard": shard,
        "error_type": type(exc).__name__,
        "message": str(exc),
        "java_class": java_class_name(exc) or java_class_name(exc.__cause__ or exc),
        "java_stack": java_stack(exc) or (java_stack(exc.__cause__) if exc.__cause__ else None),
        "traceback": "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)),
        "xmx": xmx,
        ATTEMPT: attempt,
    }
    if isinstance(exc, HeapTooSmall):
        record["heap_needed_bytes"] = exc.needed_bytes
    elif is_heap_exhaustion(exc, task):
        record["heap_needed_bytes"] = None
    return record


def failure_reason(exc: BaseException, task: Any = None) -> str:
    if is_heap_exhaustion(exc, task) and not isinstance(exc, HeapTooSmall):
        return f"Java heap exhausted ({exc}); raise jvm.xmx and retry the failed users (--retry-failed)"
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:500]


def shard_status(paths: ShardPaths, fields: Mapping[str, Any]) -> ShardStatus:
    """This process's status.json: `fields` plus what earlier processes left, through the storage guard."""
    earlier = status_document(paths.status)
    requeues, starts = earlier.get("requeues"), earlier.get("process_starts")
    starts = [start for start in starts if isinstance(start, str)] if isinstance(starts, list) else []
    return ShardStatus(paths, {
        **fields,
        # reports of JVMs that crashed in this shard dir before (-XX:ErrorFile), kept across restarts
        "jvm_crash_logs": [str(p) for p in paths.hs_err_files()] or None,
        "requeues": requeues if isinstance(requeues, int) and requeues >= 0 else 0,  # the job's, across its runs
        "slurm_mem_bytes": scheduler_memory_bytes(os.environ),
        **carried_memory(paths.status),  # the peaks of this shard's earlier processes
        # the last 100 starts of this shard's processes, this one's included: run.png's start-up and waiting
        "process_starts": [*starts, timestamp(datetime.fromtimestamp(process_start_time() or time.time(), UTC))][-100:],
    }, write=lambda path, doc: durable_write("status.json", path.parent, lambda: write_json_atomic(path, doc),
                                             remedy=SHARD), peak_rss=peak_rss)


def shard_committer(paths: ShardPaths, header: Mapping[str, Any], committed: Iterable[str], interval_seconds: float,
                    on_commit: Callable[[Sequence[str]], None]) -> GroupCommitter:
    """The shard's group committer, its writes through the storage guard."""
    header = {**header, "host": socket.gethostname()}
    return GroupCommitter(paths, header, committed=committed, interval_seconds=interval_seconds,
                          guard=partial(durable_write, remedy=SHARD), on_commit=on_commit)


def write_error(paths: ShardPaths, record: Mapping[str, Any]) -> None:
    line = error_line(record)  # once: a retry appends this very line, or finds it landed
    durable_write("errors.jsonl", paths.dir, lambda: append_line_once(paths.errors, line), remedy=SHARD)
