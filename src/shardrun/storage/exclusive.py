"""One live process per command: one launcher per run, one merge per output (flock, refused at once).

Without file locks the command runs unguarded with a warning; shard dirs keep their own lock.
"""

from __future__ import annotations

import json
import logging
import os
import socket
from pathlib import Path
from typing import IO, Any

from shardrun import platforms
from shardrun.errors import AlreadyRunning
from shardrun.storage.atomic import utc_now

log = logging.getLogger(__name__)


class ExclusiveFile:
    """Hold `path` exclusively from acquire() to release(); `what` and `fix` word the refusal."""

    def __init__(self, path: Path, what: str, fix: str):
        self.path = path
        self.what = what
        self.fix = fix
        self._handle: IO[Any] | None = None

    def acquire(self) -> None:
        for _ in range(5):
            handle = open(self.path, "a+", encoding="utf-8")  # noqa: SIM115 (held until release)
            try:
                platforms.lock_exclusive(handle)
            except OSError as exc:
                if platforms.locks_unsupported(exc):
                    log.warning("the filesystem of %s has no file locks: %s runs without the guard against a"
                                " second one at the same time", self.path, self.what)
                    handle.close()
                    return
                handle.seek(0)
                holder = handle.read().strip() or "a process that has not written its name yet"
                handle.close()
                if not platforms.lock_is_held(exc):
                    raise
                raise AlreadyRunning(f"{self.what} is already running ({holder}); {self.fix}") from None
            # the previous holder may have unlinked it after our open: lock the path again
            if self._same_file(handle):
                handle.seek(0)
                handle.truncate()
                handle.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": utc_now()}))
                handle.flush()
                self._handle = handle
                return
            handle.close()
        raise AlreadyRunning(f"{self.what} is contended by several processes right now; {self.fix}")

    def _same_file(self, handle: IO[Any]) -> bool:
        try:
            here = os.stat(self.path)
        except FileNotFoundError:
            return False
        held = os.fstat(handle.fileno())
        return (here.st_dev, here.st_ino) == (held.st_dev, held.st_ino)

    def release(self) -> None:
        """Remove the lock file (while still holding it, so no one takes a file about to vanish) and let go."""
        handle, self._handle = self._handle, None
        if handle is None:
            return
        try:
            self.path.unlink(missing_ok=True)
        except OSError as exc:
            # a lock file left behind is harmless: the next command takes it over
            log.debug("left the lock file %s: %s", self.path, exc.strerror or exc)
        finally:
            handle.close()

    def __enter__(self) -> ExclusiveFile:
        self.acquire()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()
