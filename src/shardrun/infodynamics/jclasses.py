"""The Java classes the analysis calls, each looked up once per process.

JPype's JClass(name) costs about as much as a small JIDT call, and a small user makes a dozen of
them; the JVM (started once per process, by the core) never unloads a class, so the first answer
stands. Looked up on first use: importing this module never needs a JVM.
"""

from __future__ import annotations

import functools

ENTROPY = "infodynamics.measures.discrete.EntropyCalculatorDiscrete"
MUTUAL_INFORMATION = "infodynamics.measures.discrete.MutualInformationCalculatorDiscrete"
CONDITIONAL_MUTUAL_INFORMATION = "infodynamics.measures.discrete.ConditionalMutualInformationCalculatorDiscrete"
RANDOM_GENERATOR = "infodynamics.utils.RandomGenerator"


@functools.cache
def java_class(name: str):
    from jpype import JClass

    return JClass(name)
