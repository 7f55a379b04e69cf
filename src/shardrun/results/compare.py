"""Two result sets of the same users, compared value for value, bookkeeping columns aside (pure).

Numbers never depend on K or the shard order, so runs must agree exactly (launch_shards --benchmark).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from shardrun.storage.paths import MergedPaths
from shardrun.task import BOOKKEEPING_COLUMNS


def read_result_frame(merged_dir: Path) -> pd.DataFrame:
    """A merged result set's table, as the merge wrote it (results.parquet keeps the column types)."""
    return pd.read_parquet(MergedPaths(Path(merged_dir)).parquet)


def result_differences(reference: pd.DataFrame, other: pd.DataFrame, key_columns: Sequence[str],
                       names: tuple[str, str] = ("the reference", "the other"), limit: int = 10) -> list[str]:
    """Every way `other` differs from `reference`, one line each (the first `limit`, then a count); [] if none.
    Missing equals missing; else `==`, so 1 and 1.0 agree and "1" and 1 do not."""
    first, second = names
    keys = list(key_columns)
    problems: list[str] = []
    frames = []
    for name, frame in ((first, reference), (second, other)):
        absent = [k for k in keys if k not in frame.columns]
        if absent:
            return [f"{name} has no key column {', '.join(absent)}"]
        values = frame.drop(columns=[c for c in BOOKKEEPING_COLUMNS if c in frame.columns]).set_index(keys)
        duplicated = values.index[values.index.duplicated()].unique()
        if len(duplicated):
            problems.append(f"{name} has more than one row for {_key(duplicated[0])}"
                            + (f" and {len(duplicated) - 1} more keys" if len(duplicated) > 1 else ""))
            values = values[~values.index.duplicated()]
        frames.append(values)
    ours, theirs = frames
    for column in ours.columns.difference(theirs.columns, sort=False):
        problems.append(f"column {column!r} is in {first} only")
    for column in theirs.columns.difference(ours.columns, sort=False):
        problems.append(f"column {column!r} is in {second} only")
    for key in ours.index.difference(theirs.index, sort=False):
        problems.append(f"{_key(key)} is in {first} only")
    for key in theirs.index.difference(ours.index, sort=False):
        problems.append(f"{_key(key)} is in {second} only")
    common_rows = ours.index.intersection(theirs.index, sort=False)
    ours, theirs = ours.loc[common_rows], theirs.loc[common_rows]
    for column in [c for c in ours.columns if c in theirs.columns]:
        mine, yours = ours[column], theirs[column]
        both_missing = mine.isna().to_numpy() & yours.isna().to_numpy()
        equal = (mine.astype(object).to_numpy() == yours.astype(object).to_numpy()) | both_missing
        for key, a, b in zip(common_rows[~equal], mine.to_numpy()[~equal], yours.to_numpy()[~equal]):
            problems.append(f"{_key(key)}: {column} is {_value(a)} in {first} but {_value(b)} in {second}")
    if len(problems) > limit:
        return problems[:limit] + [f"... and {len(problems) - limit} more differences"]
    return problems


def _value(value: object) -> str:
    """repr of the plain Python value (numpy's scalars print as np.float64(...) otherwise)."""
    return repr(value.item() if hasattr(value, "item") else value)


def _key(key: object) -> str:
    return "(" + ", ".join(map(str, key)) + ")" if isinstance(key, tuple) else str(key)
