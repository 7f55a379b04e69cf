"""`monitor_progress`: the state of every shard of a run, from another terminal or after the fact.

Reads only files: run.json (the shard count K, so shards that have not started show too; the start
time that picks the newest run), each shard's status.json and, when the run was started by
launch_shards, RUN/launcher.json (waiting and suspended shards, restarts). A shard recorded as
running is shown dead when its pid is gone or its heartbeat is stale (progress.liveness). A file of
the wrong shape is shown as such for its shard, never a crash.
"""

from __future__ import annotations

import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from dataclasses import replace
from typing import Any, Mapping, Sequence

from shardrun.errors import EXIT_OK, EXIT_USAGE, SchedulerError, StopSignalReceived
from shardrun.observe import progress
from shardrun.scheduler.slurm import SlurmCommands, queue_by_index
from shardrun.sharding import ShardSpec
from shardrun.storage.atomic import read_json
from shardrun.storage.paths import RunPaths, not_a_dir

MISSING = object()  # no file (yet): not started
UNREADABLE = object()  # a file that is not a JSON object


def _read(path: Path) -> Any:
    try:
        doc = read_json(path)
    except FileNotFoundError:
        return MISSING
    except (OSError, ValueError):
        return UNREADABLE  # replaced under us (atomic writes) or damaged: shown as such this tick
    return doc if isinstance(doc, dict) else UNREADABLE


def _doc(path: Path) -> dict[str, Any]:
    doc = _read(path)
    return doc if isinstance(doc, dict) else {}


def _spec(text: Any) -> ShardSpec | None:
    try:
        return ShardSpec.parse(text) if isinstance(text, str) and text.strip() != "auto" else None
    except Exception:
        return None


def run_shards(run_dir: Path, launcher: dict[str, Any]) -> dict[ShardSpec, dict[str, Any]]:
    """Every shard of the run: K from run.json, the launcher's list, and the shard dirs on disk."""
    shards: dict[ShardSpec, dict[str, Any]] = {}
    count = _doc(RunPaths(run_dir).run_json).get("shards")
    if isinstance(count, int) and not isinstance(count, bool) and 0 < count <= 100_000:
        for index in range(count):
            shards[ShardSpec(index, count)] = {}
    entries = launcher.get("shards")
    for entry in entries if isinstance(entries, list) else []:
        spec = _spec(entry.get("shard")) if isinstance(entry, dict) else None
        if spec is not None:
            shards[spec] = entry
    for shard_dir in run_dir.glob("shard-*-of-*"):
        parts = shard_dir.name.split("-")
        spec = _spec(f"{parts[1]}/{parts[3]}") if len(parts) == 4 else None
        if spec is not None:
            shards.setdefault(spec, {})
    return shards


def expected_users(run_doc: dict[str, Any], spec: ShardSpec) -> int | None:
    """A shard's users from run.json before it has written its own status: modulo over the run's users."""
    users, pilot = run_doc.get("users_total"), run_doc.get("pilot")
    if not isinstance(users, int) or spec.count != run_doc.get("shards"):
        return None
    assigned = len(range(spec.index, users, spec.count))
    return min(assigned, pilot) if isinstance(pilot, int) else assigned


def run_views(run_dir: Path, now: datetime, stale_after: float,
              scheduler: Mapping[int, str] | None = None) -> list[progress.ShardView]:
    """`scheduler`: the cluster scheduler's word for each shard index (absent: not in its queue)."""
    launcher = _doc(RunPaths(run_dir).launcher_json)
    run_doc = _doc(RunPaths(run_dir).run_json)
    views = []
    for spec, entry in sorted(run_shards(run_dir, launcher).items(), key=lambda item: (item[0].count, item[0].index)):
        phase = entry.get("phase") if isinstance(entry.get("phase"), str) else None
        total = entry.get("users_total") if isinstance(entry.get("users_total"), int) else expected_users(run_doc, spec)
        in_queue = None if scheduler is None else scheduler.get(spec.index, "not in the queue")
        doc = _read(run_dir / spec.dirname / "status.json")
        if doc is UNREADABLE:
            views.append(replace(progress.unreadable_view(str(spec)), scheduler=in_queue))
            continue
        doc = None if doc is MISSING else doc
        try:
            views.append(progress.shard_view(str(spec), doc, now, stale_after, phase, total, in_queue))
        except (TypeError, ValueError, AttributeError, OverflowError):
            views.append(replace(progress.unreadable_view(str(spec)), scheduler=in_queue))  # fields of the wrong type
    return views


