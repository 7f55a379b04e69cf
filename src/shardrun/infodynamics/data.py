"""Loading the long input table and turning it into one time-ordered series per user.

Rules (documented for users in the config reference):
- CSV (`.csv`, optionally compressed: `.csv.gz`, `.csv.bz2`, `.csv.xz`, `.csv.zip`) or Parquet
  (`.parquet`, `.pq`), chosen by the file name. User ids are read as text, so `007` stays `007`.
- Timestamps are never guessed. `data.time_format: null` (the default): ISO 8601 text only (what
  pandas reads with format="ISO8601": `2025-01-31T13:00:00`, `2025-01-31 13:00`, with or without a
  UTC offset or `Z`), or a datetime column (Parquet). Other text, such as `11/01/2025 03:00` (11
  January or 1 November?), is refused with the fix. `data.time_format` set (a strptime format such
  as "%d/%m/%Y %H:%M"): every text must match it; rows that do not are refused, quoted. A datetime
  column is taken as it is whatever the format.
- Time zones, `data.timezone: null` (the default): each timestamp's local time as written. A
  timestamp with a UTC offset keeps its own wall-clock hour for the hour-of-day bin (`10:00+02:00`
  is hour 10) and is ordered by the instant it denotes, so offsets may differ between rows (daylight
  saving time). Mixing rows with and without an offset is refused because their order would be a
  guess. `data.timezone` set (an IANA name such as "Europe/Berlin"): a timestamp with an offset is
  converted to that zone's local time for its hour bin; one without an offset is that zone's
  wall-clock time, and one that names no single instant there (the hour repeated when DST ends, or
  skipped when it starts) is refused with the fix (write its offset).
- Order: rows are sorted by (user, instant), stably, so equal instants (a DST hour repeated without
  offsets and without data.timezone, say) keep their file order; nothing else reorders them.
- Values: a missing or non-finite value drops its row (counted per user and logged). With quantile
  encoding the column must be numeric; with categorical encoding values are labels compared as text.
- `data.step: null`: the rows as given. Several rows at the same timestamp stay separate, consecutive
  observations (in file order); set `step` to aggregate them instead.
- `data.step` set: each user's values are resampled with pandas on the local wall-clock time, from
  the bin of the first to the bin of the last timestamp. Empty bins become 0 for `sum` and `count`
  (no events is a count of zero) and are dropped for `mean`, `min`, `max`, `first`, `last` (there is
  no value to report).

Reading by user (the Task protocol's ReadsByUser): `user_index` reads the user id column only, in
chunks (CSV) or record batches (Parquet), and gives the sorted ids and rows per user; `load(settings,
users)` then reads only those users' rows: a CSV in chunks, keeping the matching rows of each; a
Parquet file row group by row group, skipping a group whose user id statistics (min, max) hold none
of the users, so a file sorted or clustered by user id is mostly not read at all. Every check above
applies to the rows read, and a message names a row by its line in the whole file (row 1 = the first
data row), whichever rows were read.
"""

from __future__ import annotations

import logging
import bisect
from dataclasses import dataclass
from datetime import datetime
from functools import cached_property
from pathlib import Path
from typing import Collection, Iterator

import numpy as np
import pandas as pd

from shardrun.errors import DataError
from shardrun.infodynamics.settings import DataSettings, Settings
from shardrun.digest import file_sha256
from shardrun.task import UserIndex

log = logging.getLogger(__name__)

