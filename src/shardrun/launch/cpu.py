"""The readings of --cpu-limit: how busy the run's CPUs are, and how much its own shards use (pure arithmetic)."""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Mapping, Sequence

from shardrun.launch.supervisor import CpuReading

ProcessKey = tuple[int, float]  # (pid, create time): a pid the kernel gave again to a new process is another process


def share_of_cpus(before: Mapping[ProcessKey, float], after: Mapping[ProcessKey, float], elapsed_seconds: float,
                  cpus: int) -> float:
    """CPU time used between two readings, in percent of `cpus` over `elapsed_seconds` (pure).

    A process that ended in between loses its last part (at most one reading's worth).
    """
    if elapsed_seconds <= 0 or cpus < 1:
        return 0.0
    used = sum(max(seconds - before.get(key, 0.0), 0.0) for key, seconds in after.items())
    return min(100.0 * used / (elapsed_seconds * cpus), 100.0)


def cpus_busy(per_cpu_percent: Sequence[float], cpus: Collection[int] | None) -> float:
    """The mean use of the CPUs the run may use (`cpus`, its affinity; None: all), from per-CPU percentages (pure)."""
    chosen = ([per_cpu_percent[cpu] for cpu in sorted(cpus) if cpu < len(per_cpu_percent)] if cpus
              else list(per_cpu_percent))
    return sum(chosen) / len(chosen) if chosen else 0.0


def affinity() -> list[int] | None:
    """The CPUs this process may run on (the shards inherit them), or None where the platform does not say."""
    import psutil

    try:
        return list(psutil.Process().cpu_affinity())
    except (AttributeError, NotImplementedError, OSError):  # macOS has no affinity
        return None


def per_cpu_percent() -> list[float]:
    """Each CPU's use since the previous call, every program's (psutil)."""
    import psutil

    return list(psutil.cpu_percent(interval=None, percpu=True))


class CpuMeter:
    """Reads, at each call, the CPUs' use and the run's own since the previous call."""

    def __init__(self, process_seconds: Callable[[], Mapping[ProcessKey, float]],
                 per_cpu: Callable[[], Sequence[float]] = per_cpu_percent,
                 cpus: list[int] | None = None, clock: Callable[[], float] = time.monotonic):
        self._process_seconds = process_seconds
        self._per_cpu = per_cpu
        self._clock = clock
        self._cpus = cpus
        every_cpu = per_cpu()  # the first call also starts psutil's measuring interval
        self._count = len(cpus) if cpus else len(every_cpu)
        self._since = clock()
        self._seconds = dict(process_seconds())

    def __call__(self) -> CpuReading:
        now, seconds = self._clock(), dict(self._process_seconds())
        run = share_of_cpus(self._seconds, seconds, now - self._since, self._count)
        self._since, self._seconds = now, seconds
        cpus = cpus_busy(self._per_cpu(), self._cpus)
        # the run's use is part of the CPUs' use; two readings a moment apart may disagree a little
        return CpuReading(cpus_percent=max(cpus, run), run_percent=run)
