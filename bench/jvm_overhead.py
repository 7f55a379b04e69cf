"""Measure the memory a shard process takes beyond its Java heap (the JVM's "native overhead").

A shard is one Python process holding CPython, numpy, pandas, the loaded input table, JPype and a
JVM: metaspace, code cache, thread stacks, the garbage collector's own structures, and the heap.
The launcher's admission check (shardrun.launch.admission) needs `RSS - heap` per shard to decide whether K
shards fit in memory; this script measures it with real worker-like processes:

    for each heap H: python -c "<child>"  which imports shardrun, loads the config's data, starts
    the JVM with shardrun.shard.jvm.start_jvm at -Xms=H -Xmx=H (+ -XX:+AlwaysPreTouch, so the whole heap
    is resident as it becomes in a long run), runs the first --users users through the task, and
    reports its peak RSS (the kernel's high-water mark) and the JVM's committed heap and non-heap.
    The parent samples the child's RSS with psutil as a cross-check.

overhead = peak RSS - committed heap. Run from the repository root:

    .venv/bin/python bench/jvm_overhead.py --config config/proposal.yaml --heaps 128m,256m,512m,1g,2g

The figures and the exact command are recorded in docs/dev/PERFORMANCE.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[1]
MIB = 1024**2

CHILD = textwrap.dedent(
    """
    import json, resource, sys, time
    import psutil
    from shardrun.config import JvmConfig, load_config
    from shardrun.shard.jvm import start_jvm, task_classpath
    from shardrun.task import load_task

    config_path, heap, users, options = sys.argv[1], sys.argv[2], int(sys.argv[3]), json.loads(sys.argv[4])
    me = psutil.Process()
    config = load_config(config_path)
    task = load_task(config.task)
    dataset = task.load(config.settings)
    rss_before_jvm = me.memory_info().rss
    start_jvm(JvmConfig(xms=heap, xmx=heap, options=tuple(options)), task_classpath(task, config.settings, config.jvm))
    rss_after_start = me.memory_info().rss
    started = time.perf_counter()
    for user_id in dataset.user_ids[:users]:
        task.analyse(dataset, user_id, config.settings)
    seconds = time.perf_counter() - started

    import jpype
    factory = jpype.JClass("java.lang.management.ManagementFactory")
    memory = factory.getMemoryMXBean()
    non_heap_pools = {
        str(pool.getName()): int(pool.getUsage().getCommitted())
        for pool in factory.getMemoryPoolMXBeans()
        if str(pool.getType().toString()) == "Non-heap memory"
    }
    print(json.dumps({
        "rss_before_jvm": rss_before_jvm,
        "rss_after_jvm_start": rss_after_start,
        "rss_end": me.memory_info().rss,
        "rss_peak": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,  # Linux: KiB
        "heap_committed": int(memory.getHeapMemoryUsage().getCommitted()),
        "heap_max": int(memory.getHeapMemoryUsage().getMax()),
        "non_heap_committed": int(memory.getNonHeapMemoryUsage().getCommitted()),
        "non_heap_pools": non_heap_pools,
        "java_threads": int(factory.getThreadMXBean().getThreadCount()),
        "users": min(users, len(dataset.user_ids)),
        "analysis_seconds": seconds,
    }))
    """
)


def measure(config: Path, heap: str, users: int, options: list[str]) -> dict:
    """One child process at one heap; returns its report plus the parent's psutil RSS peak."""
    command = [sys.executable, "-c", CHILD, str(config), heap, str(users), json.dumps(options)]
    child = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    watched = psutil.Process(child.pid)
    sampled_peak = 0
    while child.poll() is None:
        try:
            sampled_peak = max(sampled_peak, watched.memory_info().rss)
        except psutil.NoSuchProcess:
            break
        time.sleep(0.005)
    out, err = child.communicate()
    if child.returncode != 0:
        raise SystemExit(f"child at -Xmx{heap} exited {child.returncode}:\n{err[-3000:]}")
    report = json.loads(out.strip().splitlines()[-1])
    report["rss_peak_sampled"] = sampled_peak
    report["heap"] = heap
    report["overhead"] = report["rss_peak"] - report["heap_committed"]
    return report


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, default=Path("config/proposal.yaml"))
    parser.add_argument("--heaps", default="128m,256m,512m,1g", help="comma-separated -Xmx/-Xms values")
    parser.add_argument("--users", type=int, default=4, help="users of the data to analyse per process")
    parser.add_argument("--repeat", type=int, default=1, help="processes per heap (the largest overhead is kept)")
    parser.add_argument("--cpus", type=int, default=None,
                        help="-XX:ActiveProcessorCount: size the JVM's GC and compiler threads as on a larger machine")
    parser.add_argument("--no-pretouch", action="store_true", help="leave out -XX:+AlwaysPreTouch")
    parser.add_argument("--json", type=Path, help="also write every report to this file")
    args = parser.parse_args()

    options = [] if args.no_pretouch else ["-XX:+AlwaysPreTouch"]
    if args.cpus:
        options.append(f"-XX:ActiveProcessorCount={args.cpus}")
    print(f"# {platform.platform()}, {os.cpu_count()} CPUs, Python {platform.python_version()};"
          f" config {args.config}, {args.users} users per process, JVM options {' '.join(options) or '(none)'}")
    print(f"{'heap':>6} {'RSS peak':>9} {'psutil':>9} {'heap comm.':>10} {'overhead':>9} {'non-heap':>9}"
          f" {'py+data':>8} {'threads':>7} {'s':>5}")
    reports = []
    for heap in args.heaps.split(","):
        runs = [measure(args.config, heap, args.users, options) for _ in range(args.repeat)]
        worst = max(runs, key=lambda r: r["overhead"])
        reports.append(worst)
        print(f"{heap:>6} {worst['rss_peak'] / MIB:8.0f}M {worst['rss_peak_sampled'] / MIB:8.0f}M"
              f" {worst['heap_committed'] / MIB:9.0f}M {worst['overhead'] / MIB:8.0f}M"
              f" {worst['non_heap_committed'] / MIB:8.0f}M {worst['rss_before_jvm'] / MIB:7.0f}M"
              f" {worst['java_threads']:>7} {worst['analysis_seconds']:5.1f}", flush=True)
    if args.json:
        args.json.write_text(json.dumps(reports, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
