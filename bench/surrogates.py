"""Seeded permutation nulls (shardrun's path) against JIDT's own computeSignificance(n), in one process.

shardrun draws every surrogate from a generator seeded by (seed, user, mode, k) and hands the
permutations to JIDT's computeSignificance(int[][]) in batches; JIDT's computeSignificance(int n)
draws its own, unseeded. This measures both on the same calculators (same data, same number of
surrogates) and prints the time of each and their ratio, best of --repeat runs.

    .venv/bin/python bench/surrogates.py [--surrogates 100] [--repeat 3]

Figures and the machine they came from: docs/PERFORMANCE.md.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from shardrun.config import JvmConfig
from shardrun.infodynamics.measures import ais_test, java_ints
from shardrun.infodynamics.seeds import generator_for, permutation_batches
from shardrun.jvm import start_jvm

# (what, base, k, observations): the default analysis's composite mode (24 symbols) at the k of
# the shipped grid, activity (4 symbols), and a long series.
CASES = [
    ("activity, base 4, k=4, 1400 obs", 4, 4, 1400),
    ("composite, base 24, k=2, 1400 obs", 24, 2, 1400),
    ("composite, base 24, k=3, 1400 obs", 24, 3, 1400),
    ("composite, base 24, k=4, 1400 obs", 24, 4, 1400),
    ("activity, base 4, k=6, 1e6 obs", 4, 6, 1_000_000),
]


def best_of(repeat: int, run) -> float:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--surrogates", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--xmx", default="2g")
    args = parser.parse_args()
    start_jvm(JvmConfig(xms=None, xmx=args.xmx))
    from jpype import JClass

    calculator_class = JClass("infodynamics.measures.discrete.ActiveInformationCalculatorDiscrete")
    print(f"{'case':<36} {'seeded batches':>15} {'JIDT unseeded':>14} {'ratio':>7}")
    for what, base, k, n_obs in CASES:
        symbols = np.random.default_rng(1).integers(0, base, n_obs).astype(np.int32)

        def seeded():
            rng = generator_for(1, "bench", "mode", "ais", k)
            ais_test(symbols, base, k, lambda n: permutation_batches(rng, n, args.surrogates))

        def unseeded():
            calculator = calculator_class(base, k)
            calculator.initialise()
            calculator.addObservations(java_ints(symbols))
            calculator.computeSignificance(args.surrogates)

        seeded()  # warm up the JIT on both paths before timing
        unseeded()
        ours, theirs = best_of(args.repeat, seeded), best_of(args.repeat, unseeded)
        print(f"{what:<36} {ours:>14.3f}s {theirs:>13.3f}s {theirs / ours:>6.2f}x")


if __name__ == "__main__":
    main()
