"""The launcher's rules as small pure objects (start, restart, suspend, resume), testable with plain values."""

from __future__ import annotations

import itertools
import re
import signal
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass

from shardrun.errors import (
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_PREEMPTED,
    EXIT_SHARD_LOCKED,
    EXIT_STORAGE,
    EXIT_USAGE,
    EXIT_USERS_FAILED,
    EXIT_VALIDATION_FAILED,
)
from shardrun.units import heap_bytes, heap_flag_value

# Exits of a shard refused its work (its input, its dir, its storage): nothing to continue until fixed.
REFUSALS = frozenset({EXIT_USAGE, EXIT_SHARD_LOCKED, EXIT_STORAGE})
# Exits that say the shard itself decided to stop: restarting would change nothing.
DELIBERATE_EXITS = REFUSALS | {EXIT_OK, EXIT_USERS_FAILED, EXIT_INTERRUPTED, EXIT_VALIDATION_FAILED, EXIT_PREEMPTED}


def died_abnormally(exit_code: int) -> bool:
    """Killed by a signal (SIGKILL from the OOM killer, SIGSEGV, SIGABRT of a JVM crash) or crashed."""
    return exit_code not in DELIBERATE_EXITS


def describe_exit(code: int, log_hint: bool = True) -> str:
    """A shard's exit status in words, with the likely cause of a death by signal."""
    see = "; see its log" if log_hint else ""
    words = {
        EXIT_OK: "completed",
        EXIT_USERS_FAILED: "completed, some users failed (see errors.jsonl)",
        EXIT_USAGE: f"refused its input (config, data or environment{see})",
        EXIT_INTERRUPTED: "interrupted (resume to continue)",
        EXIT_PREEMPTED: "preempted: drained on the scheduler's warning signal (requeued, or resume to continue)",
        EXIT_SHARD_LOCKED: "refused: another process holds the shard dir",
        EXIT_STORAGE: f"stopped: its dir cannot be written (disk full or read-only{see})",
    }
    if code in words:
        return words[code]
    if code == -signal.SIGKILL:
        return "killed by SIGKILL (likely the OOM killer: lower K or jvm.xmx, then resume)"
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"killed by {name}" + (" (a JVM crash: see hs_err_pid*.log in the shard dir)"
                                      if -code in (signal.SIGABRT, signal.SIGSEGV, signal.SIGBUS) else "")
    return (f"crashed with exit code {code} ({'see its log; ' if log_hint else ''}an hs_err_pid*.log in the shard dir"
            " means the JVM crashed)")


def shows_its_error(code: int) -> bool:
    """Exits whose cause the launcher's summary shows from the shard's log: refusals, storage, crashes, deaths."""
    return code not in (EXIT_OK, EXIT_USERS_FAILED, EXIT_INTERRUPTED, EXIT_PREEMPTED)


_LOG_RECORD = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d")


def log_excerpt(text: str, max_lines: int = 4, width: int = 300) -> list[str]:
    """The few lines of a shard's log, since its last `===` start line, that say why it stopped (pure).

    Preferred: a refusal's `error:`, a traceback's end, the JVM's fatal report, the last ERROR records.
    """
    lines = [line.rstrip() for line in text.splitlines()]
    starts = [i for i, line in enumerate(lines) if line.startswith("=== ")]
    lines = [line for line in lines[starts[-1] + 1 if starts else 0:] if line.strip()]

    def last(prefix: str) -> int | None:
        return max((i for i, line in enumerate(lines) if line.startswith(prefix)), default=None)

    def cut(chosen: list[str]) -> list[str]:
        return [line if len(line) <= width else line[: width - 3] + "..." for line in chosen[:max_lines]]

    def indented_after(i: int) -> list[str]:
        return list(itertools.takewhile(lambda line: line.startswith(" "), lines[i + 1:]))

    if (error := last("error:")) is not None:
        # whole: a refusal's fix is its last words; folded to the width instead of cut
        paragraph = [lines[error], *indented_after(error)]
        return [folded for line in paragraph for folded in textwrap.wrap(line, width, subsequent_indent="  ")]
    if (traceback := last("Traceback (most recent call last)")) is not None:
        block = lines[traceback + 1: traceback + len(indented_after(traceback)) + 2]  # to the exception line
        return cut(block[-min(max_lines, 3):])
    if (fatal := last("# A fatal error has been detected")) is not None:
        return cut([line for line in lines[fatal:] if line.startswith("#") and line.strip("# ")])
    records = [line for line in lines if _LOG_RECORD.match(line) and (" ERROR " in line or " CRITICAL " in line)]
    return cut(records[-max_lines:])


