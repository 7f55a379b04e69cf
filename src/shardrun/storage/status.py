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
from typing import Any

from shardrun.errors import ShardLocked, StorageError
from shardrun.states import ShardState, UserStatus
from shardrun.storage.atomic import read_json, utc_now, write_json_atomic
from shardrun.storage.lock import ShardLock
from shardrun.storage.paths import ShardPaths
from shardrun.storage.periodic import Periodic

log = logging.getLogger(__name__)

STATUS_FORMAT = 1


_FIELD_TYPES: dict[str, tuple[type, ...]] = {
    **dict.fromkeys(("shard", "state", "host", "current_user", "started_at", "updated_at"), (str,)),
    **dict.fromkeys(("pid", "requeues", "users_done", "users_total", "users_ok", "users_skipped", "users_failed"), (int,)),
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
            **dict.fromkeys(("users_total", "users_done", "users_ok", "users_failed", "users_skipped", "users_todo"), 0),
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