CSV_SUFFIXES = (".csv", ".csv.gz", ".csv.bz2", ".csv.xz", ".csv.zip")
PARQUET_SUFFIXES = (".parquet", ".pq")
_EXAMPLES = 5  # bad values quoted in an error message
_MIXED_OFFSETS = "Mixed timezones"  # pandas' message when one column holds several UTC offsets
# Rows per CSV chunk and per Parquet record batch of the streaming reads: large enough that pandas'
# per-call overhead vanishes, small enough that one chunk is a few tens of MiB of text.
STREAM_ROWS = 500_000


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
    """The loaded table (or the rows of some users), grouped by user; `series` builds one user's series on demand."""

    def __init__(self, path: Path, rows_by_user: dict[str, _UserRows], settings: DataSettings):
        self.path = path
        self.user_ids: tuple[str, ...] = tuple(sorted(rows_by_user))
        self._rows_by_user = rows_by_user
        self._settings = settings

    @cached_property
    def fingerprint(self) -> str:
        """The file's sha256, read when first asked for: a shard takes it from its user index instead,
        which has hashed the file already."""
        return file_sha256(self.path)

    def series(self, user_id: str) -> UserSeries:
        try:
            rows = self._rows_by_user[user_id]
        except KeyError:
            raise KeyError(f"user {user_id!r} is not in {self.path}") from None
        missing = _missing_values(rows.values, self._settings.encoding)
        dropped = int(np.count_nonzero(missing))
        values, local_times, instants = rows.values, rows.local_times, rows.instants
        if dropped:  # else the rows as they are: three copies cost a small user more than its symbols
            values, local_times, instants = values[~missing], local_times[~missing], instants[~missing]
            log.info("user %s: dropped %d rows with a missing value", user_id, dropped)
        duplicates = int(np.count_nonzero(instants[1:] == instants[:-1]))
        if self._settings.step is not None:
            values, local_times = resample(values, local_times, self._settings.step, self._settings.aggregate)
        elif duplicates:
            log.info("user %s: %d rows share a timestamp with the previous row; kept as separate rows",
                     user_id, duplicates)
        hours = hour_of_day(local_times)
        return UserSeries(
            user_id=user_id,
            values=values,
            hours=hours,
            dropped_missing=dropped,
            duplicate_times=duplicates,
        )


def hour_of_day(local_times: np.ndarray) -> np.ndarray:
    """The hour (0-23) of wall-clock datetime64 values, in numpy (pandas' DatetimeIndex per user costs
    more than a small user's whole analysis). Floor division keeps times before 1970 right."""
    return (local_times.astype("datetime64[h]").astype(np.int64) % 24).astype(np.int64)


def load(settings: Settings, users: Collection[str] | None = None) -> Dataset:
    """The table's rows, grouped by user: every row (users None), or only the rows of `users`."""
    data = settings.data
    path = data_file(data)
    if users is None:
        frame = read_table(path, data)
        if frame.empty:
            raise _no_rows(path)
    else:
        frame = read_rows_of(path, data, users)
    rows_by_user = _group_by_user(frame, path, data)
    log.info("loaded %s: %d rows, %d users", path, len(frame), len(rows_by_user))
    return Dataset(path=path, rows_by_user=rows_by_user, settings=data)


def data_file(data: DataSettings) -> Path:
    """data.path resolved against the working directory; a DataError when there is no such file."""
    path = Path(data.path)
    if not path.is_absolute():
        path = Path.cwd() / path
    if not path.is_file():
        raise DataError(
            f"data file {path} does not exist (data.path {data.path!r}, relative paths are resolved against the"
            f" working directory {Path.cwd()}); fix data.path in the config or run from the project directory."
        )
    return path


def _no_rows(path: Path) -> DataError:
    return DataError(f"data file {path} has no rows, so there are no users to analyse; check the file.")


def _group_by_user(frame: pd.DataFrame, path: Path, data: DataSettings) -> dict[str, _UserRows]:
    """Every check of the rows, then each user's rows sorted by instant. The frame's index is each row's
    position in the whole file, which the error messages name."""
    users = _user_ids(frame[data.user_column], path, data.user_column)
    instants, local_times = parse_timestamps(frame[data.time_column], path, data.time_column, data.time_format,
                                             data.timezone)
    values = _typed_values(frame[data.value_column], path, data)
    codes, user_ids = pd.factorize(users, sort=True)
    # Sort by user, then by instant; np.lexsort is stable, so equal instants keep file order.
    order = np.lexsort((instants, codes))
    codes, instants, local_times, values = codes[order], instants[order], local_times[order], values[order]
    starts = np.flatnonzero(np.r_[True, codes[1:] != codes[:-1]])
    stops = np.r_[starts[1:], len(codes)]
    return {
        str(user_ids[codes[start]]): _UserRows(instants[start:stop], local_times[start:stop], values[start:stop])
        for start, stop in zip(starts, stops)
    }


