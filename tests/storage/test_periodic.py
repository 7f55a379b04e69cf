"""storage/periodic.py: the one background thread of the flusher, the heartbeat, the lease and the abandon timer."""

from __future__ import annotations

import threading

from shardrun.storage.periodic import Periodic


def test_an_action_that_returns_false_is_the_last_one():
    runs: list[int] = []
    third = threading.Event()

    def action() -> bool:
        runs.append(len(runs))
        if len(runs) == 3:
            third.set()
            return False
        return True

    periodic = Periodic("test-periodic", 0.01, action)
    periodic.start()
    assert third.wait(60)
    periodic.stop()  # joins the thread, which ended by itself
    assert runs == [0, 1, 2]


def test_the_action_may_stop_its_own_periodic_without_waiting_for_itself():
    ran = threading.Event()
    calls: list[str] = []

    def action() -> bool:
        calls.append(threading.current_thread().name)
        periodic.stop()  # a lease that finds itself lost stops its own refresher
        ran.set()
        return True

    periodic = Periodic("lease-like", 0.01, action)
    periodic.start()
    assert ran.wait(60)
    periodic.stop()
    assert calls == ["lease-like"]
