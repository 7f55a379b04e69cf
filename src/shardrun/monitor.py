"""`monitor_progress`: the state of every shard of a run, read from status.json files only.

A shard that says `running` is shown dead when its pid is gone (same host) or its heartbeat is
older than --stale-after: the status file cannot update itself after a SIGKILL.
"""

from __future__ import annotations

import socket
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence

import psutil

from shardrun import store

ACTIVE_STATES = ("starting", "running")


def liveness(doc: dict[str, Any], now: datetime, stale_after: float) -> str:
    """The state to show: the recorded one, or 'dead' when a running shard cannot be alive."""
    state = doc.get("state", "unknown")
    if state not in ACTIVE_STATES:
        return state
    if doc.get("host") == socket.gethostname() and not psutil.pid_exists(int(doc.get("pid", -1))):
        return "dead (process gone)"
    updated = doc.get("updated_at")
    if updated:
        age = (now - datetime.fromisoformat(updated)).total_seconds()
        if age > stale_after:
            return f"dead? (no heartbeat for {age:.0f} s)"
    return state


def shard_rows(run_dir: Path, now: datetime, stale_after: float) -> list[str]:
    rows = []
    for status_path in sorted(run_dir.glob("shard-*-of-*/status.json")):
        try:
            doc = store.read_json(status_path)
        except (OSError, ValueError) as exc:
            rows.append(f"  {status_path.parent.name}: unreadable status.json ({exc})")
            continue
        eta = doc.get("eta_seconds")
        rows.append(
            f"  shard {doc.get('shard')}: {liveness(doc, now, stale_after):<24}"
            f" {doc.get('users_done')}/{doc.get('users_total')} done"
            f" (ok {doc.get('users_ok')}, skipped {doc.get('users_skipped')}, failed {doc.get('users_failed')})"
            f"  current {doc.get('current_user')!r}"
            f"  rate {doc.get('rate_users_per_hour') or '-'} users/h"
            f"  ETA {f'{eta:.0f} s' if isinstance(eta, (int, float)) else '-'}"
        )
    return rows or [f"  (no shard has started in {run_dir})"]


def newest_run(root: Path = Path("analysis/out")) -> list[Path]:
    runs = sorted((p for p in root.glob("*") if (p / "run.json").is_file()), key=lambda p: p.stat().st_mtime)
    return runs[-1:]


def any_active(run_dirs: Sequence[Path], now: datetime, stale_after: float) -> bool:
    for run_dir in run_dirs:
        for status_path in run_dir.glob("shard-*-of-*/status.json"):
            try:
                if liveness(store.read_json(status_path), now, stale_after) in ACTIVE_STATES:
                    return True
            except (OSError, ValueError):
                return True
    return False


def watch(run_dirs: Sequence[Path], watch: bool, every: float, stale_after: float) -> int:
    run_dirs = list(run_dirs) or newest_run()
    if not run_dirs:
        print("no run found under analysis/out; pass a run dir")
        return 2
    while True:
        now = datetime.now(timezone.utc)
        for run_dir in run_dirs:
            print(f"{run_dir}  ({now:%H:%M:%S} UTC)")
            print("\n".join(shard_rows(run_dir, now, stale_after)))
        if not watch or not any_active(run_dirs, now, stale_after):
            return 0
        time.sleep(every)


if __name__ == "__main__":
    import sys

    from shardrun.cli import monitor_main

    sys.exit(monitor_main())
