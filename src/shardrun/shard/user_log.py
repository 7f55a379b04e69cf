"""What the shard log says about each user, at a rate a reader can follow.

Quick ok users are summed into a periodic INFO line: a line each cost about 6% of a 100,000-user shard.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable
from pathlib import Path

from shardrun.states import UserStatus

SLOW_USER_SECONDS = 1.0
PROGRESS_EVERY_SECONDS = 30.0


class UserLog:
    def __init__(self, logger: logging.Logger, clock: Callable[[], float] = time.monotonic,
                 every_seconds: float = PROGRESS_EVERY_SECONDS, slow_seconds: float = SLOW_USER_SECONDS):
        self._log, self._clock = logger, clock
        self._every, self._slow = every_seconds, slow_seconds
        self._last_line = clock()
        self._quiet = 0  # quick ok users not yet in a progress line
        self._ended = 0  # users ended in this process

    def user_ended(self, user_id: str, outcome: UserStatus, seconds: float) -> None:
        self._ended += 1
        if outcome != UserStatus.OK or seconds >= self._slow:
            self._log.info("user %r %s in %.2f s", user_id, outcome, seconds)
        else:
            self._quiet += 1
            self._log.debug("user %r %s in %.2f s", user_id, outcome, seconds)
        now = self._clock()
        if self._quiet and now - self._last_line >= self._every:
            self._log.info("%d more users ok, each in under %.0f s (%d ended in this process so far, the last %r)",
                           self._quiet, self._slow, self._ended, user_id)
            self._quiet, self._last_line = 0, now


def attach_shard_log(path: Path) -> None:
    handler = ShardLogFile(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.getLogger().addHandler(handler)


class ShardLogFile(logging.FileHandler):
    """shard.log; on a failing disk said once on stderr, not a traceback for every line."""

    def __init__(self, path: Path):
        super().__init__(path, encoding="utf-8")
        self._said_failure = False

    def handleError(self, record: logging.LogRecord) -> None:
        failure = sys.exc_info()[1]
        if isinstance(failure, OSError):
            self._say_failure(failure)
        else:
            super().handleError(record)

    def close(self) -> None:
        try:
            super().close()  # flushes what is buffered
        except OSError as failure:
            self._say_failure(failure)

    def _say_failure(self, failure: OSError) -> None:
        if not self._said_failure:
            self._said_failure = True
            sys.stderr.write(f"warning: cannot write the shard's log {self.baseFilename}"
                             f" ({failure.strerror or failure}); its lines go to stderr only\n")
