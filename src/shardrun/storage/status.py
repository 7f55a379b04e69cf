"""status.json of a running shard: the counts, the current user, a heartbeat and an ETA.

Counts are written at most once a second (no fsync per user); the heartbeat keeps
`updated_at` fresh so a monitor can tell a hung shard from a slow one.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, NotRequired, TypedDict

from shardrun.errors import ShardLocked, StorageError
from shardrun.states import ShardState, UserStatus
from shardrun.storage.atomic import read_json, utc_now, write_json_atomic
from shardrun.storage.lock import ShardLock
from shardrun.storage.paths import ShardPaths
from shardrun.storage.periodic import Periodic

log = logging.getLogger(__name__)

STATUS_FORMAT = 1


class StatusJson(TypedDict):
    """status.json; filled by ShardStatus, shard/loop.py and shard/attempts.py, plus the task's jvm_provenance keys."""

    format: Annotated[int, "1"]
    shard: Annotated[str, "`\"i/K\"`"]
    shard_index: Annotated[int, "i"]
    shard_count: Annotated[int, "K"]
    pid: Annotated[int, "the process writing it"]
    host: Annotated[str, "the machine of the process writing it"]
    state: Annotated[str, "`starting`, `running`, `completed`, `completed_with_failures`, `failed` (stopped by its own"
                          " error: the disk, or [fail fast](GUIDE.md#fail-fast)), `interrupted`, `preempted` (drained"
                          " on the scheduler's warning signal), `killed` (written by the launcher)"]
    users_total: Annotated[int, "the shard's users"]
    users_done: Annotated[int, "users done, those before a resume included; a user counts once its commit landed"]
    users_ok: Annotated[int, "of the users done, those ok"]
    users_skipped: Annotated[int, "of the users done, those skipped"]
    users_failed: Annotated[int, "of the users done, those failed"]
    users_todo: Annotated[int, "the shard's users not done yet"]
    resumed_with_done: Annotated[int, "users already committed when this process started"]
    current_user: Annotated[str | None, "the user in flight"]
    current_user_since: Annotated[str | None, "when the user in flight started"]
    started_at: Annotated[str, "this process's start"]
    updated_at: Annotated[str, "the last write (the heartbeat)"]
    rate_users_per_hour: Annotated[float | None, "from this process's users so far"]
    eta_seconds: Annotated[float | None, "from this process's users so far"]
    run_dir: Annotated[str, "provenance: the run dir"]
    config_hash: Annotated[str, "provenance: as in run.json"]
    jvm: Annotated[list[str], "provenance: the JVM flags"]
    threads: Annotated[int, "provenance: the resolved `jvm.threads`"]
    java_version: NotRequired[Annotated[str, "provenance: the JVM's version, once it runs"]]
    requeues: Annotated[int, "how often the shard's SLURM job was requeued so far: asked by the shard (a time-limit"
                             " warning, a preemption it drained ahead of) or done by SLURM (a preemption's grace time"
                             " ended, `scontrol requeue`), as its process saw it"
                             " ([CLUSTER.md](CLUSTER.md#preemption-by-slurm))"]
    process_starts: Annotated[list[str], "when each process of the shard started (milliseconds; kept across restarts,"
                                         " the last 100): `run.png`'s waiting and start-up"]
    last_error: Annotated[str | None, "the latest failure in one line (after fail fast: the error class, an example,"
                                      " where the stacks are and the command that goes on)"]
    exit_code: NotRequired[Annotated[int, "written by the launcher when the shard died abnormally"]]
    jvm_crash_logs: Annotated[list[str] | None, "the `hs_err_pid*.log` files of the shard dir (null when none)"]
    peak_rss_bytes: Annotated[int, "the largest peak resident size of the shard's processes so far (the process's"
                                   " high-water mark, read at every write of the file; each process starts from the"
                                   " peak its predecessors recorded)"]
    peak_heap_used_bytes: NotRequired[Annotated[int, "the largest JVM heap in use after any user of the shard"
                                                     " (`Runtime.totalMemory() - freeMemory()`)"]]
    slurm_mem_bytes: Annotated[int | None, "the memory SLURM granted the job (`SLURM_MEM_PER_NODE`, or"
                                           " `SLURM_MEM_PER_CPU` x `SLURM_CPUS_ON_NODE`); null outside SLURM"]


_FIELD_TYPES: dict[str, tuple[type, ...]] = {
    **dict.fromkeys(("shard", "state", "host", "current_user", "started_at", "updated_at"), (str,)),
    **dict.fromkeys(("pid", "requeues", "users_done", "users_total", "users_ok", "users_skipped", "users_failed"),
                    (int,)),
    **dict.fromkeys(("rate_users_per_hour", "eta_seconds"), (int, float)),
}


def read_status(path: Path) -> dict[str, Any] | None:
    """A shard's status.json, validated; None when absent, ValueError saying why when malformed."""
    try:
        doc = read_json(path)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ValueError(f"status.json cannot be read ({exc.strerror})") from exc
    if not isinstance(doc, dict):
        raise ValueError("status.json is not a JSON object")
    for key, types in _FIELD_TYPES.items():
        value = doc.get(key)
        if value is not None and (not isinstance(value, types) or isinstance(value, bool)):
            raise ValueError(f"status.json field {key!r} is {type(value).__name__}")
    if doc.get("updated_at") is not None and datetime.fromisoformat(doc["updated_at"]).tzinfo is None:
        raise ValueError("status.json field 'updated_at' has no time zone")
    return doc


