"""status.json of a running shard: the counts, the current user, a heartbeat and an ETA.

One object owns the document; the shard loop updates it between users and a daemon thread
rewrites it every few seconds so that a long user still shows a fresh `updated_at` (a stale
heartbeat is how a monitor tells a hung or dead shard from a slow one).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from pathlib import Path
from typing import Any, Callable

from shardrun.errors import StorageError
from shardrun.states import ShardState, UserStatus
from shardrun.storage.atomic import utc_now, write_json_atomic
from shardrun.storage.paths import ShardPaths

log = logging.getLogger(__name__)

STATUS_FORMAT = 1


class ShardStatus:
    def __init__(
        self,
        paths: ShardPaths,
        base: dict[str, Any],
        clock: Callable[[], float] = time.monotonic,
        write: Callable[[Path, Any], None] = write_json_atomic,
    ):
        self._paths = paths
        self._write = write
        self._clock = clock
        # Re-entrant: the second-signal handler updates the status from the main thread, which the
        # signal may have interrupted inside update() while holding this lock.
        self._lock = threading.RLock()
        self._session_start = clock()
        self._session_users = 0
        self._doc: dict[str, Any] = {
            "format": STATUS_FORMAT,
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "state": ShardState.STARTING.value,
            "users_total": 0,
            "users_done": 0,
            "users_ok": 0,
            "users_failed": 0,
            "users_skipped": 0,
            "users_todo": 0,
            "current_user": None,
            "current_user_since": None,
            "started_at": utc_now(),
            "updated_at": utc_now(),
            "rate_users_per_hour": None,
            "eta_seconds": None,
            "last_error": None,
            **base,
        }
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return dict(self._doc)

    def update(self, **fields: Any) -> None:
        with self._lock:
            self._doc.update(fields)
            self._write_locked()

    def begin_user(self, user_id: str) -> None:
        self.update(current_user=user_id, current_user_since=utc_now(), state=ShardState.RUNNING.value)

    def end_user(self, outcome: UserStatus) -> None:
        """Count a finished user (outcome ok / skipped / failed) and refresh rate and ETA."""
        with self._lock:
            self._session_users += 1
            doc = self._doc
            doc["users_done"] += 1
            doc[f"users_{outcome}"] += 1
            doc["users_todo"] = max(doc["users_total"] - doc["users_done"], 0)
            doc["current_user"] = None
            doc["current_user_since"] = None
            elapsed = max(self._clock() - self._session_start, 1e-9)
            per_user = elapsed / self._session_users
            doc["rate_users_per_hour"] = round(3600.0 / per_user, 2)
            doc["eta_seconds"] = round(per_user * doc["users_todo"], 1)
            self._write_locked()

    def _write_locked(self) -> None:
        self._doc["updated_at"] = utc_now()
        self._write(self._paths.status, self._doc)

    def start_heartbeat(self, every_seconds: float) -> None:
        def beat() -> None:
            while not self._stop.wait(every_seconds):
                try:
                    with self._lock:
                        self._write_locked()
                # The shard loop meets the same disk on its next write and stops there. A StorageError
                # (a write given up by durable_write: full disk, read-only dir) must not end this
                # thread with a traceback that buries the shard's own one-paragraph error.
                except (OSError, StorageError) as exc:
                    log.warning("heartbeat could not write %s: %s", self._paths.status, exc)

        self._thread = threading.Thread(target=beat, name="status-heartbeat", daemon=True)
        self._thread.start()

    def stop_heartbeat(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)


def record_death(paths: ShardPaths, exit_code: int, description: str, hs_err_files: list[str]) -> bool:
    """Write a dead shard's end into its status.json (a killed process cannot write it itself).

    Taken under the shard lock, so it can never race a live worker: if the lock is held, some
    process owns the shard again and its own status stands. True if the death was recorded.
    """
    from shardrun.errors import ShardLocked
    from shardrun.storage.atomic import read_json
    from shardrun.storage.lock import ShardLock

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
