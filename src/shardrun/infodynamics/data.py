"""Loading the long input table and turning it into one time-ordered series per user.

Rules (documented for users in the config reference):
- CSV (`.csv`, optionally compressed: `.csv.gz`, `.csv.bz2`, `.csv.xz`, `.csv.zip`) or Parquet
  (`.parquet`, `.pq`), chosen by the file name. User ids are read as text, so `007` stays `007`.
- Timestamps: ISO 8601 text (or any single format pandas recognises) or a datetime column. A timestamp
  with a UTC offset keeps its own local wall-clock hour for the hour-of-day bin: `10:00+02:00` is
  hour 10. Rows are ordered by the instant they denote (stable, so equal instants keep file order).
  Offsets may differ between rows (daylight saving time); mixing rows with and without an offset is
  an error because their order would be a guess.
- Values: a missing or non-finite value drops its row (counted per user and logged). With quantile
  encoding the column must be numeric; with categorical encoding values are labels compared as text.
- `data.step: null`: the rows as given. Several rows at the same timestamp stay separate, consecutive
  observations (in file order); set `step` to aggregate them instead.
- `data.step` set: each user's values are resampled with pandas on the local wall-clock time, from
  the bin of the first to the bin of the last timestamp. Empty bins become 0 for `sum` and `count`
  (no events is a count of zero) and are dropped for `mean`, `min`, `max`, `first`, `last` (there is
  no value to report).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd

from shardrun.errors import DataError
from shardrun.infodynamics.settings import DataSettings, Settings
from shardrun.digest import file_sha256

log = logging.getLogger(__name__)

CSV_SUFFIXES = (".csv", ".csv.gz", ".csv.bz2", ".csv.xz", ".csv.zip")
PARQUET_SUFFIXES = (".parquet", ".pq")
_EXAMPLES = 5  # bad values quoted in an error message
_MIXED_OFFSETS = "Mixed timezones"  # pandas' message when one column holds several UTC offsets


@dataclass(frozen=True)
class UserSeries:
    """One user's observations in time order, ready for symbolisation."""

    user_id: str
    values: np.ndarray  # float64 (quantile encoding) or labels as str objects (categorical)
    hours: np.ndarray  # local hour of day, 0..23, one per value
    dropped_missing: int  # rows dropped because the value was missing or not finite
    duplicate_times: int  # rows sharing their timestamp with the previous row (before resampling)

    @property
    def n_obs(self) -> int:
        return len(self.values)


@dataclass(frozen=True)
class _UserRows:
    instants: np.ndarray  # int64 ns, ordering key (UTC for offset-aware input)
    local_times: np.ndarray  # datetime64[ns], local wall-clock time
    values: np.ndarray


class Dataset:
    """The loaded table, grouped by user; `series` builds one user's series on demand."""

    def __init__(self, path: Path, fingerprint: str, rows_by_user: dict[str, _UserRows], settings: DataSettings):
        self.path = path
        self.fingerprint = fingerprint
        self.user_ids: tuple[str, ...] = tuple(sorted(rows_by_user))
        self._rows_by_user = rows_by_user
        self._settings = settings

    def series(self, user_id: str) -> UserSeries:
        try:
            rows = self._rows_by_user[user_id]
        except KeyError:
            raise KeyError(f"user {user_id!r} is not in {self.path}") from None
        missing = _missing_values(rows.values, self._settings.encoding)
        values = rows.values[~missing]
        local_times = rows.local_times[~missing]
        instants = rows.instants[~missing]
        duplicates = int(np.count_nonzero(instants[1:] == instants[:-1]))
        if missing.any():
            log.info("user %s: dropped %d rows with a missing value", user_id, int(missing.sum()))
        if self._settings.step is not None:
            values, local_times = resample(values, local_times, self._settings.step, self._settings.aggregate)
        elif duplicates:
            log.info("user %s: %d rows share a timestamp with the previous row; kept as separate rows",
                     user_id, duplicates)
        hours = pd.DatetimeIndex(local_times).hour.to_numpy(dtype=np.int64)
        return UserSeries(
            user_id=user_id,
            values=values,
            hours=hours,
            dropped_missing=int(missing.sum()),
            duplicate_times=duplicates,
        )