def user_index(settings: Settings) -> UserIndex:
    """The Task protocol's optional user_index: the user id column only, streamed (ReadsByUser).

    The ids are checked as the full load checks them (_user_ids, the same message over the whole file)
    and sorted as Dataset.user_ids sorts them.
    """
    data = settings.data
    path = data_file(data)
    name = data.user_column
    counts: list[pd.Series] = []
    rows = 0
    missing_rows: list[int] = []  # the first _EXAMPLES rows without an id, as positions in the file
    missing_count = 0
    for chunk in _user_id_chunks(path, data):
        missing = _missing_ids(chunk)
        if missing.any():
            positions = np.flatnonzero(missing)
            missing_count += len(positions)
            missing_rows.extend((rows + positions[:_EXAMPLES]).tolist())
            chunk = chunk[~missing]
        counts.append(chunk.astype(str).value_counts(sort=False))
        rows += len(missing)
    if rows == 0:
        raise _no_rows(path)
    if missing_count:
        raise _no_user_id(path, name, missing_count, np.asarray(missing_rows[:_EXAMPLES]))
    per_user = pd.concat(counts).groupby(level=0, sort=False).sum()
    user_ids = tuple(sorted(str(user) for user in per_user.index))
    observations = tuple(int(n) for n in per_user.reindex(list(user_ids)).to_numpy())
    log.info("indexed %s: %d rows, %d users", path, rows, len(user_ids))
    return UserIndex(user_ids=user_ids, fingerprint=file_sha256(path), observations=observations)


def _user_id_chunks(path: Path, data: DataSettings) -> Iterator[pd.Series]:
    """The user id column in file order, a chunk at a time, as the full load reads it (text in a CSV;
    a Parquet column as pandas converts it, so that astype(str) spells ids alike)."""
    name = data.user_column
    kind = _kind(path)
    try:
        if kind == "csv":
            _require_columns(list(pd.read_csv(path, nrows=0).columns), [name], path)
            with pd.read_csv(path, usecols=[name], dtype={name: str}, chunksize=STREAM_ROWS) as reader:
                for chunk in reader:
                    yield chunk[name]
            return
        import pyarrow.parquet as pq

        parquet = pq.ParquetFile(path)
        _require_columns(list(parquet.schema_arrow.names), [name], path)
        for batch in parquet.iter_batches(batch_size=STREAM_ROWS, columns=[name]):
            yield batch.column(0).to_pandas()
    except _READ_ERRORS as exc:
        raise _unreadable(path, exc) from None


def read_rows_of(path: Path, data: DataSettings, users: Collection[str]) -> pd.DataFrame:
    """The three configured columns of the rows of `users` only, indexed by their position in the file.

    A CSV is streamed in chunks, each cut down to those rows; a Parquet file is read row group by row
    group, a group skipped unread when its statistics show none of `users` between its smallest and
    largest user id. Only the kept rows (and one chunk or group) are ever in memory."""
    wanted = _wanted_columns(data)
    chosen = sorted(set(users))
    kind = _kind(path)
    try:
        if kind == "csv":
            _require_columns(list(pd.read_csv(path, nrows=0).columns), wanted, path)
            keep = set(chosen)
            with pd.read_csv(path, usecols=wanted, dtype=_text_columns(data), chunksize=STREAM_ROWS) as reader:
                # read_csv numbers a chunk's rows on from the previous chunk: the index is the file position.
                parts = [chunk[chunk[data.user_column].isin(keep)] for chunk in reader]
            return pd.concat(parts)[wanted] if parts else pd.read_csv(path, usecols=wanted, nrows=0)[wanted]
        return _parquet_rows_of(path, data, wanted, chosen)
    except _READ_ERRORS as exc:
        raise _unreadable(path, exc) from None


def _parquet_rows_of(path: Path, data: DataSettings, wanted: list[str], chosen: list[str]) -> pd.DataFrame:
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    parquet = pq.ParquetFile(path)
    _require_columns(list(parquet.schema_arrow.names), wanted, path)
    id_type = parquet.schema_arrow.field(data.user_column).type
    textual = pa.types.is_string(id_type) or pa.types.is_large_string(id_type)
    leaf = list(parquet.metadata.schema.names).index(data.user_column)
    kept, positions = [], []
    first_row = 0
    for group in range(parquet.num_row_groups):
        rows_in_group = parquet.metadata.row_group(group).num_rows
        statistics = parquet.metadata.row_group(group).column(leaf).statistics
        if textual and statistics is not None and statistics.has_min_max \
                and not _any_between(chosen, statistics.min, statistics.max):
            first_row += rows_in_group
            continue
        table = parquet.read_row_group(group, columns=wanted)
        ids = table.column(data.user_column)
        if textual:
            mask = pc.is_in(ids, value_set=pa.array(chosen, type=id_type)).to_numpy(zero_copy_only=False)
        else:  # ids as the full load spells them (pandas' conversion, then text)
            mask = ids.to_pandas().astype(str).isin(set(chosen)).to_numpy()
        if mask.any():
            kept.append(table.filter(pa.array(mask)))
            positions.append(first_row + np.flatnonzero(mask))
        first_row += rows_in_group
    if not kept:
        return parquet.schema_arrow.empty_table().select(wanted).to_pandas()
    frame = pa.concat_tables(kept).to_pandas()
    frame.index = pd.Index(np.concatenate(positions))
    return frame[wanted]


