"""shardrun's own cost at scale, each figure a ratio against a baseline measured side by side in this run.

    .venv/bin/python bench/scale.py [--sections overhead,merge,load,balance] [--overhead-users 20000]
        [--merge-users 10000,100000] [--merge-shards 16,64] [--load-rows 10000000]
        [--balance-users 16,64,1000] [--balance-shards 4,8,16] [--work DIR]

Sections:
- merge: result stores of N users over K shard dirs, written by the real group committer (batches of
  500 users, as a shard of small users commits them) with the rows of a real run of config/proposal.yaml
  (its schema and values, one copy per synthetic user id). `merge_shard_results` and `validate_outputs`
  run as processes (start-up included) and their peak RSS is read from the kernel (ru_maxrss of a small
  helper process's children);
  the baseline is pandas reading the merged results.csv back, in this process.
- overhead: N small users (48 hourly observations each, windows of the sample data's real series; k=1,
  5 surrogates, both feature modes) through one shard process (`run_production --shard 0/1`: start-up,
  JVM, analysis, commits) plus its merge, against two baselines on one core: the plain numpy
  implementation of the same analysis over the same users' arrays, already in memory, in this process
  (bench/engine.py's numpy_user: entropy, AIS with its permutation null, k selection, te_hour with its
  null; the analysis alone), and the same analysis as a whole program (bench/plain_numpy.py as a
  process: start-up, reading and grouping the CSV, the analysis, writing its results CSV), which is
  what a user would run instead of shardrun.
- load: a shard's start (user index, plan, the rows of its users) and its peak memory at K=1 and K=8 on a
  generated table of --load-rows rows, CSV and Parquet: bench/shard_load.py, run from here.
- balance: makespan over the lower bound, max(total / K, largest user), for modulo and balanced
  assignment (partition.py), users of 29,000 to 61,000 observations drawn with a fixed seed, a user's
  cost its observations.

Figures and the commands that produced them: docs/dev/PERFORMANCE.md ("Scale").
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))  # engine.py: the plain numpy implementation of the analysis
PYTHON = sys.executable
BATCH_USERS = 500


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


def template_run(work: Path) -> tuple[dict, list[dict], dict | None]:
    """run.json, one real user's rows and its attempt record, from a real pilot run of config/proposal.yaml."""
    out = work / "template"
    if not (out / "run.json").is_file():
        subprocess.run([PYTHON, "-m", "shardrun", "run", "--config", "config/proposal.yaml", "--shard", "0/1",
                        "--pilot", "1", "--out", str(out)], cwd=REPO, check=True, capture_output=True)
    from shardrun.storage.commits import scan_committed
    from shardrun.storage.paths import ShardPaths

    [user] = scan_committed(ShardPaths(out / "shard-0-of-1")).values()
    return json.loads((out / "run.json").read_text()), user.rows, user.record.get("attempt")


def write_store(run_dir: Path, users: int, shards: int, run_doc: dict, rows: list[dict],
                attempt: dict | None = None) -> None:
    """A finished run of `users` synthetic users over `shards` shard dirs, committed by the real group committer."""
    from shardrun.partition import ShardSpec, users_of_shard
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
            committer.add(user_id, [{**row, "user_id": user_id, "shard": str(spec)} for row in rows], attempt=attempt)
            if n % BATCH_USERS == 0:
                committer.flush()
        committer.flush()


def merge_section(work: Path, user_counts: list[int], shard_counts: list[int]) -> list[dict[str, Any]]:
    run_doc, rows, attempt = template_run(work)
    figures = []
    for users in user_counts:
        for shards in shard_counts:
            run_dir = work / f"store-{users}x{shards}"
            if not run_dir.is_dir():
                write_store(run_dir, users, shards, run_doc, rows, attempt)
                os.sync()  # else the first merge's fsyncs wait for the new store's writeback
            merged = run_dir / "merged"
            merge_s, merge_rss = peak_rss_of([PYTHON, "-m", "shardrun", "merge", "--run", str(run_dir), "--output",
                                              str(merged), "--overwrite"], REPO)
            validate_s, validate_rss = peak_rss_of([PYTHON, "-m", "shardrun", "validate", "--dir", str(merged)], REPO)
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


# --- per-user overhead: small users through one shard, against numpy ---------------------------------