def status_document(path: Path) -> dict[str, Any]:
    """A shard's status.json as it stands, {} when absent, unreadable or not a JSON object."""
    try:
        doc = read_json(path)
    except (OSError, ValueError):
        return {}
    return doc if isinstance(doc, dict) else {}


class ShardStatus:
    def __init__(self, paths: ShardPaths, base: dict[str, Any],
                 write: Callable[[Path, Any], None] = write_json_atomic, peak_rss: Callable[[], int] | None = None):
        self._paths = paths
        self._peak_rss = peak_rss  # this process's peak RSS in bytes (platforms.peak_rss), read at every write
        self._write = write
        # re-entrant: the second-signal handler may interrupt update() on the same thread
        self._lock = threading.RLock()
        self._session_start = self._last_write = time.monotonic()
        self._session_users = 0
        self._changed = False  # counts changed since the last write (written by the heartbeat thread)
        now = utc_now()
        self._doc: dict[str, Any] = {
            "format": STATUS_FORMAT, "pid": os.getpid(), "host": socket.gethostname(),
            "state": ShardState.STARTING.value,
            **dict.fromkeys(("users_total", "users_done", "users_ok", "users_failed", "users_skipped",
                             "users_todo"), 0),
            "current_user": None, "current_user_since": None, "started_at": now, "updated_at": now,
            **dict.fromkeys(("rate_users_per_hour", "eta_seconds", "last_error"), None),
            **base,
        }
        self._heartbeat: Periodic | None = None

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return dict(self._doc)

    def update(self, **fields: Any) -> None:
        with self._lock:
            self._doc.update(fields)
            self._write_locked()

    def begin_user(self, user_id: str) -> None:
        with self._lock:
            self._doc.update(current_user=user_id, current_user_since=utc_now())
            if self._doc["state"] != ShardState.RUNNING.value:
                self._doc["state"] = ShardState.RUNNING.value
                self._write_locked()
            else:
                self._changed = True

    def end_user(self, heap_used_bytes: int | None = None) -> None:
        """The user in flight has ended; `heap_used_bytes` feeds peak_heap_used_bytes."""
        with self._lock:
            self._doc.update(current_user=None, current_user_since=None)
            if heap_used_bytes is not None:
                self._doc["peak_heap_used_bytes"] = max(self._doc.get("peak_heap_used_bytes") or 0, heap_used_bytes)
            self._changed = True

    def count_committed(self, outcomes: Sequence[UserStatus]) -> None:
        """Count users whose commit landed (never earlier: a crash could lose them); refresh rate and ETA."""
        with self._lock:
            self._session_users += len(outcomes)
            doc = self._doc
            for outcome in outcomes:
                doc["users_done"] += 1
                doc[f"users_{outcome}"] += 1
            doc["users_todo"] = max(doc["users_total"] - doc["users_done"], 0)
            elapsed = max(time.monotonic() - self._session_start, 1e-9)
            if self._session_users:
                per_user = elapsed / self._session_users
                doc["rate_users_per_hour"] = round(3600.0 / per_user, 2)
                doc["eta_seconds"] = round(per_user * doc["users_todo"], 1)
            self._changed = True

    def _write_locked(self) -> None:
        self._doc["updated_at"] = utc_now()
        if self._peak_rss is not None:
            # the peak over this shard's processes: `base` carries the earlier processes' peak
            self._doc["peak_rss_bytes"] = max(self._doc.get("peak_rss_bytes") or 0, self._peak_rss())
        self._write(self._paths.status, self._doc)
        self._changed = False
        self._last_write = time.monotonic()

    def write_if_due(self, heartbeat_seconds: float) -> bool:
        """Write when the counts changed, or when `heartbeat_seconds` passed since the last write."""
        with self._lock:
            if self._changed or time.monotonic() - self._last_write >= heartbeat_seconds:
                self._write_locked()
                return True
            return False

    def start_heartbeat(self, every_seconds: float) -> None:
        def beat() -> None:
            try:
                self.write_if_due(every_seconds)
            # the shard loop reports the same disk error; a traceback here would bury it
            except (OSError, StorageError) as exc:
                log.warning("heartbeat could not write %s: %s", self._paths.status, exc)

        self._heartbeat = Periodic("status-heartbeat", min(1.0, every_seconds), beat)
        self._heartbeat.start()

    def stop_heartbeat(self) -> None:
        if self._heartbeat is not None:
            self._heartbeat.stop()


def record_death(paths: ShardPaths, exit_code: int, description: str, hs_err_files: list[str]) -> bool:
    """Record a dead shard's end in its status.json, under the shard lock; True if recorded."""

    try:
        with ShardLock(paths):
            doc = read_json(paths.status)
            doc.update(
                state=(ShardState.KILLED if exit_code < 0 else ShardState.FAILED).value,
                exit_code=exit_code,
                last_error=description,
                current_user=None,
                jvm_crash_logs=hs_err_files or None,
                updated_at=utc_now(),
            )
            write_json_atomic(paths.status, doc)
            return True
    except ShardLocked:
        return False
