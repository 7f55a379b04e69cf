"""A merge command's wall time, CPU time and peak memory (the sum of its process tree's RSS, sampled).

    .venv/bin/python bench/merge.py RUN [--repeat 5] [--src DIR]

Runs `python -m shardrun merge --run RUN --output <temp> --overwrite` `--repeat` times and prints each
run's seconds, CPU seconds (user + system, its processes together) and peak MiB, then the medians
(JSON). `--src` puts another source tree first on the
path (an older shardrun, to compare two versions in one session; with --command "-m shardrun.merge"
for one from before `python -m shardrun`); docs/dev/MERGE.md keeps the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil


def tree_rss(process: psutil.Process) -> int:
    total = 0
    for member in [process, *process.children(recursive=True)]:
        try:
            total += member.memory_info().rss
        except psutil.Error:
            continue
    return total


def cpu_of_children() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)  # every waited-for descendant, grandchildren too
    return usage.ru_utime + usage.ru_stime


def measure(command: list[str], run: Path, output: Path, env: dict[str, str]) -> dict[str, float]:
    cpu_before = cpu_of_children()
    started = time.perf_counter()
    child = subprocess.Popen([*command, "--run", str(run), "--output", str(output), "--overwrite"], env=env,
                             stdout=subprocess.DEVNULL)
    watched, peak = psutil.Process(child.pid), 0
    while child.poll() is None:
        try:
            peak = max(peak, tree_rss(watched))
        except psutil.Error:
            pass
        time.sleep(0.02)
    seconds = time.perf_counter() - started
    if child.returncode != 0:
        raise SystemExit(f"the merge exited {child.returncode}")
    return {"wall_s": round(seconds, 2), "cpu_s": round(cpu_of_children() - cpu_before, 2),
            "peak_mib": round(peak / 2**20, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--src", type=Path, help="a shardrun source tree (its src/) put first on the path")
    parser.add_argument("--command", default="-m shardrun merge",
                        help="the merge command after the interpreter (default: %(default)s)")
    args = parser.parse_args()
    env = dict(os.environ)
    if args.src:
        env["PYTHONPATH"] = os.pathsep.join([str(args.src.resolve()), env.get("PYTHONPATH", "")])
    with tempfile.TemporaryDirectory(prefix="merge-bench-") as scratch:
        command = [sys.executable, *args.command.split()]
        runs = [measure(command, args.run, Path(scratch) / "merged", env) for _ in range(args.repeat)]
    medians = {key: statistics.median(r[key] for r in runs) for key in ("wall_s", "cpu_s", "peak_mib")}
    print(json.dumps({"runs": runs, "median": medians}))


if __name__ == "__main__":
    main()
