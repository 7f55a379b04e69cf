"""What the machine offers a launch: whether K shards (heap + measured overhead + their share of the input)
fit in its memory, the cores they may use, and how busy those cores are (--cpu-limit's readings).

Each shard counts the load peak of the largest share (or the whole table); figures in docs/dev/PERFORMANCE.md.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shardrun.config import JvmConfig, usable_cpus
from shardrun.errors import ConfigError
from shardrun.heap_plan import HeapPlan, run_heap_needs, task_heap_needs
from shardrun.launch.policies import plural
from shardrun.launch.supervisor import CpuReading
from shardrun.platforms import PeakMemory
from shardrun.shard.prepare import assign_index
from shardrun.task import Dataset, UserIndex, load_users, read_user_index
from shardrun.units import MIB, format_bytes

log = logging.getLogger(__name__)

# A shard's RSS beyond its Java heap, measured with bench/jvm_overhead.py (docs/dev/PERFORMANCE.md):
# about 235 MiB + 4% of the heap on 64 CPUs; these constants add a margin of at least 20%.
NATIVE_OVERHEAD_FIXED_BYTES = 288 * MIB
NATIVE_OVERHEAD_HEAP_FRACTION = 0.05


def native_overhead_bytes(heap: int) -> int:
    return NATIVE_OVERHEAD_FIXED_BYTES + math.ceil(NATIVE_OVERHEAD_HEAP_FRACTION * heap)


def shard_memory_bytes(heap: int, data_bytes: int) -> int:
    """What the admission counts for one shard: its heap, the process beyond it, its share of the input."""
    return heap + native_overhead_bytes(heap) + data_bytes


@dataclass(frozen=True)
class Admission:
    ok: bool
    message: str  # one paragraph: the arithmetic, and when refused, the K or heap that would fit
    max_shards_that_fit: int  # 0 when not even one shard fits
    max_heap_that_fits: int  # bytes (whole MiB) per shard for the requested K; 0 when none fits


def admit(shards: int, heap_bytes: int, native_overhead_bytes: int, available_bytes: int, *,
          heap_floor_bytes: int = 0, available_what: str = "memory available") -> Admission:
    """May K shards of `heap_bytes` heap (plus overhead) start with `available_bytes` free? (pure)

    No heap below `heap_floor_bytes` (the largest user's need) is offered as a fix.
    """
    if shards < 1:
        raise ValueError(f"shards must be at least 1, got {shards}")
    available = max(available_bytes, 0)
    per_shard = heap_bytes + native_overhead_bytes
    total = shards * per_shard
    max_shards = available // per_shard
    max_heap = max((available // shards - native_overhead_bytes) // MIB * MIB, 0)
    arithmetic = (f"{plural(shards, 'shard')} x ({format_bytes(heap_bytes)} Java heap"
                  f" + {format_bytes(native_overhead_bytes)} beyond the heap) = {format_bytes(total)}")
    if total <= available_bytes:
        return Admission(True, f"{arithmetic} fits in the {format_bytes(available_bytes)} of {available_what}.",
                         max_shards, max_heap)
    fixes, note = [], ""
    if max_shards >= 1:
        fixes.append(f"run at most {plural(max_shards, 'shard')} at once"
                     f" (--max-parallel {max_shards}, or --shards {max_shards})")
    floor = max(heap_floor_bytes, MIB)
    if max_heap >= floor:
        fixes.append(f"lower jvm.xmx to {max_heap // MIB}m or less")
    elif max_heap > 0:
        note = (f"; not a smaller heap: {max_heap // MIB}m would fit {plural(shards, 'shard')},"
                f" but the largest user needs {format_bytes(heap_floor_bytes)}")
    # No heap fits K at once, not even one shard of this heap: one at a time with a smaller heap may.
    one_heap = max((available - native_overhead_bytes) // MIB * MIB, 0)
    if max_shards == 0 and shards > 1 and max_heap < floor and one_heap > max_heap and one_heap >= floor:
        fixes.append(f"run one shard at a time with a smaller heap (--max-parallel 1 and jvm.xmx"
                     f" {one_heap // MIB}m or less)")
    # Always a fix that works as it stands: the memory this launch needs.
    fixes.append(f"{'or ' if fixes else ''}give the launch more memory: free {format_bytes(total - available)}"
                 f" on this machine, or run on one with {format_bytes(total)} of {available_what}")
    lead = "not even one shard fits" if max_shards == 0 else "the OOM killer would end shards mid-run"
    return Admission(False, f"{arithmetic} is more than the {format_bytes(available_bytes)} of {available_what}:"
                            f" {lead}{note}. To fit: {'; '.join(fixes)}.", max_shards, max_heap)


# --- The cgroup files: memory limits and CPU quotas ----------------------------------------------

_UNLIMITED = 2**60  # cgroup v1 writes "no limit" as a page-aligned 2^63 - 1


def parse_cgroup_limit(text: str) -> int | None:
    """memory.max (v2) or memory.limit_in_bytes (v1) -> bytes, or None for no limit."""
    value = text.strip()
    if not value or value == "max":
        return None
    limit = int(value)
    return None if limit >= _UNLIMITED else limit


def parse_memory_stat(text: str) -> dict[str, int]:
    """memory.stat -> {key: value}; malformed lines are skipped (the file is advisory here)."""
    pairs = (line.partition(" ") for line in text.splitlines())
    return {key: int(value) for key, _, value in pairs if value.strip().isdigit()}


def parse_proc_cgroup(text: str, controller: str = "memory") -> tuple[str | None, str | None]:
    """/proc/self/cgroup -> (the v2 cgroup path, the v1 path of `controller`), each None if absent."""
    v2 = v1 = None
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) == 3 and parts[1] == "":
            v2 = parts[2]
        elif len(parts) == 3 and controller in parts[1].split(","):
            v1 = parts[2]
    return v2, v1


def cgroup_headroom(limit: int, usage: int, stat: Mapping[str, int]) -> int:
    """What a cgroup can still take: its limit minus usage, not counting reclaimable file cache."""
    inactive_file = stat.get("total_inactive_file", stat.get("inactive_file", 0))
    return max(limit - max(usage - inactive_file, 0), 0)


def _candidate_dirs(mount: Path, path: str | None) -> list[Path]:
    """The process's cgroup dir and its ancestors up to the mount (every limit on the way applies)."""
    dirs = []
    current = mount / path.lstrip("/") if path else mount
    while current != mount and mount in current.parents:
        dirs.append(current)
        current = current.parent
    return [*dirs, mount]


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None


def cgroup_available(root: Path = Path("/sys/fs/cgroup"),
                     proc_cgroup: Path = Path("/proc/self/cgroup")) -> tuple[int, str] | None:
    """(bytes the tightest cgroup memory limit still allows, its file), or None without a limit."""
    v2_path, v1_path = parse_proc_cgroup(_read(proc_cgroup) or "")
    layouts = ((root, v2_path, "memory.max", "memory.current"),
               (root / "memory", v1_path, "memory.limit_in_bytes", "memory.usage_in_bytes"))
    found = []
    for mount, path, limit_name, usage_name in layouts:
        for directory in _candidate_dirs(mount, path):
            limit = parse_cgroup_limit(_read(directory / limit_name) or "")
            if limit is not None:
                usage = (_read(directory / usage_name) or "").strip()
                stat = parse_memory_stat(_read(directory / "memory.stat") or "")
                found.append((cgroup_headroom(limit, int(usage) if usage.isdigit() else 0, stat),
                              str(directory / limit_name)))
    return min(found, key=lambda headroom: headroom[0]) if found else None


def available_memory() -> tuple[int, str]:
    """Bytes free for new processes (psutil, capped by a cgroup limit), and their source in words."""
    import psutil

    available = (int(psutil.virtual_memory().available), "memory available (psutil)")
    cgroup = cgroup_available()
    if cgroup is not None and cgroup[0] < available[0]:
        return cgroup[0], f"memory left under the cgroup limit ({cgroup[1]})"
    return available


def _quota_cores(quota: str, period: str) -> float | None:
    try:
        quota_us, period_us = int(quota), int(period)
    except ValueError:  # "max", or an unreadable file: the quota only caps a default
        return None
    return quota_us / period_us if quota_us > 0 and period_us > 0 else None


def parse_cpu_max(text: str) -> float | None:
    """cpu.max (v2) -> cores' worth, None for no quota."""
    fields = text.split()
    return _quota_cores(fields[0], fields[1] if len(fields) > 1 else "100000") if fields else None


def parse_cfs_quota(quota_text: str, period_text: str) -> float | None:
    """cpu.cfs_quota_us and cpu.cfs_period_us (v1) -> cores' worth, None for no quota (-1)."""
    return _quota_cores(quota_text.strip(), period_text.strip())


def cgroup_cpu_quota(root: Path = Path("/sys/fs/cgroup"),
                     proc_cgroup: Path = Path("/proc/self/cgroup")) -> tuple[float, str] | None:
    """(the tightest cgroup CPU quota on the way up, in cores' worth, its file), or None without one."""
    v2_path, v1_path = parse_proc_cgroup(_read(proc_cgroup) or "", controller="cpu")
    found = [(parse_cpu_max(_read(directory / "cpu.max") or ""), str(directory / "cpu.max"))
             for directory in _candidate_dirs(root, v2_path)]
    # v1 mounts the cpu controller alone or joined with cpuacct, under either name.
    for mount in (root / "cpu", root / "cpu,cpuacct", root / "cpuacct,cpu"):
        for directory in _candidate_dirs(mount, v1_path):
            quota, period = _read(directory / "cpu.cfs_quota_us"), _read(directory / "cpu.cfs_period_us")
            if quota is not None and period is not None:
                found.append((parse_cfs_quota(quota, period), str(directory / "cpu.cfs_quota_us")))
    quotas = [(quota, path) for quota, path in found if quota is not None]
    return min(quotas) if quotas else None


# --- Cores available: the affinity, capped by a cgroup CPU quota -----------------------------------


@dataclass(frozen=True)
class CoresAvailable:
    count: int  # min(affinity, quota rounded up), at least 1
    affinity: int  # CPUs in the launcher's affinity mask (a scheduler's allocation, taskset)
    quota: float | None = None  # cores' worth of CPU time the tightest cgroup grants; None: no quota
    quota_file: str | None = None

    def describe(self) -> str:
        quota = "none" if self.quota is None else f"{self.quota:g} cores, {self.quota_file}"
        return f"affinity {self.affinity}; cgroup quota {quota}"


def cores_from(affinity: int, quota: float | None) -> int:
    """The affinity capped by the quota rounded up (as the JVM does), at least 1 (pure)."""
    return max(1, min(affinity, math.ceil(quota) if quota is not None else affinity))


def available_cores() -> CoresAvailable:
    """The cores this process (and the shards it starts, which inherit both limits) may use."""
    affinity = usable_cpus()
    quota, quota_file = cgroup_cpu_quota() or (None, None)
    cores = CoresAvailable(cores_from(affinity, quota), affinity, quota, quota_file)
    log.info("cores available: %d (%s)", cores.count, cores.describe())
    return cores


ProcessKey = tuple[int, float]  # (pid, create time): a pid the kernel gave again to a new process is another process


def share_of_cpus(before: Mapping[ProcessKey, float], after: Mapping[ProcessKey, float], elapsed_seconds: float,
                  cpus: int) -> float:
    """CPU time used between two readings, in percent of `cpus` (pure); a process that ended in between
    loses its last part (at most one reading's worth)."""
    if elapsed_seconds <= 0 or cpus < 1:
        return 0.0
    used = sum(max(seconds - before.get(key, 0.0), 0.0) for key, seconds in after.items())
    return min(100.0 * used / (elapsed_seconds * cpus), 100.0)


def cpus_busy(per_cpu_percent: Sequence[float], cpus: Collection[int] | None) -> float:
    """The mean use of the CPUs the run may use (`cpus`, its affinity; None: all) (pure)."""
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


# --- The launcher's check ------------------------------------------------------------------------


@dataclass(frozen=True)
class LaunchData:
    """What the launcher reads of the input to plan a run's memory (measure_launch_data)."""

    index: UserIndex  # every user: the fingerprint, the assignment, the progress view's users per shard
    needs: dict[str, int] | None  # every user's predicted heap need (the task's bound, or exact); None: none
    checked: dict[str, int] | None  # exact needs of the users whose rows were loaded
    share_bytes: int  # the load peak of one shard's share, measured (the rule in the module docstring)
    share_users: int  # the users of the share measured
    whole_table: bool  # each shard loads the whole table (share_bytes is the whole table's peak)

    def describe(self) -> str:
        what = ("the whole table (each shard loads all of it)" if self.whole_table
                else f"the largest shard's share, {self.share_users} of {len(self.index.user_ids)} users")
        return f"{format_bytes(self.share_bytes)} to load {what}, measured"


# A shard's load peak per row (bench/shard_load.py, docs/dev/PERFORMANCE.md); a floor, since the
# launcher's own measurement can come out low by reusing memory its index pass freed.
LOAD_PEAK_BYTES_PER_ROW = 250


def refuse_shards_without_users(shards: int, users: int) -> None:
    """Refuse a new run with more shards than users (empty shards still cost a process and a JVM)."""
    if shards > users:
        raise ConfigError(f"{shards} shards for {plural(users, 'user')}: {shards - users} shards would"
                          f" have no user and still start a process and a JVM each. Pass --shards {max(users, 1)} or"
                          " fewer (a shard per user at most).")


def measure_launch_data(task: Any, settings: Any, jvm: JvmConfig, shards: int, partition: str) -> LaunchData:
    """Read the input as a run of `shards` shards will and measure one shard's load (no JVM)."""
    whole_load = PeakMemory().start()
    index, whole = read_user_index(task, settings)
    needs, whole = run_heap_needs(task, settings, index, whole, jvm)
    rows_of = dict(zip(index.user_ids, index.costs()))
    dataset: Dataset | None = whole
    if whole is not None:
        peak, users = whole_load.grown(), list(index.user_ids)
    else:
        users = max(assign_index(index, shards, partition), key=lambda share: sum(rows_of[u] for u in share))
        share_load = PeakMemory().start()
        dataset = load_users(task, settings, tuple(users), index) if users else None
        peak = share_load.grown()
    peak = max(peak, int(sum(rows_of[u] for u in users) * LOAD_PEAK_BYTES_PER_ROW))
    checked = task_heap_needs(task, settings, dataset, jvm) if dataset is not None else None
    return LaunchData(index, needs if needs is not None else checked, checked, peak, len(users), whole is not None)


def admit_shards(heap: HeapPlan, shards: int, data_bytes: int, available_bytes: int | None = None) -> Admission:
    """Admit `shards` shards of `heap`, each with `data_bytes` of input, against the memory available."""
    available_what = "memory available"
    if available_bytes is None:
        available_bytes, available_what = available_memory()
    admission = admit(shards, heap.heap, native_overhead_bytes(heap.heap) + data_bytes, available_bytes,
                      heap_floor_bytes=heap.largest_need or 0, available_what=available_what)
    log.info("memory check for %d shards with %s: %s", shards, heap.jvm_line(), admission.message)
    return admission
