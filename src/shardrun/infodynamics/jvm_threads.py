"""A few threads that call into the JVM at once: the permutation tests of one user, split by surrogates.

JPype releases the GIL while Java runs, so JIDT's computeSignificance on two batches of permutations
runs on two cores. The calling thread works too; the others are started for one `map` and end with
it: each attaches to the JVM as a daemon on its first Java call (JPype does that) and detaches
before it ends, so no Java thread outlives its work and none holds up the JVM's shutdown. Python
marks them daemons, so a stop that leaves at once (os._exit) never waits for them.

Results come back in the order of the items, whichever thread ran them: a number never depends on
the thread count.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from typing import TypeVar

Item = TypeVar("Item")
Result = TypeVar("Result")


class JvmThreads:
    def __init__(self, count: int):
        self.count = max(1, int(count))

    def map(self, call: Callable[[Item], Result], items: Iterable[Item]) -> list[Result]:
        """[call(item) for item in items], on up to `count` threads; the first exception is raised.

        Items are taken from the iterable one at a time as threads get free, so a lazy iterable makes
        at most `count` of them at once.
        """
        if self.count == 1:
            done = []
            for item in items:
                done.append(call(item))
                del item  # before the next is made: a thread never holds two at once
            return done
        results: dict[int, Result] = {}
        errors: list[BaseException] = []
        pending = enumerate(items)
        lock = threading.Lock()

        def work() -> None:
            while True:
                with lock:
                    taken = None if errors else next(pending, None)
                if taken is None:
                    return
                index, item = taken
                try:
                    results[index] = call(item)
                except BaseException as exc:  # handed to the calling thread, which raises it
                    with lock:
                        errors.append(exc)
                del taken, item  # before the next is made

        def helper() -> None:
            try:
                work()
            finally:
                _detach_from_jvm()

        helpers = [threading.Thread(target=helper, name=f"jvm-worker-{i}", daemon=True) for i in range(self.count - 1)]
        for thread in helpers:
            thread.start()
        work()
        for thread in helpers:
            thread.join()
        if errors:
            raise errors[0]
        return [results[index] for index in range(len(results))]


def _detach_from_jvm() -> None:
    import jpype

    if jpype.isJVMStarted():
        jpype.JClass("java.lang.Thread").detach()  # not jpype.java...: its first walk costs 0.3 s
