"""`monitor_progress`: the state of every shard of a run, from another terminal or after the fact.

Reads only files (run.json, status.json, RUN/launcher.json); a file of the wrong shape is shown, never a crash.
--json prints one JSON document per refresh, on one line (its fields: docs/MONITOR.md).
"""

from __future__ import annotations

import json
import sys
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.console import RenderableType
from rich.text import Text

from shardrun.errors import EXIT_OK, EXIT_USAGE, SchedulerError, StopSignalReceived, UsageError
from shardrun.observe import progress
from shardrun.observe.progress import LiveTable, console, render
from shardrun.partition import ShardSpec
from shardrun.scheduler.slurm import SlurmCommands, queue_by_index
from shardrun.storage.paths import RunPaths, not_a_dir
from shardrun.storage.status import status_document

JSON_FORMAT = 1


def _spec(text: Any) -> ShardSpec | None:
    try:
        return ShardSpec.parse(text) if isinstance(text, str) and text.strip() != "auto" else None
    except UsageError:
        return None


def run_shards(run_dir: Path, run_doc: dict[str, Any], launcher: dict[str, Any]) -> dict[ShardSpec, dict[str, Any]]:
    """Every shard of the run: K from run.json, the launcher's list, and the shard dirs on disk."""
    shards: dict[ShardSpec, dict[str, Any]] = {}
    count = run_doc.get("shards")
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
    run_doc = status_document(RunPaths(run_dir).run_json)
    shards = run_shards(run_dir, run_doc, status_document(RunPaths(run_dir).launcher_json))
    views = []
    for spec, entry in sorted(shards.items(), key=lambda item: (item[0].count, item[0].index)):
        phase = entry.get("phase") if isinstance(entry.get("phase"), str) else None
        total = entry.get("users_total") if isinstance(entry.get("users_total"), int) else expected_users(run_doc, spec)
        in_queue = None if scheduler is None else scheduler.get(spec.index, "not in the queue")
        views.append(progress.read_view(str(spec), run_dir / spec.dirname / "status.json", now, stale_after, phase,
                                        total, in_queue))
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
    created = status_document(RunPaths(run_dir).run_json).get("created_at")
    if isinstance(created, str):
        try:
            moment = datetime.fromisoformat(created)
            return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()
        except ValueError:
            pass
    return run_dir.stat().st_mtime


def is_run(path: Path) -> bool:
    paths = RunPaths(path)
    return paths.run_json.is_file() or paths.launcher_json.is_file()


def newest_run(root: Path = Path("analysis/out")) -> list[Path]:
    runs = [p for p in root.glob("*") if p.is_dir() and is_run(p)] if root.is_dir() else []
    return sorted(runs, key=lambda p: (run_started(p), p.name))[-1:]


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
            no_run = "holds no run (no run.json or launcher.json in it or in a dir under it)"
            problems.append(f"{path} {not_a_dir(path) or no_run};"
                            " pass a run dir of launch_shards or run_production (or a dir of runs, for its newest)")
    return runs, problems


def watch(run_dirs: Sequence[Path], watch: bool, every: float, stale_after: float,
          root: Path = Path("analysis/out"), as_json: bool = False) -> int:
    run_dirs, problems = resolve_runs(run_dirs, root)
    for problem in problems:
        print(f"error: {progress.printable(problem)}", file=sys.stderr)
    if problems or not run_dirs:
        return EXIT_USAGE
    live = LiveTable()
    try:
        while True:
            active = show_runs(run_dirs, stale_after, live if watch else None, as_json)
            if not watch or not active:
                return EXIT_OK
            time.sleep(every)
    except (KeyboardInterrupt, StopSignalReceived):
        if watch:
            return EXIT_OK  # --watch ends when its user says so: that is no error
        raise


def run_document(run_dir: Path, views: Sequence[progress.ShardView], trouble: str | None,
                 cpu: Mapping[str, Any] | None) -> dict[str, Any]:
    """One run of --json: its shards (the fields of ShardView) and their totals."""
    totals = {key: sum(getattr(v, key) for v in views)
              for key in ("done", "total", "ok", "skipped", "failed", "requeues")}
    return {"run": str(run_dir.resolve()), "slurm_error": trouble,
            "totals": {"shards": len(views), "active": sum(v.active for v in views), **totals,
                       "eta_seconds": progress.overall_eta(views), "suspension": progress.suspension_note(views, cpu),
                       "states": dict(Counter(v.state for v in views))},
            "shards": [asdict(v) for v in views]}


def show_runs(run_dirs: Sequence[Path], stale_after: float, live: LiveTable | None = None,
              as_json: bool = False) -> bool:
    """Show each run's progress once (`live`: in place of the last showing); True if some shard is still active."""
    now = datetime.now(UTC)
    runs = []
    for run_dir in run_dirs:
        scheduler, trouble = slurm_view(RunPaths(run_dir))
        cpu = status_document(RunPaths(run_dir).launcher_json).get("cpu")  # what --cpu-limit suspended, and why
        runs.append((run_dir, run_views(run_dir, now, stale_after, scheduler), trouble, cpu))
    if as_json:
        document = {"format": JSON_FORMAT, "at": now.isoformat(timespec="seconds"),
                    "runs": [run_document(*run) for run in runs]}
        print(json.dumps(document), flush=True)
    else:
        out = console()
        height = out.height // len(runs) - 2 if live is not None and out.is_interactive else None
        blocks: list[RenderableType] = []
        for run_dir, views, trouble, cpu in runs:
            blocks.append(Text(f"{progress.printable(str(run_dir))}  ({now:%Y-%m-%d %H:%M:%S} UTC)"))
            if trouble:
                blocks.append(Text(f"  SLURM's view is missing: {progress.printable(trouble)}"))
            blocks.append(render(views, cpu=cpu, out=out, height=height) if views
                          else Text("  (no shard has started yet)"))
        (live or LiveTable()).show(out, blocks)
    return any(v.active for _, views, _, _ in runs for v in views)
