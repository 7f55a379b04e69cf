"""`monitor_progress`: the state of every shard of a run, from another terminal or after the fact.

Reads only files: each shard's status.json and, when the run was started by launch_shards,
RUN/launcher.json (waiting and suspended shards, restarts). A shard recorded as running is shown
dead when its pid is gone or its heartbeat is stale (progress.liveness).
"""

from __future__ import annotations

import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence

from shardrun.observe import progress
from shardrun.storage.atomic import read_json
from shardrun.storage.paths import RunPaths


def _read(path: Path) -> dict[str, Any] | None:
    try:
        return read_json(path)
    except (OSError, ValueError):
        return None  # missing, or replaced under us (atomic writes): shown as not started this tick


def run_views(run_dir: Path, now: datetime, stale_after: float) -> list[progress.ShardView]:
    launcher = _read(RunPaths(run_dir).launcher_json) or {}
    phases = {entry["shard"]: entry["phase"] for entry in launcher.get("shards", [])}
    totals = {entry["shard"]: entry.get("users_total") for entry in launcher.get("shards", [])}
    shards = set(phases)
    for status_path in run_dir.glob("shard-*-of-*/status.json"):
        doc = _read(status_path)
        if doc and doc.get("shard"):
            shards.add(doc["shard"])
    views = []
    for shard in sorted(shards, key=lambda s: tuple(int(x) for x in s.split("/"))):
        index, count = shard.split("/")
        doc = _read(run_dir / f"shard-{index}-of-{count}" / "status.json")
        views.append(progress.shard_view(shard, doc, now, stale_after, phases.get(shard), totals.get(shard)))
    return views


def newest_run(root: Path = Path("analysis/out")) -> list[Path]:
    runs = sorted((p for p in root.glob("*") if (p / "run.json").is_file()), key=lambda p: p.stat().st_mtime)
    return runs[-1:]


def watch(run_dirs: Sequence[Path], watch: bool, every: float, stale_after: float) -> int:
    run_dirs = list(run_dirs) or newest_run()
    if not run_dirs:
        print("no run found under analysis/out; pass a run dir")
        return 2
    while True:
        now = datetime.now(timezone.utc)
        active = False
        for run_dir in run_dirs:
            views = run_views(run_dir, now, stale_after)
            print(f"{run_dir}  ({now:%Y-%m-%d %H:%M:%S} UTC)")
            print("\n".join(progress.render_table(views)) if views else "  (no shard has started yet)")
            active = active or any(v.active for v in views)
        if not watch or not active:
            return 0
        time.sleep(every)