def small_users(path: Path, users: int, length: int = 48) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """`users` users of `length` hourly observations, each a window of a sample user's real series."""
    sample = pd.read_csv(REPO / "data" / "sample_users.csv", dtype={"user_id": str})
    series = [(group["timestamp"].to_numpy(), group["value"].to_numpy()) for _, group in sample.groupby("user_id")]
    frames, arrays = [], {}
    for n in range(users):
        stamps, values = series[n % len(series)]
        start = (n // len(series) * length) % (len(values) - length)
        user = f"w{n:06d}"
        window = slice(start, start + length)
        frames.append(pd.DataFrame({"user_id": user, "timestamp": stamps[window], "value": values[window]}))
        arrays[user] = (values[window], pd.to_datetime(stamps[window]).hour.to_numpy())
    pd.concat(frames).to_csv(path, index=False)
    return arrays


def overhead_section(work: Path, users: int) -> dict[str, Any]:
    from engine import numpy_user

    data = work / f"small{users}.csv"
    arrays = small_users(data, users)
    # written back now: otherwise the shard's first fsyncs wait for the fresh input's writeback (ext4
    # commits a file's new data with the next journal commit), which a user's data, written long before,
    # never costs
    os.sync()
    config = yaml.safe_load((REPO / "config" / "proposal.yaml").read_text())
    config["data"]["path"] = str(data)
    config["k_selection"]["k_grid"] = [1]
    config["surrogates"] = 5
    config["output"] = {"root": str(work / "out")}
    config_path = work / f"small{users}.yaml"
    config_path.write_text(yaml.safe_dump(config))
    run_dir = work / f"small-run-{users}"
    shutil.rmtree(run_dir, ignore_errors=True)  # a kept --work dir: each measurement starts a new run
    started = time.perf_counter()
    subprocess.run([PYTHON, "-m", "shardrun", "run", "--config", str(config_path), "--full", "--shard", "0/1",
                    "--out", str(run_dir)], cwd=REPO, check=True, capture_output=True)
    shard_s = time.perf_counter() - started
    started = time.perf_counter()
    subprocess.run([PYTHON, "-m", "shardrun", "merge", "--run", str(run_dir), "--output", str(run_dir / "merged")],
                   cwd=REPO, check=True, capture_output=True)
    merge_s = time.perf_counter() - started
    started = time.perf_counter()
    for counts, hours in arrays.values():
        numpy_user(counts, hours, [1], 5, seed=1)
    numpy_s = time.perf_counter() - started
    plain = work / f"plain-numpy-{users}.csv"
    started = time.perf_counter()
    subprocess.run([PYTHON, str(REPO / "bench" / "plain_numpy.py"), "--data", str(data), "--out", str(plain),
                    "--k-grid", "1", "--surrogates", "5"], cwd=REPO, check=True, capture_output=True)
    program_s = time.perf_counter() - started
    check_same_numbers(plain, run_dir / "merged" / "results.csv", users)
    batches = len(list((run_dir / "shard-0-of-1" / "results").glob("b-*.jsonl")))
    figure = {"users": users, "shard_s": shard_s, "merge_s": merge_s, "numpy_s": numpy_s,
              "numpy_program_s": program_s, "shardrun_over_numpy": (shard_s + merge_s) / numpy_s,
              "shardrun_over_numpy_program": (shard_s + merge_s) / program_s, "batch_files": batches}
    print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in figure.items()}), flush=True)
    return figure


def check_same_numbers(plain: Path, merged: Path, users: int) -> None:
    """The plain program did the same work: a row per user and mode, with shardrun's numbers (the
    permutations differ, so the nulls are not compared; with one k, as here, the same k is selected)."""
    ours = pd.read_csv(merged, dtype={"user_id": str}).set_index(["user_id", "feature_mode"])
    theirs = pd.read_csv(plain, dtype={"user_id": str}).set_index(["user_id", "feature_mode"])
    assert len(theirs) == len(ours) == 2 * users and theirs.index.sort_values().equals(ours.index.sort_values())
    ours = ours.loc[theirs.index]
    for column in ("entropy_bits", "k_selected", "ais_bits", "te_hour_bits"):
        assert np.allclose(theirs[column], ours[column], rtol=0, atol=1e-12), column


# --- balance: modulo and balanced against the lower bound ---------------------------------------------


def balance_section(users: int, shard_counts: list[int], seed: int = 20261202) -> list[dict[str, Any]]:
    """Makespan over the lower bound for users of 29,000..61,000 observations (the production data's range),
    with a user's cost taken as its observations (the analysis is linear in them)."""
    from shardrun.partition import ShardSpec, balanced_assignment, users_of_shard

    rng = np.random.default_rng(seed)
    user_ids = [f"u{n:06d}" for n in range(users)]
    costs = rng.integers(29_000, 61_001, size=users).astype(float)
    cost_of = dict(zip(user_ids, costs))
    figures = []
    for shards in shard_counts:
        bound = max(costs.sum() / shards, costs.max())
        modulo = max(sum(cost_of[u] for u in users_of_shard(user_ids, ShardSpec(i, shards))) for i in range(shards))
        balanced = max(sum(cost_of[u] for u in share) for share in balanced_assignment(user_ids, list(costs), shards))
        figure = {"users": users, "shards": shards, "modulo_over_bound": modulo / bound,
                  "balanced_over_bound": balanced / bound}
        print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in figure.items()}), flush=True)
        figures.append(figure)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sections", default="merge")
    parser.add_argument("--merge-users", default="10000,100000")
    parser.add_argument("--merge-shards", default="16,64")
    parser.add_argument("--overhead-users", type=int, default=20000)
    parser.add_argument("--load-rows", type=int, default=10_000_000)
    parser.add_argument("--balance-users", default="16,64,1000")
    parser.add_argument("--balance-shards", default="4,8,16")
    parser.add_argument("--work", type=Path, help="keep the generated stores here (default: a temporary dir)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="shardrun-scale-") as scratch:
        work = args.work or Path(scratch)
        work.mkdir(parents=True, exist_ok=True)
        sections = args.sections.split(",")
        if "overhead" in sections:
            overhead_section(work, args.overhead_users)
        if "merge" in sections:
            merge_section(work, [int(n) for n in args.merge_users.split(",")],
                          [int(n) for n in args.merge_shards.split(",")])
        if "load" in sections:
            import shard_load

            shard_load.main(["--rows", str(args.load_rows), "--dir", str(work / "load"), "--shards", "1", "8"])
        if "balance" in sections:
            for users in args.balance_users.split(","):
                balance_section(int(users), [int(k) for k in args.balance_shards.split(",")])


if __name__ == "__main__":
    main()
