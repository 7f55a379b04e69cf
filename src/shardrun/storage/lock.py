"""At most one live process per shard dir: an OS file lock, released by the kernel when its holder dies."""

from __future__ import annotations

import json
import os
import socket

from shardrun.errors import ShardLocked
from shardrun.platforms import lock_exclusive
from shardrun.storage.atomic import utc_now
from shardrun.storage.paths import ShardPaths


class ShardLock:
    """At most one live process per shard dir.

    An OS file lock (flock) is held for the life of the process, so the kernel releases it when
    the process dies however it dies: a stale lock file left by a SIGKILL never blocks a resume.
    The file's text (pid, host) only serves the error message.
    """

    def __init__(self, paths: ShardPaths):
        self._path = paths.lock
        self._handle = None

    def acquire(self) -> None:
        handle = open(self._path, "a+", encoding="utf-8")
        try:
            lock_exclusive(handle)
        except OSError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown process"
            handle.close()
            raise ShardLocked(
                f"shard dir {self._path.parent} is in use by another process ({holder}); wait for it to end,"
                " or stop it, then resume. Two processes must never run one shard."
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": utc_now()}))
        handle.flush()
        self._handle = handle

    def release(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None

    def __enter__(self) -> "ShardLock":
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