@dataclass(frozen=True)
class RestartPolicy:
    """Restart a shard that died abnormally, by resuming its dir, at most `max_restarts` times."""

    max_restarts: int = 0
    heap_factor: float = 1.0  # >1: each restart gets a larger heap (for JVMs that died of memory)

    def should_restart(self, exit_code: int, restarts_so_far: int) -> bool:
        return died_abnormally(exit_code) and restarts_so_far < self.max_restarts

    def heap_for_restart(self, xmx: str, restarts_so_far: int) -> str:
        """The -Xmx of restart number `restarts_so_far + 1`, in whole MiB."""
        if self.heap_factor == 1.0:
            return xmx
        scaled = heap_bytes(xmx) * self.heap_factor ** (restarts_so_far + 1)
        return heap_flag_value(scaled)


def shards_to_start(waiting: Sequence[int], active: int, max_parallel: int | None) -> list[int]:
    """The waiting shards (in order) that may start now, with at most `max_parallel` active."""
    if max_parallel is None:
        return list(waiting)
    return list(waiting[: max(max_parallel - active, 0)])


def plural(count: int, word: str) -> str:
    return f"{count} {word}{'s' if count != 1 else ''}"


@dataclass(frozen=True)
class ParallelPlan:
    max_parallel: int | None  # None: every shard at once
    threads: int  # threads per shard (jvm.threads, or auto: the cores shared by the shards at once)
    line: str  # the launch plan's line that says so


def parallel_for_cores(shards: int, cores: int, cores_source: str, threads_per_shard: int | None,
                       given_max_parallel: int | None) -> ParallelPlan:
    """At most as many shards at once as the cores hold, unless --max-parallel says otherwise (pure).

    Measured: four JVMs on two cores took 14% longer than two (docs/dev/PERFORMANCE.md).
    """
    if shards < 1 or cores < 1:
        raise ValueError(f"shards and cores must be at least 1, got {shards} and {cores}")
    allowed = max(1, cores // (threads_per_shard or 1))
    max_parallel = given_max_parallel if given_max_parallel is not None else None if shards <= allowed else allowed
    at_once = min(shards, max_parallel or shards)
    threads = threads_per_shard or max(1, cores // at_once)
    source = "jvm.threads" if threads_per_shard else "jvm.threads auto"
    what = f"{plural(shards, 'shard')} on {plural(cores, 'core')} available ({cores_source})"
    per_shard = f", {plural(threads, 'thread')} each ({source})"
    if given_max_parallel is not None:
        shared = f"; {at_once * threads} threads share {plural(cores, 'core')}" if at_once * threads > cores else ""
        line = f"{what}: running at most {at_once} at once (--max-parallel {given_max_parallel}){per_shard}{shared}"
    elif max_parallel is not None:
        line = (f"{what}: running at most {max_parallel} at once{per_shard}, the others as earlier ones finish;"
                f" pass --max-parallel {shards} to run all at once")
    else:
        line = f"{what}: {plural(threads, 'thread')} ({source})" if shards == 1 else f"{what}: all at once{per_shard}"
    return ParallelPlan(max_parallel, threads, line)


@dataclass(frozen=True)
class CpuThrottle:
    """Keep the run's CPUs under `limit` percent by suspending shards, down to one, never none.

    Suspends the newest running shard; resumes one only if it is predicted to fit (no flapping);
    one step per reading.
    """

    limit: float

    def decide(self, cpus_percent: float, run_percent: float, running: Sequence[int],
               suspended: Sequence[int]) -> tuple[str, int] | None:
        if suspended and not running:
            return ("resume", suspended[0])
        if cpus_percent > self.limit and len(running) > 1:
            return ("suspend", running[-1])
        if suspended and cpus_percent + one_shard_percent(run_percent, len(running)) <= self.limit:
            return ("resume", suspended[0])
        return None


def one_shard_percent(run_percent: float, running: int) -> float:
    """What one of the run's running shards uses, in percent of the CPUs: their use shared among them."""
    return run_percent / running if running else 0.0