def _any_between(chosen: list[str], low: str, high: str) -> bool:
    """Whether a sorted list holds an id in [low, high] (Python's order of str is that of UTF-8 bytes,
    Parquet's order of its string statistics)."""
    at = bisect.bisect_left(chosen, low)
    return at < len(chosen) and chosen[at] <= high


def read_table(path: Path, data: DataSettings) -> pd.DataFrame:
    """The three configured columns of a CSV or Parquet file, or a DataError naming what is wrong."""
    wanted = _wanted_columns(data)
    kind = _kind(path)
    try:
        if kind == "csv":
            present = list(pd.read_csv(path, nrows=0).columns)
            _require_columns(present, wanted, path)
            return pd.read_csv(path, usecols=wanted, dtype=_text_columns(data))
        import pyarrow.parquet as pq

        present = list(pq.read_schema(path).names)
        _require_columns(present, wanted, path)
        return pd.read_parquet(path, columns=wanted)
    except _READ_ERRORS as exc:
        raise _unreadable(path, exc) from None


_READ_ERRORS = (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, OSError, ValueError)


def _unreadable(path: Path, exc: BaseException) -> DataError:
    return DataError(f"data file {path} cannot be read ({type(exc).__name__}: {exc}); check that it is a valid"
                     " CSV or Parquet file.")


def _kind(path: Path) -> str:
    """"csv" or "parquet" by the file's name; a DataError for any other name."""
    name = path.name.lower()
    if name.endswith(CSV_SUFFIXES):
        return "csv"
    if name.endswith(PARQUET_SUFFIXES):
        return "parquet"
    raise DataError(
        f"data file {path} has an unsupported extension; use a CSV ({', '.join(CSV_SUFFIXES)}) or Parquet"
        f" ({', '.join(PARQUET_SUFFIXES)}) file."
    )


def _wanted_columns(data: DataSettings) -> list[str]:
    return [data.user_column, data.time_column, data.value_column]


def _text_columns(data: DataSettings) -> dict[str, type]:
    # Text in, so ids like 007 and labels keep their spelling; numbers are converted later, checked.
    text_columns = {data.user_column: str, data.time_column: str}
    if data.encoding == "categorical":
        text_columns[data.value_column] = str
    return text_columns


def _require_columns(present: list[str], wanted: list[str], path: Path) -> None:
    missing = [column for column in dict.fromkeys(wanted) if column not in present]
    if missing:
        raise DataError(
            f"data file {path} has no column {', '.join(repr(c) for c in missing)}; its columns are"
            f" {', '.join(repr(c) for c in present)}. Set data.user_column, data.time_column and"
            " data.value_column in the config to the file's column names."
        )


def _missing_ids(column: pd.Series) -> np.ndarray:
    # An empty id counts as missing: a CSV cannot tell "" from no value (it reads both as missing,
    # here and in the merged results.csv), so a Parquet file must not make "" a user either.
    return (column.isna() | (column.astype(str) == "")).to_numpy()


def _no_user_id(path: Path, name: str, count: int, first_rows: np.ndarray) -> DataError:
    return DataError(
        f"data file {path}: {count} rows have no user id (missing or empty) in column {name!r}"
        f" ({_row_list(first_rows, count)}); fill in or remove those rows."
    )


def _user_ids(column: pd.Series, path: Path, name: str) -> np.ndarray:
    missing = _missing_ids(column)
    if missing.any():
        raise _no_user_id(path, name, int(missing.sum()), _file_rows(column, np.flatnonzero(missing)))
    return column.astype(str).to_numpy(dtype=object)


