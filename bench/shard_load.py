"""What one shard pays to start: the user index, the plan and the load of its users, at K=1 and K=8.

Writes a generated table (users of 29,000..61,000 hourly rows, sorted by user) as CSV and as Parquet
(row groups of --row-group rows), then runs, for each file and each K, a fresh Python process that does
exactly a shard's preparation (shardrun.shard.prepare.prepare of shard 0/K, as `run_production
--dry-run` does: index -> plan -> the rows of its users) and reports its wall time and peak RSS
(VmHWM of /proc/self/status: Linux only; getrusage's ru_maxrss would carry over the peak of the
process that started it, across exec). K=1 reads every row: what every shard paid before shards read by user.

    .venv/bin/python bench/shard_load.py --rows 10000000 --dir bench-data
    .venv/bin/python bench/shard_load.py --rows 1000000 --shards 1 8 --formats parquet

Figures and the machine: docs/dev/PERFORMANCE.md ("Each shard reads its own users").
"""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

log = logging.getLogger("shard_load")

SHORTEST, LONGEST = 29_000, 61_000  # a user's hourly observations, as in the production data


def write_tables(directory: Path, rows: int, row_group: int, seed: int = 11) -> dict[str, Path]:
    """The same table as CSV and Parquet (skipped when both exist already)."""
    import pandas as pd

    csv, parquet = directory / f"users_{rows}.csv", directory / f"users_{rows}.parquet"
    if csv.is_file() and parquet.is_file():
        return {"csv": csv, "parquet": parquet}
    rng = np.random.default_rng(seed)
    lengths = []
    while sum(lengths) < rows:
        lengths.append(int(rng.integers(SHORTEST, LONGEST + 1)))
    lengths[-1] -= sum(lengths) - rows
    starts = np.repeat(np.cumsum([0, *lengths[:-1]]), lengths)
    hour_of_user = np.arange(rows) - starts  # each user's own clock: hour 0, 1, ... from 2020-01-01
    stamps = np.datetime_as_string(np.datetime64("2020-01-01T00:00:00") + hour_of_user.astype("timedelta64[h]"),
                                   unit="s")
    frame = pd.DataFrame({
        "user_id": np.repeat([f"user{i:05d}" for i in range(len(lengths))], lengths),
        "timestamp": stamps,
        "value": np.round(rng.gamma(2.0, 3.0, rows), 3),
    })
    directory.mkdir(parents=True, exist_ok=True)
    frame.to_csv(csv, index=False)
    frame.to_parquet(parquet, index=False, row_group_size=row_group)
    log.info("wrote %s and %s: %d rows, %d users", csv, parquet, rows, len(lengths))
    return {"csv": csv, "parquet": parquet}


def config_for(data: Path, directory: Path) -> Path:
    """config/proposal.yaml (the production analysis) on the generated table, jvm.xmx auto."""
    import yaml

    config = yaml.safe_load((Path(__file__).resolve().parents[1] / "config" / "proposal.yaml").read_text())
    config["data"].update({"path": str(data), "user_column": "user_id", "time_column": "timestamp",
                           "value_column": "value"})
    config["jvm"].update({"xmx": "auto", "xms": "auto"})
    config["output"] = {"root": str(directory / "out")}
    path = directory / f"config_{data.suffix.lstrip('.')}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def peak_rss_mib() -> float:
    """This process's peak resident size (VmHWM): its own, unlike ru_maxrss, which execve keeps."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    raise RuntimeError("no VmHWM in /proc/self/status (this benchmark needs Linux)")


def measure(config_path: str, shard: str) -> dict:
    """In this process: one shard's preparation, timed, and the process's peak RSS."""
    from shardrun.config import load_config
    from shardrun.partition import ShardSpec
    from shardrun.shard.prepare import ShardOptions, prepare

    imported = peak_rss_mib()
    config = load_config(config_path)
    started = time.perf_counter()
    prepared = prepare(config, ShardOptions(shard=ShardSpec.parse(shard), pilot=None, dry_run=True))
    seconds = time.perf_counter() - started
    return {
        "seconds": round(seconds, 2),
        "peak_rss_mib": peak_rss_mib(),
        "after_imports_mib": imported,
        "users_loaded": len(prepared.dataset.user_ids) if prepared.dataset is not None else 0,
        "users_total": len(prepared.index.user_ids),
        "jvm": prepared.heap.jvm_line().split(" (")[0],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--row-group", type=int, default=100_000, help="Parquet rows per row group")
    parser.add_argument("--shards", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--formats", nargs="+", default=["csv", "parquet"], choices=["csv", "parquet"])
    parser.add_argument("--dir", type=Path, default=Path("bench-data"), help="where the tables are written")
    parser.add_argument("--measure", nargs=2, metavar=("CONFIG", "SHARD"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.measure:
        print(json.dumps(measure(*args.measure)))
        return 0
    tables = write_tables(args.dir, args.rows, args.row_group)
    print("| format | K | users loaded | shard start (s) | peak RSS (MiB) | RSS after imports (MiB) | heap |")
    print("|---|---|---|---|---|---|---|")
    for kind in args.formats:
        config = config_for(tables[kind], args.dir)
        for shards in args.shards:
            done = subprocess.run([sys.executable, __file__, "--measure", str(config), f"0/{shards}"],
                                  capture_output=True, text=True, check=True)
            figures = json.loads(done.stdout.strip().splitlines()[-1])
            print(f"| {kind} | {shards} | {figures['users_loaded']} of {figures['users_total']} |"
                  f" {figures['seconds']} | {figures['peak_rss_mib']} | {figures['after_imports_mib']} |"
                  f" {figures['jvm']} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
