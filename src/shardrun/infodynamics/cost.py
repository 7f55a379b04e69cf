"""How long each user's analysis is expected to take: the Task protocol's optional user_seconds.

An estimate for planning (a scheduler's time limit), not a promise: seconds grow with the user's
observations times the tests run on them (one value and `surrogates` permutations, per k of the grid,
per feature mode), plus a fixed start. The rate is measured (docs/PERFORMANCE.md): about 4.5e-8 s per
(observation x test) on 61,000-observation users and 6e-8 s on the sample data's median user (3e-7 s
for the first user of a JVM, before the JIT has warmed up), on this project's 2-CPU reference machine.
The constant below doubles the typical figure so that the estimate errs long; distinct pasts at large
k, slower CPUs and a loaded node can still exceed it, which is why the time limit's own warning and the
requeue stay the guard.
"""

from __future__ import annotations

from shardrun.infodynamics.heap import observation_counts
from shardrun.infodynamics.settings import Settings

SECONDS_PER_OBSERVATION_TEST = 1.0e-7
SECONDS_PER_USER = 1.0  # reading, symbols, the JVM arrays and the commit, rounded up


def user_seconds(settings: Settings, dataset) -> dict[str, float]:
    """Estimated seconds of each user's analysis (no JVM; vectorised over the users)."""
    user_ids, n_obs, analysed = observation_counts(dataset, settings)
    tests = (settings.surrogates + 1) * len(settings.k_selection.ks) * len(settings.feature_modes)
    seconds = SECONDS_PER_USER + SECONDS_PER_OBSERVATION_TEST * n_obs * tests * analysed
    return dict(zip(user_ids, seconds.tolist()))
