"""A plug-in task for failure tests: the real default analysis, with faults that happen for real.

The environment variable FAULTY_TASK picks the faults:
- unset or "fail": two users fail. FAILING_USER makes JIDT itself throw (a symbol outside the
  calculator's base): a real Java exception with a Java stack trace. HUNGRY_USER asks JIDT for a
  calculator far larger than any test heap: real Java heap exhaustion, reported through the
  analysis's own HeapTooSmall path with the heap it would need.
- "healed": no faults (to test --retry-failed once the cause is gone).
- "missing-class": every user asks the JVM for a class that is on no classpath, as a task whose jar
  is missing does: every user fails alike (a TypeError from JPype), to test fail fast.
- "crash-once:<marker file>": at CRASHING_USER, the first process to get there crashes the JVM for
  real (a write to address 0 through sun.misc.Unsafe: SIGSEGV, an hs_err report, abort); it leaves
  the marker file so that a restarted process goes through.
- "slow:<seconds>": every user first spends that long inside one Java call (Thread.sleep), as a long
  JIDT computation does: Python's own signal handlers cannot run until it returns. The task's time
  estimate (user_seconds) adds those seconds, as an honest estimate of itself would.
- FAULTY_HOLD=<file>, beside any mode: once a process has analysed its first user, each further user
  waits inside Java while the file exists. A test keeps a shard running, whatever the machine's load,
  until it removes the file (a named stand-in for a user that takes as long as the test needs).
Every other user is analysed exactly as `shardrun.infodynamics:task` does.
"""

from __future__ import annotations

import os
from pathlib import Path

from shardrun.infodynamics import InfodynamicsTask
from shardrun.infodynamics.measures import heap_exhaustion_as_heap_too_small

FAILING_USER = "user-03"
HUNGRY_USER = "user-05"
CRASHING_USER = "user-08"
HUNGRY_NEED = 8 * 2**30
MISSING_CLASS = "org.example.shardrun.NotOnTheClasspath"  # two int[2][2^29] count tables


def crash_the_jvm() -> None:
    import jpype

    unsafe_field = jpype.JClass("sun.misc.Unsafe").class_.getDeclaredField("theUnsafe")
    unsafe_field.setAccessible(True)
    unsafe_field.get(None).putAddress(0, 0)


class FaultyTask(InfodynamicsTask):
    users_begun = 0  # by this process: FAULTY_HOLD lets the first one through

    @staticmethod
    def analyse(dataset, user_id, settings):
        import jpype

        hold = os.environ.get("FAULTY_HOLD")
        FaultyTask.users_begun += 1
        while hold and FaultyTask.users_begun > 1 and Path(hold).exists():
            jpype.JClass("java.lang.Thread").sleep(200)
        mode = os.environ.get("FAULTY_TASK", "fail")
        if mode.startswith("slow:"):
            jpype.JClass("java.lang.Thread").sleep(int(float(mode.split(":", 1)[1]) * 1000))
        elif mode.startswith("crash-once:"):
            marker = Path(mode.split(":", 1)[1])
            if user_id == CRASHING_USER and not marker.exists():
                marker.touch()
                crash_the_jvm()
        elif mode == "missing-class":
            jpype.JClass(MISSING_CLASS)
        elif mode == "fail":
            calculator_class = jpype.JClass("infodynamics.measures.discrete.ActiveInformationCalculatorDiscrete")
            if user_id == FAILING_USER:
                calculator = calculator_class(2, 1)
                calculator.initialise()
                calculator.addObservations(jpype.JArray(jpype.JInt)([0, 1, 7, 1, 0]))
            if user_id == HUNGRY_USER:
                with heap_exhaustion_as_heap_too_small(lambda: HUNGRY_NEED, "test calculator at k=29"):
                    calculator_class(2, 29).initialise()
        return InfodynamicsTask.analyse(dataset, user_id, settings)


    @staticmethod
    def user_seconds(settings, dataset):
        mode = os.environ.get("FAULTY_TASK", "fail")
        extra = float(mode.split(":", 1)[1]) if mode.startswith("slow:") else 0.0
        return {user: seconds + extra for user, seconds in InfodynamicsTask.user_seconds(settings, dataset).items()}


task = FaultyTask()