def slurm_view(run: RunPaths) -> tuple[dict[int, str] | None, str | None]:
    """For a run submitted to SLURM: each shard's element as squeue sees it ('pending (Priority)',
    'running', 'requeued', 'preempted', ...). None for other runs; a failing squeue is said, not raised."""
    if not run.slurm_json.is_file():
        return None, None
    try:
        queue = queue_by_index(run, SlurmCommands())
    except SchedulerError as exc:
        return None, str(exc)
    return {index: str(element) for index, element in queue.items()}, None


def run_started(run_dir: Path) -> float:
    """When the run began: run.json's created_at, else the dir's own time (a run whose shards have not written yet)."""
    created = _doc(RunPaths(run_dir).run_json).get("created_at")
    if isinstance(created, str):
        try:
            moment = datetime.fromisoformat(created)
            return (moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)).timestamp()
        except ValueError:
            pass
    return run_dir.stat().st_mtime


def is_run(path: Path) -> bool:
    paths = RunPaths(path)
    return paths.run_json.is_file() or paths.launcher_json.is_file()


def runs_under(root: Path) -> list[Path]:
    return [p for p in root.glob("*") if p.is_dir() and is_run(p)] if root.is_dir() else []


def newest_run(root: Path = Path("analysis/out")) -> list[Path]:
    runs = sorted(runs_under(root), key=lambda p: (run_started(p), p.name))
    return runs[-1:]


def resolve_runs(paths: Sequence[Path], root: Path) -> tuple[list[Path], list[str]]:
    """Each path a run dir, or a dir of runs (its newest run); none: the newest under `root`."""
    if not paths:
        found = newest_run(root)
        return found, [] if found else [f"no run found under {root}; pass a run dir (or --config for its output.root)"]
    runs, problems = [], []
    for path in paths:
        if is_run(path):
            runs.append(path)
        elif newest := newest_run(path):
            runs.extend(newest)
        else:
            problems.append(f"{path} {not_a_dir(path) or 'holds no run (no run.json or launcher.json in it or in a dir under it)'};"
                            " pass a run dir of launch_shards or run_production (or a dir of runs, for its newest)")
    return runs, problems


def watch(run_dirs: Sequence[Path], watch: bool, every: float, stale_after: float,
          root: Path = Path("analysis/out")) -> int:
    run_dirs, problems = resolve_runs(run_dirs, root)
    for problem in problems:
        print(f"error: {problem}", file=sys.stderr)
    if problems or not run_dirs:
        return EXIT_USAGE
    try:
        while True:
            active = show_runs(run_dirs, stale_after)
            if not watch or not active:
                return EXIT_OK
            time.sleep(every)
    except (KeyboardInterrupt, StopSignalReceived):
        if watch:
            return EXIT_OK  # --watch ends when its user says so: that is no error
        raise


def show_runs(run_dirs: Sequence[Path], stale_after: float) -> bool:
    """Print each run's progress once; True if some shard is still active."""
    now = datetime.now(timezone.utc)
    active = False
    for run_dir in run_dirs:
        scheduler, trouble = slurm_view(RunPaths(run_dir))
        views = run_views(run_dir, now, stale_after, scheduler)
        print(f"{run_dir}  ({now:%Y-%m-%d %H:%M:%S} UTC)")
        if trouble:
            print(f"  SLURM's view is missing: {trouble}")
        cpu = _doc(RunPaths(run_dir).launcher_json).get("cpu")  # what --cpu-limit suspended, and why
        print("\n".join(progress.render_table(views, cpu=cpu)) if views else "  (no shard has started yet)")
        active = active or any(v.active for v in views)
    return active
