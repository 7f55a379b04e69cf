"""The shard log's lines about users (shard/loop.py: UserLog), with a stepped clock instead of waiting."""

from __future__ import annotations

import logging

from shardrun.shard.loop import UserLog
from shardrun.states import UserStatus


class SteppedClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def lines(caplog, level: int) -> list[str]:
    return [record.getMessage() for record in caplog.records if record.levelno == level]


def test_quick_ok_users_are_counted_into_a_progress_line_at_most_every_period(caplog):
    clock, logger = SteppedClock(), logging.getLogger("test.user_log")
    caplog.set_level(logging.DEBUG, logger.name)
    user_log = UserLog(logger, clock=clock)
    for n in range(5):
        clock.now = n * 10.0  # 0, 10, 20, 30, 40 s
        user_log.user_ended(f"u{n}", UserStatus.OK, 0.01)
    assert lines(caplog, logging.INFO) == ["4 more users ok, each in under 1 s (4 ended in this process so far,"
                                           " the last 'u3')"]
    assert len(lines(caplog, logging.DEBUG)) == 5  # every user still has its line with --verbose
    clock.now = 59.0
    user_log.user_ended("u5", UserStatus.OK, 0.01)
    assert len(lines(caplog, logging.INFO)) == 1  # 29 s after the last line, not yet
    clock.now = 60.0
    user_log.user_ended("u6", UserStatus.OK, 0.01)
    assert lines(caplog, logging.INFO)[-1].startswith("3 more users ok")


def test_slow_skipped_and_failed_users_keep_their_own_info_line(caplog):
    clock, logger = SteppedClock(), logging.getLogger("test.user_log")
    caplog.set_level(logging.DEBUG, logger.name)
    user_log = UserLog(logger, clock=clock)
    user_log.user_ended("slow", UserStatus.OK, 1.0)
    user_log.user_ended("short", UserStatus.SKIPPED, 0.0)
    user_log.user_ended("broken", UserStatus.FAILED, 0.2)
    clock.now = 100.0
    user_log.user_ended("quick", UserStatus.OK, 0.5)
    assert lines(caplog, logging.INFO) == [
        "user 'slow' ok in 1.00 s", "user 'short' skipped in 0.00 s", "user 'broken' failed in 0.20 s",
        "1 more users ok, each in under 1 s (4 ended in this process so far, the last 'quick')",
    ]
