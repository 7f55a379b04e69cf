"""shardrun's own cost at scale, each figure a ratio against a baseline measured side by side in this run.

    .venv/bin/python bench/scale.py [--sections overhead,merge,balance] [--merge-users 10000,100000]
                                    [--merge-shards 16,64] [--overhead-users 20000]

Sections:
- merge: result stores of N users over K shard dirs, written by the real group committer (batches of
  500 users, as a shard of small users commits them) with the rows of a real run of config/proposal.yaml
  (its schema and values, one copy per synthetic user id). `merge_shard_results` and `validate_outputs`
  run as processes (start-up included) and their peak RSS is read from the kernel (wait4's ru_maxrss);
  the baseline is pandas reading the merged results.csv back, in this process.
- overhead: N small users (48 hourly observations each, windows of the sample data's real series; k=1,
  5 surrogates, both feature modes) through one shard process (`run_production --shard 0/1`: start-up,
  JVM, analysis, commits) plus its merge, against a plain in-process numpy implementation of the same
  analysis on one core (tests/independent_estimator.py: the same permutations, the same numbers).
- balance: per-shard cost (observations) and makespan over the lower bound, max(total / K, largest
  user), for modulo and balanced assignment, on users of 29,000 to 61,000 observations.

Figures and the commands that produced them: docs/PERFORMANCE.md ("Scale").
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
PYTHON = sys.executable
BATCH_USERS = 500


def timed_process(command: list[str], cwd: Path, env: dict | None = None) -> tuple[float, int, subprocess.CompletedProcess]:
    """Wall seconds and peak RSS (bytes) of one child process, which must succeed (or exit 5, incomplete)."""
    started = time.perf_counter()
    process = subprocess.Popen(command, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env={**os.environ, **(env or {})})
    out, err = process.communicate()
    _, status, usage = os.wait4(process.pid, 0) if process.returncode is None else (0, 0, None)
    seconds = time.perf_counter() - started
    if usage is None:
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    result = subprocess.CompletedProcess(command, process.returncode, out, err)
    if process.returncode != 0:
        raise SystemExit(f"{' '.join(command)} exited {process.returncode}:\n{out}\n{err}")
    return seconds, usage.ru_maxrss * 1024, result


def peak_rss_of(command: list[str], cwd: Path) -> tuple[float, int]:
    """Seconds and peak RSS of a command, measured by a fresh helper process so that ru_maxrss is its own."""
    probe = (
        "import os, resource, subprocess, sys, time, json\n"
        "t = time.perf_counter()\n"
        "p = subprocess.run(sys.argv[1:], capture_output=True, text=True)\n"
        "s = time.perf_counter() - t\n"
        "sys.stderr.write(p.stdout[-2000:] + p.stderr[-4000:] if p.returncode not in (0,) else '')\n"
        "print(json.dumps({'seconds': s, 'rss': resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024,"
        " 'code': p.returncode}))\n"
    )
    done = subprocess.run([PYTHON, "-c", probe, *command], cwd=cwd, capture_output=True, text=True)
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    if figures["code"] != 0:
        raise SystemExit(f"{' '.join(command)} exited {figures['code']}:\n{done.stderr}")
    return figures["seconds"], figures["rss"]


# --- merge and validate -----------------------------------------------------------------------


def template_run(work: Path) -> tuple[dict, list[dict]]:
    """run.json and one real user's rows, from a real pilot run of config/proposal.yaml."""
    out = work / "template"
    if not (out / "run.json").is_file():
        subprocess.run([PYTHON, "-m", "shardrun.worker", "--config", "config/proposal.yaml", "--shard", "0/1",
                        "--pilot", "1", "--out", str(out)], cwd=REPO, check=True, capture_output=True)
    from shardrun.storage.commits import scan_committed
    from shardrun.storage.paths import ShardPaths

    [user] = scan_committed(ShardPaths(out / "shard-0-of-1")).values()
    return json.loads((out / "run.json").read_text()), user.rows


def write_store(run_dir: Path, users: int, shards: int, run_doc: dict, rows: list[dict]) -> None:
    """A finished run of `users` synthetic users over `shards` shard dirs, committed by the real group committer."""
    from shardrun.sharding import ShardSpec, users_of_shard
    from shardrun.storage.atomic import write_json_atomic
    from shardrun.storage.commits import GroupCommitter
    from shardrun.storage.paths import RunPaths

    run = RunPaths(run_dir)
    run_dir.mkdir(parents=True)
    write_json_atomic(run.run_json, {**run_doc, "shards": shards, "users_total": users})
    user_ids = [f"user{n:07d}" for n in range(users)]
    for index in range(shards):
        spec = ShardSpec(index, shards)
        paths = run.shard(spec)
        paths.make()
        mine = users_of_shard(user_ids, spec)
        write_json_atomic(paths.identity, {"shard": str(spec), "config_hash": run_doc["config_hash"],
                                           "data_fingerprint": run_doc["data_fingerprint"], "pilot": None,
                                           "task": run_doc["task"], "users_planned": mine})
        write_json_atomic(paths.status, {"state": "completed"})
        committer = GroupCommitter(paths, {"config_hash": run_doc["config_hash"], "shard": str(spec)})
        for n, user_id in enumerate(mine, start=1):
            committer.add(user_id, [{**row, "user_id": user_id, "shard": str(spec)} for row in rows])
            if n % BATCH_USERS == 0:
                committer.flush()
        committer.flush()


def merge_section(work: Path, user_counts: list[int], shard_counts: list[int]) -> list[dict[str, Any]]:
    run_doc, rows = template_run(work)
    figures = []
    for users in user_counts:
        for shards in shard_counts:
            run_dir = work / f"store-{users}x{shards}"
            if not run_dir.is_dir():
                write_store(run_dir, users, shards, run_doc, rows)
            merged = run_dir / "merged"
            merge_s, merge_rss = peak_rss_of([PYTHON, "-m", "shardrun.merge", "--run", str(run_dir), "--output",
                                              str(merged), "--overwrite"], REPO)
            validate_s, validate_rss = peak_rss_of([PYTHON, "-m", "shardrun.validate", "--dir", str(merged)], REPO)
            started = time.perf_counter()
            frame = pd.read_csv(merged / "results.csv")
            read_s = time.perf_counter() - started
            assert len(frame) == users * len(rows) and frame["user_id"].nunique() == users
            figure = {"users": users, "shards": shards, "rows": len(frame), "merge_s": merge_s,
                      "merge_peak_mib": merge_rss / 2**20, "validate_s": validate_s,
                      "validate_peak_mib": validate_rss / 2**20, "pandas_read_csv_s": read_s,
                      "merge_over_read": merge_s / read_s, "validate_over_read": validate_s / read_s}
            print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in figure.items()}), flush=True)
            figures.append(figure)
    return figures


SECTIONS: dict[str, Callable[..., Any]] = {}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sections", default="merge")
    parser.add_argument("--merge-users", default="10000,100000")
    parser.add_argument("--merge-shards", default="16,64")
    parser.add_argument("--work", type=Path, help="keep the generated stores here (default: a temporary dir)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="shardrun-scale-") as scratch:
        work = args.work or Path(scratch)
        work.mkdir(parents=True, exist_ok=True)
        sections = args.sections.split(",")
        if "merge" in sections:
            merge_section(work, [int(n) for n in args.merge_users.split(",")],
                          [int(n) for n in args.merge_shards.split(",")])


if __name__ == "__main__":
    main()
