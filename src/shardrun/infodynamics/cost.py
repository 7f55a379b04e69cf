"""How long each user's analysis is expected to take: Task.user_seconds (from
the input) and result_seconds (from merged rows), one formula (estimated_seconds).

An estimate for planning (a scheduler's time limit) and for run.png's slow users, not a promise: seconds
grow with the user's observations times the tests run on them (one value and `surrogates` permutations,
per k of the grid, per feature mode), plus a fixed start. The rate is measured (docs/dev/PERFORMANCE.md):
about 4.5e-8 s per (observation x test) on 61,000-observation users and 6e-8 s on the sample data's
median user (3e-7 s for the first user of a JVM, before the JIT has warmed up), on this project's 2-CPU
reference machine. The constant below doubles the typical figure so that the estimate errs long;
distinct pasts at large k, slower CPUs and a loaded node can still exceed it, which is why the time
limit's own warning and the requeue stay the guard.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd

from shardrun.infodynamics.heap import observation_counts
from shardrun.infodynamics.settings import Settings
from shardrun.states import UserStatus

SECONDS_PER_OBSERVATION_TEST = 1.0e-7
SECONDS_PER_USER = 1.0  # reading, symbols, the JVM arrays and the commit, rounded up


def user_seconds(settings: Settings, dataset) -> dict[str, float]:
    """Estimated seconds of each user's analysis (no JVM; vectorised over the users)."""
    user_ids, n_obs, analysed = observation_counts(dataset, settings)
    return dict(zip(user_ids, estimated_seconds(settings, n_obs, analysed).tolist()))


def estimated_seconds(settings: Settings, n_obs: np.ndarray, analysed: np.ndarray) -> np.ndarray:
    """The estimate for users of `n_obs` observations, of which those `analysed` run the tests."""
    tests = (settings.surrogates + 1) * len(settings.k_selection.ks) * len(settings.feature_modes)
    return SECONDS_PER_USER + SECONDS_PER_OBSERVATION_TEST * np.asarray(n_obs, dtype="float64") * tests * analysed


def result_seconds(frame: pd.DataFrame, settings: Settings) -> Mapping[str, float]:
    """Task.result_seconds: the same estimate from merged rows, by user id (run.png judges each
    user's time against it). A user's n_obs is in its rows; it ran the tests when a row of it is ok (a
    skipped user stopped before them). A user without n_obs (failed before its series was read) is
    left out."""
    if not len(frame) or "n_obs" not in frame.columns or "user_id" not in frame.columns:
        return {}
    n_obs = pd.to_numeric(frame["n_obs"], errors="coerce")
    ok = (frame["status"] == UserStatus.OK.value) if "status" in frame.columns else pd.Series(True, index=frame.index)
    per_user = pd.DataFrame({"user_id": frame["user_id"].astype(str), "n_obs": n_obs,
                             "ok": ok.to_numpy(dtype=bool, na_value=False)}).groupby("user_id", sort=False)
    sizes = per_user["n_obs"].max().dropna()
    analysed = per_user["ok"].any().reindex(sizes.index)
    seconds = estimated_seconds(settings, sizes.to_numpy(), analysed.to_numpy(dtype=bool))
    return dict(zip(sizes.index, seconds.tolist()))
