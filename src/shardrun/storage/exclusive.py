"""One live process at a time for a whole command: one launcher per run, one merge per output.

A lock file held with the OS lock (flock) for as long as the command runs; the kernel drops it when the
process dies, however it dies, so a crashed command never blocks the next one. Its text names the
holder (pid, host, since) for the refusal. A second command is refused at once (AlreadyRunning, exit
4), naming the live one; it never waits and never replaces what the first one writes.

Where the filesystem has no locks (NFS without a lock manager), the command runs unguarded, with a
warning: the shard dirs keep their own lock (storage/lock.py), so shards are never run twice; only two
commands started by hand at once on such a filesystem are not told apart.
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
    """Hold `path` exclusively from acquire() to release(); `what` names the work for the refusal
    ("launch_shards of run R"), `fix` says what to do instead."""

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
            # The holder before us may have removed the file after we opened it: then our lock is on a
            # file nobody else sees, and the path is taken again.
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
            # a read-only or vanished dir (the error the command ends with says so): a lock file left
            # behind is harmless, the next command takes it over
            log.debug("left the lock file %s: %s", self.path, exc.strerror or exc)
        finally:
            handle.close()

    def __enter__(self) -> ExclusiveFile:
        self.acquire()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()