def load(settings: Settings) -> Dataset:
    data = settings.data
    path = Path(data.path)
    if not path.is_absolute():
        path = Path.cwd() / path
    if not path.is_file():
        raise DataError(
            f"data file {path} does not exist (data.path {data.path!r}, relative paths are resolved against the"
            f" working directory {Path.cwd()}); fix data.path in the config or run from the project directory."
        )
    frame = read_table(path, data)
    if frame.empty:
        raise DataError(f"data file {path} has no rows, so there are no users to analyse; check the file.")
    users = _user_ids(frame[data.user_column], path, data.user_column)
    instants, local_times = parse_timestamps(frame[data.time_column], path, data.time_column)
    values = _typed_values(frame[data.value_column], path, data)
    codes, user_ids = pd.factorize(users, sort=True)
    # Sort by user, then by instant; np.lexsort is stable, so equal instants keep file order.
    order = np.lexsort((instants, codes))
    codes, instants, local_times, values = codes[order], instants[order], local_times[order], values[order]
    starts = np.flatnonzero(np.r_[True, codes[1:] != codes[:-1]])
    stops = np.r_[starts[1:], len(codes)]
    rows_by_user = {
        str(user_ids[codes[start]]): _UserRows(instants[start:stop], local_times[start:stop], values[start:stop])
        for start, stop in zip(starts, stops)
    }
    log.info("loaded %s: %d rows, %d users", path, len(frame), len(rows_by_user))
    return Dataset(path=path, fingerprint=file_sha256(path), rows_by_user=rows_by_user, settings=data)


def read_table(path: Path, data: DataSettings) -> pd.DataFrame:
    """The three configured columns of a CSV or Parquet file, or a DataError naming what is wrong."""
    name = path.name.lower()
    wanted = [data.user_column, data.time_column, data.value_column]
    # Text in, so ids like 007 and labels keep their spelling; numbers are converted later, checked.
    text_columns = {data.user_column: str, data.time_column: str}
    if data.encoding == "categorical":
        text_columns[data.value_column] = str
    try:
        if name.endswith(CSV_SUFFIXES):
            present = list(pd.read_csv(path, nrows=0).columns)
            _require_columns(present, wanted, path)
            return pd.read_csv(path, usecols=wanted, dtype=text_columns)
        if name.endswith(PARQUET_SUFFIXES):
            import pyarrow.parquet as pq

            present = list(pq.read_schema(path).names)
            _require_columns(present, wanted, path)
            return pd.read_parquet(path, columns=wanted)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, OSError, ValueError) as exc:
        raise DataError(f"data file {path} cannot be read ({type(exc).__name__}: {exc}); check that it is a valid"
                        " CSV or Parquet file.") from None
    raise DataError(
        f"data file {path} has an unsupported extension; use a CSV ({', '.join(CSV_SUFFIXES)}) or Parquet"
        f" ({', '.join(PARQUET_SUFFIXES)}) file."
    )


def _require_columns(present: list[str], wanted: list[str], path: Path) -> None:
    missing = [column for column in dict.fromkeys(wanted) if column not in present]
    if missing:
        raise DataError(
            f"data file {path} has no column {', '.join(repr(c) for c in missing)}; its columns are"
            f" {', '.join(repr(c) for c in present)}. Set data.user_column, data.time_column and"
            " data.value_column in the config to the file's column names."
        )


def _user_ids(column: pd.Series, path: Path, name: str) -> np.ndarray:
    # An empty id counts as missing: a CSV cannot tell "" from no value (it reads both as missing,
    # here and in the merged results.csv), so a Parquet file must not make "" a user either.
    missing = (column.isna() | (column.astype(str) == "")).to_numpy()
    if missing.any():
        raise DataError(
            f"data file {path}: {int(missing.sum())} rows have no user id (missing or empty) in column {name!r}"
            f" ({_row_list(np.flatnonzero(missing))}); fill in or remove those rows."
        )
    return column.astype(str).to_numpy(dtype=object)


def parse_timestamps(column: pd.Series, path: Path, name: str) -> tuple[np.ndarray, np.ndarray]:
    """(instants as int64 ns for ordering, local wall-clock times as datetime64[ns])."""
    if pd.api.types.is_numeric_dtype(column) and not pd.api.types.is_bool_dtype(column):
        raise DataError(
            f"data file {path}: column {name!r} holds numbers, not timestamps; write ISO 8601 timestamps"
            " such as 2025-01-31T13:00:00 (a number would be read as nanoseconds since 1970)."
        )
    if isinstance(column.dtype, pd.DatetimeTZDtype) or pd.api.types.is_datetime64_dtype(column):
        parsed = column
    else:
        parsed = _parse_time_text(column, path, name)
        if parsed is None:
            return _parse_mixed_offsets(column, path, name)
    empty = parsed.isna().to_numpy()
    if empty.any():
        raise DataError(
            f"data file {path}: {int(empty.sum())} rows have no timestamp in column {name!r}"
            f" ({_row_list(np.flatnonzero(empty))}); fill in or remove those rows."
        )
    if isinstance(parsed.dtype, pd.DatetimeTZDtype):
        local = parsed.dt.tz_localize(None)
        instants = parsed.dt.tz_convert("UTC").dt.tz_localize(None)
    else:
        local = instants = parsed
    return _as_ns(instants).view(np.int64), _as_ns(local)


