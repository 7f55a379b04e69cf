"""A plug-in task for failure tests: the real default analysis, except two users that fail for real.

- FAILING_USER makes JIDT itself throw (a symbol outside the calculator's base): a real Java
  exception with a Java stack trace.
- HUNGRY_USER asks JIDT for a calculator far larger than any test heap: real Java heap exhaustion,
  reported through the analysis's own HeapTooSmall path with the heap it would need.
Every other user is analysed exactly as `shardrun.infodynamics:task` does. With the environment
variable FAULTY_TASK_HEALED=1 the faults are gone (to test --retry-failed).
"""

from __future__ import annotations

import os

from shardrun.infodynamics import InfodynamicsTask
from shardrun.infodynamics.measures import heap_exhaustion_as_heap_too_small

FAILING_USER = "user-03"
HUNGRY_USER = "user-05"
HUNGRY_NEED = 8 * 2**30  # two int[2][2^29] count tables


class FaultyTask(InfodynamicsTask):
    @staticmethod
    def analyse(dataset, user_id, settings):
        import jpype

        calculator_class = jpype.JClass("infodynamics.measures.discrete.ActiveInformationCalculatorDiscrete")
        if os.environ.get("FAULTY_TASK_HEALED") == "1":
            return InfodynamicsTask.analyse(dataset, user_id, settings)
        if user_id == FAILING_USER:
            calculator = calculator_class(2, 1)
            calculator.initialise()
            calculator.addObservations(jpype.JArray(jpype.JInt)([0, 1, 7, 1, 0]))
        if user_id == HUNGRY_USER:
            with heap_exhaustion_as_heap_too_small(lambda: HUNGRY_NEED, "test calculator at k=29"):
                calculator_class(2, 29).initialise()
        return InfodynamicsTask.analyse(dataset, user_id, settings)


task = FaultyTask()