def _file_rows(column: pd.Series, positions: np.ndarray) -> np.ndarray:
    """Positions in `column` as positions in the file (the column's index; the same for a whole read)."""
    return column.index.to_numpy()[positions]


def parse_timestamps(column: pd.Series, path: Path, name: str, time_format: str | None = None,
                     zone: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(instants as int64 ns for ordering, local wall-clock times as datetime64[ns]); rules in the module docstring."""
    if pd.api.types.is_numeric_dtype(column) and not pd.api.types.is_bool_dtype(column):
        raise DataError(
            f"data file {path}: column {name!r} holds numbers, not timestamps; write ISO 8601 timestamps"
            " such as 2025-01-31T13:00:00 (a number would be read as nanoseconds since 1970)."
        )
    empty = column.isna().to_numpy()
    if empty.any():
        raise DataError(
            f"data file {path}: {int(empty.sum())} rows have no timestamp in column {name!r}"
            f" ({_row_list(_file_rows(column, np.flatnonzero(empty)))}); fill in or remove those rows."
        )
    if isinstance(column.dtype, pd.DatetimeTZDtype) or pd.api.types.is_datetime64_dtype(column):
        times = _Times.of(column)  # a native datetime column (Parquet): data.time_format does not apply
    else:
        times = _parse_time_text(column.astype(str), path, name, time_format)
    return times.resolve(path, name, zone, column.index.to_numpy())


@dataclass(frozen=True)
class _Times:
    """Parsed timestamps: rows with a UTC offset (`aware`) carry their instant and their own wall clock."""

    aware: np.ndarray  # bool, per row
    naive: np.ndarray  # datetime64[ns], the time as written (NaT where aware)
    utc: np.ndarray  # datetime64[ns], the instant in UTC (NaT where not aware)
    own: np.ndarray  # datetime64[ns], the wall clock of the row's own offset (NaT where not aware)

    @staticmethod
    def of(parsed: pd.Series) -> "_Times":
        """From one parsed column: all without an offset, or all in one zone."""
        if isinstance(parsed.dtype, pd.DatetimeTZDtype):
            nat = np.full(len(parsed), np.datetime64("NaT"), dtype="datetime64[ns]")
            return _Times(np.ones(len(parsed), dtype=bool), nat,
                          _as_ns(parsed.dt.tz_convert("UTC").dt.tz_localize(None)), _as_ns(parsed.dt.tz_localize(None)))
        nat = np.full(len(parsed), np.datetime64("NaT"), dtype="datetime64[ns]")
        return _Times(np.zeros(len(parsed), dtype=bool), _as_ns(parsed), nat, nat)

    @staticmethod
    def of_rows(stamps: list[datetime]) -> "_Times":
        """From Python datetimes, some with an offset and some without, or with different offsets."""
        aware = np.array([stamp.tzinfo is not None for stamp in stamps], dtype=bool)
        naive = _as_ns(pd.to_datetime([None if a else s for a, s in zip(aware, stamps)]))
        utc = _as_ns(pd.to_datetime([s if a else None for a, s in zip(aware, stamps)], utc=True).tz_localize(None))
        own = _as_ns(pd.to_datetime([s.replace(tzinfo=None) if a else None for a, s in zip(aware, stamps)]))
        return _Times(aware, naive, utc, own)

    def resolve(self, path: Path, name: str, zone: str | None, file_rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """`file_rows`: each row's position in the file, for the messages."""
        if zone is None:
            if self.aware.any() and not self.aware.all():
                raise DataError(
                    f"data file {path}: column {name!r} mixes timestamps with and without a UTC offset"
                    f" ({_row_list(file_rows[np.flatnonzero(~self.aware)])} have none), so their order is unknown; give every"
                    " timestamp an offset or none, or set data.timezone to the zone the ones without an offset"
                    " are written in (such as \"Europe/Berlin\")."
                )
            instants = np.where(self.aware, self.utc, self.naive)
            local = np.where(self.aware, self.own, self.naive)
            return instants.view(np.int64), local
        # data.timezone: an offset-aware row is shown on that zone's clock; a row without an offset is
        # that zone's wall-clock time, which must name exactly one instant.
        local = self.naive.copy()
        instants = self.utc.copy()
        if self.aware.any():
            zoned = pd.DatetimeIndex(self.utc[self.aware]).tz_localize("UTC").tz_convert(zone)
            local[self.aware] = _as_ns(zoned.tz_localize(None))
        if (~self.aware).any():
            written = pd.DatetimeIndex(self.naive[~self.aware])
            placed = written.tz_localize(zone, ambiguous="NaT", nonexistent="NaT")
            unplaced = np.flatnonzero(~self.aware)[np.asarray(placed.isna())]
            if len(unplaced):
                examples = "; ".join(f"row {file_rows[i] + 1}: {pd.Timestamp(self.naive[i])}"
                                     for i in unplaced[:_EXAMPLES])
                raise DataError(
                    f"data file {path}: column {name!r} has {len(unplaced)} timestamps without a UTC offset that"
                    f" name no single instant in data.timezone {zone!r} ({examples}): the hour the clocks repeat"
                    " when daylight saving time ends, or skip when it starts. Write those timestamps with their"
                    " UTC offset (such as 2025-10-26T02:30:00+01:00), or remove data.timezone to take every"
                    " timestamp as written (equal times then keep their file order)."
                )
            instants[~self.aware] = _as_ns(placed.tz_convert("UTC").tz_localize(None))
        return instants.view(np.int64), local


def _parse_time_text(column: pd.Series, path: Path, name: str, time_format: str | None) -> _Times:
    """ISO 8601 text (time_format None) or text in exactly `time_format`; anything else is refused."""
    try:
        return _Times.of(pd.to_datetime(column, format=time_format or "ISO8601"))
    except (ValueError, TypeError) as exc:
        if _MIXED_OFFSETS not in str(exc):
            _refuse_unparsed(column, path, name, time_format)
            raise DataError(f"data file {path}: column {name!r} cannot be read as timestamps ({exc}).") from None
    # Several UTC offsets (or some rows without one): each row on its own.
    read = (lambda text: datetime.strptime(text, time_format)) if time_format else datetime.fromisoformat
    stamps, bad = [], []
    for row, text in enumerate(column):
        try:
            stamps.append(read(text))
        except ValueError:
            bad.append(row)
    if bad:
        _refuse(column, np.asarray(bad), path, name, time_format)
    return _Times.of_rows(stamps)


def _refuse_unparsed(column: pd.Series, path: Path, name: str, time_format: str | None) -> None:
    coerced = pd.to_datetime(column, format=time_format or "ISO8601", errors="coerce", utc=True)
    bad = np.flatnonzero(coerced.isna().to_numpy())
    if len(bad):
        _refuse(column, bad, path, name, time_format)


def _refuse(column: pd.Series, bad: np.ndarray, path: Path, name: str, time_format: str | None) -> None:
    examples = "; ".join(f"row {column.index[i] + 1}: {column.iloc[i]!r}" for i in bad[:_EXAMPLES])
    more = f" and {len(bad) - _EXAMPLES} more" if len(bad) > _EXAMPLES else ""
    if time_format:
        raise DataError(
            f"data file {path}: column {name!r} has {len(bad)} timestamps that do not match data.time_format"
            f" {time_format!r} ({examples}{more}); fix those rows, or set data.time_format to the format the"
            " column is written in."
        )
    raise DataError(
        f"data file {path}: column {name!r} has {len(bad)} timestamps that are not ISO 8601 ({examples}{more})."
        " Dates such as 11/01/2025 are never guessed (11 January or 1 November?): write ISO 8601 such as"
        " 2025-01-31T13:00:00 or 2025-01-31T13:00:00+01:00, or set data.time_format to the column's format,"
        ' such as "%d/%m/%Y %H:%M" (day first) or "%m/%d/%Y %H:%M" (month first).'
    )


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
        examples = "; ".join(f"row {column.index[i] + 1}: {column.iloc[i]!r}" for i in bad[:_EXAMPLES])
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


def _row_list(rows: np.ndarray, count: int | None = None) -> str:
    """'rows 1, 4 and 7 more': the first positions (0-based in the file) of `count` rows (default all of `rows`)."""
    count = len(rows) if count is None else count
    shown = ", ".join(str(int(i) + 1) for i in rows[:_EXAMPLES])
    more = f" and {count - _EXAMPLES} more" if count > _EXAMPLES else ""
    return f"rows {shown}{more}"