def _parse_time_text(column: pd.Series, path: Path, name: str) -> pd.Series | None:
    """Parsed timestamps, or None when the rows carry different UTC offsets."""
    # ISO 8601 first (fast, unambiguous), then one inferred format, then per-element inference.
    for form in ("ISO8601", None, "mixed"):
        try:
            return pd.to_datetime(column, format=form)
        except (ValueError, TypeError) as exc:
            if _MIXED_OFFSETS in str(exc):
                return None
            failure = exc
    bad = _unparseable_rows(column)
    examples = "; ".join(f"row {i + 1}: {column.iloc[i]!r}" for i in bad[:_EXAMPLES]) or str(failure)
    raise DataError(
        f"data file {path}: column {name!r} has timestamps that cannot be parsed ({examples}); write them as"
        " ISO 8601, such as 2025-01-31T13:00:00 or 2025-01-31T13:00:00+01:00."
    )


def _unparseable_rows(column: pd.Series) -> np.ndarray:
    coerced = pd.to_datetime(column, format="mixed", errors="coerce", utc=True)
    return np.flatnonzero((coerced.isna() & column.notna()).to_numpy())


def _parse_mixed_offsets(column: pd.Series, path: Path, name: str) -> tuple[np.ndarray, np.ndarray]:
    """Rows with different UTC offsets: order by the instant, bin by each row's own local hour."""
    stamps, bad = [], []
    for row, text in enumerate(column):
        try:
            stamps.append(datetime.fromisoformat(str(text)))
        except ValueError:
            bad.append(row)
    if bad:
        examples = "; ".join(f"row {i + 1}: {column.iloc[i]!r}" for i in bad[:_EXAMPLES])
        raise DataError(
            f"data file {path}: column {name!r} has timestamps that cannot be parsed ({examples}); write them"
            " as ISO 8601, such as 2025-01-31T13:00:00+01:00."
        )
    naive = [row for row, stamp in enumerate(stamps) if stamp.tzinfo is None]
    if naive:
        raise DataError(
            f"data file {path}: column {name!r} mixes timestamps with and without a UTC offset"
            f" ({_row_list(np.asarray(naive))} have none), so their order is unknown; give every timestamp"
            " an offset or none."
        )
    local = pd.to_datetime([stamp.replace(tzinfo=None) for stamp in stamps])
    instants = pd.to_datetime(stamps, utc=True).tz_localize(None)
    return _as_ns(instants).view(np.int64), _as_ns(local)


def _as_ns(times: pd.Series | pd.DatetimeIndex) -> np.ndarray:
    return np.asarray(times, dtype="datetime64[ns]")


def _typed_values(column: pd.Series, path: Path, data: DataSettings) -> np.ndarray:
    if data.encoding == "categorical":
        labels = column.to_numpy(dtype=object)
        present = column.notna().to_numpy()
        labels[present] = [str(label) for label in labels[present]]
        labels[~present] = None
        return labels
    numbers = pd.to_numeric(column, errors="coerce")
    bad = np.flatnonzero((numbers.isna() & column.notna()).to_numpy())
    if len(bad):
        examples = "; ".join(f"row {i + 1}: {column.iloc[i]!r}" for i in bad[:_EXAMPLES])
        raise DataError(
            f"data file {path}: column {data.value_column!r} holds values that are not numbers ({examples});"
            " quantile encoding needs numbers. Fix the column, or set data.encoding: categorical to treat the"
            " values as labels."
        )
    return numbers.to_numpy(dtype=np.float64)


def _missing_values(values: np.ndarray, encoding: str) -> np.ndarray:
    if encoding == "categorical":
        return pd.isna(values)
    return ~np.isfinite(values)


def resample(values: np.ndarray, local_times: np.ndarray, step: str, aggregate: str) -> tuple[np.ndarray, np.ndarray]:
    """Values on a regular grid of `step` on the local clock (see the module docstring for empty bins)."""
    if len(values) == 0:
        return values, local_times
    dtype = object if values.dtype == object else np.float64
    series = pd.Series(values, index=pd.DatetimeIndex(local_times), dtype=dtype).sort_index(kind="stable")
    binned = series.resample(step).agg(aggregate)
    binned = binned[binned.notna()]
    if values.dtype == object:
        # Categorical: the aggregate is a label (or a count, whose text is the label).
        out = np.array([str(v) for v in binned.to_numpy()], dtype=object)
    else:
        out = binned.to_numpy(dtype=np.float64)
    return out, _as_ns(binned.index)


def _row_list(rows: np.ndarray) -> str:
    shown = ", ".join(str(int(i) + 1) for i in rows[:_EXAMPLES])
    more = f" and {len(rows) - _EXAMPLES} more" if len(rows) > _EXAMPLES else ""
    return f"rows {shown}{more}"
