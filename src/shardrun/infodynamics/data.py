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
- Missing cells, refused cells and the header: audit.py checks the whole file at start (the user index
  pass). A row with a missing or non-finite value (empty, NaN, inf, -inf) or without a timestamp is
  refused, or with `data.missing: drop` left out. With quantile encoding the column must be numeric;
  with categorical encoding values are labels compared as text.
- `data.step: null`: the rows as given. Several rows at the same timestamp stay separate, consecutive
  observations (in file order); set `step` to aggregate them instead.
- Every step here that changes a user's series (rows dropped, rows reordered, duplicate timestamps,
  rows aggregated into a bin, empty bins) is counted in the user's Cleaning (cleaning.py), which the
  result rows carry; the log says it too.
- `data.step` set: each user's values are resampled with pandas on the local wall-clock time, from
  the bin of the first to the bin of the last timestamp. Empty bins become 0 for `sum` and `count`
  (no events is a count of zero) and are dropped for `mean`, `min`, `max`, `first`, `last` (there is
  no value to report).

Reading by user (Task.user_index): `user_index` reads the three configured columns in
chunks (CSV) or record batches (Parquet), audits them (audit.py: so a problem anywhere in the file stops
every shard at start alike) and gives the sorted ids and rows per user; `load(settings,
users)` then reads only those users' rows: a CSV in chunks, keeping the matching rows of each; a
Parquet file row group by row group, skipping a group whose user id statistics (min, max) hold none
of the users, so a file sorted or clustered by user id is mostly not read at all. Every check above
applies to the rows read, and a message names a row by its place in the whole file (row 1 = the first
data row, line 2 of a CSV), whichever rows were read.
"""

from __future__ import annotations

import bisect
import logging
from collections.abc import Collection, Iterator
from dataclasses import dataclass
from datetime import datetime
from functools import cached_property
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd

from shardrun.digest import file_sha256
from shardrun.errors import DataError
from shardrun.infodynamics.audit import (
    EXAMPLES,
    InputAudit,
    missing_ids,
    no_user_id,
    not_numbers,
    repeated_columns,
    row_list,
    unparsed_times,
)
from shardrun.infodynamics.cleaning import Cleaning
from shardrun.infodynamics.settings import DataSettings, Settings
from shardrun.task import UserIndex

log = logging.getLogger(__name__)

CSV_SUFFIXES = (".csv", ".csv.gz", ".csv.bz2", ".csv.xz", ".csv.zip")
PARQUET_SUFFIXES = (".parquet", ".pq")
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
    cleaning: Cleaning  # what loading did to the user's rows (cleaning.py)

    @property
    def n_obs(self) -> int:
        return len(self.values)


@dataclass(frozen=True)
class _UserRows:
    instants: np.ndarray  # int64 ns, ordering key (UTC for offset-aware input)
    local_times: np.ndarray  # datetime64[ns], local wall-clock time
    values: np.ndarray
    missing_times: int = 0  # rows left out before these for want of a timestamp (data.missing: drop)
    out_of_order: int = 0  # rows whose timestamp is earlier than the user's row before them in the file


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
        infinite = 0
        values, local_times, instants = rows.values, rows.local_times, rows.instants
        if dropped:  # else the rows as they are: three copies cost a small user more than its symbols
            if values.dtype != object:
                infinite = int(np.count_nonzero(np.isinf(values)))
            values, local_times, instants = values[~missing], local_times[~missing], instants[~missing]
            log.info("user %s: dropped %d rows with a missing or infinite value (data.missing: drop)", user_id,
                     dropped)
        duplicates = int(np.count_nonzero(instants[1:] == instants[:-1]))
        merged = empty = 0
        if self._settings.step is not None:
            values, local_times, merged, empty = resample(values, local_times, self._settings.step,
                                                          self._settings.aggregate)
        elif duplicates:
            log.info("user %s: %d rows share a timestamp with the previous row; kept as separate rows",
                     user_id, duplicates)
        cleaning = Cleaning(missing_values=dropped - infinite, infinite_values=infinite,
                            missing_times=rows.missing_times, out_of_order=rows.out_of_order,
                            duplicate_times=duplicates, merged_rows=merged, empty_bins=empty)
        return UserSeries(user_id=user_id, values=values, hours=hour_of_day(local_times), cleaning=cleaning)


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
        audit = InputAudit(path, data)
        present = audit.add(frame)
        audit.finish(frame[data.user_column][present].astype(str).unique().tolist())
    else:
        frame = read_rows_of(path, data, users)
        # The user index has audited the whole file; the rows read are audited again for a caller that
        # did not read it first (their timestamps are parsed below anyway).
        audit = InputAudit(path, data, whole_file=False, parse_times=False)
        audit.add(frame)
        audit.finish(())
    rows_by_user = _group_by_user(frame, path, data)
    log.info("loaded %s: %d rows, %d users", path, len(frame), len(rows_by_user))
    return Dataset(path=path, rows_by_user=rows_by_user, settings=data)


def data_file(data: DataSettings) -> Path:
    """data.path resolved against the working directory; a DataError when there is no such file."""
    path = Path(data.path)
    if not path.is_absolute():
        path = Path.cwd() / path
    if path.is_dir():
        raise DataError(f"data file {path} is a directory, not a table (data.path {data.path!r}); point data.path at"
                        " the CSV or Parquet file in it.")
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
    position in the whole file, which the error messages name. A row without a timestamp is left out
    with data.missing: drop (counted; its user stays, with its other rows or none) and refused otherwise."""
    users = _user_ids(frame[data.user_column], path, data.user_column)
    codes, user_ids = pd.factorize(users, sort=True)
    missing_times = np.zeros(len(user_ids), dtype=np.int64)
    timed = frame[data.time_column].notna().to_numpy()
    if data.missing == "drop" and not timed.all():
        missing_times = np.bincount(codes[~timed], minlength=len(user_ids))
        frame, codes = frame[timed], codes[timed]
        log.info("dropped %d rows without a timestamp, of %d users (data.missing: drop)",
                 int(missing_times.sum()), int(np.count_nonzero(missing_times)))
    instants, local_times = parse_timestamps(frame[data.time_column], path, data.time_column, data.time_format,
                                             data.timezone)
    values = _typed_values(frame[data.value_column], path, data)
    # Each user's rows in file order (a stable sort by user), where a row earlier than the one before it
    # is out of order; then by instant, stably, so equal instants keep file order.
    by_user = np.argsort(codes, kind="stable")
    codes, instants, local_times, values = codes[by_user], instants[by_user], local_times[by_user], values[by_user]
    earlier = (instants[1:] < instants[:-1]) & (codes[1:] == codes[:-1])
    out_of_order = np.bincount(codes[1:][earlier], minlength=len(user_ids))
    if earlier.any():
        order = np.lexsort((instants, codes))
        codes, instants, local_times, values = codes[order], instants[order], local_times[order], values[order]
    every_user = np.arange(len(user_ids))
    starts, stops = np.searchsorted(codes, every_user, side="left"), np.searchsorted(codes, every_user, side="right")
    return {
        str(user_ids[code]): _UserRows(instants[start:stop], local_times[start:stop], values[start:stop],
                                       missing_times=int(missing_times[code]), out_of_order=int(out_of_order[code]))
        for code, start, stop in zip(every_user, starts, stops)
    }


def user_index(settings: Settings) -> UserIndex:
    """Task.user_index: the three configured columns streamed,
    audited over the whole file (audit.py) and the ids counted.

    The ids are checked as the full load checks them (the same audit, the same messages over the whole
    file) and sorted as Dataset.user_ids sorts them.
    """
    data = settings.data
    path = data_file(data)
    audit = InputAudit(path, data)
    counts: list[pd.Series] = []
    for chunk in _column_chunks(path, data):
        present = audit.add(chunk)
        counts.append(chunk[data.user_column][present].astype(str).value_counts(sort=False))
    if audit.rows == 0:
        raise _no_rows(path)
    per_user = pd.concat(counts).groupby(level=0, sort=False).sum()
    user_ids = tuple(sorted(str(user) for user in per_user.index))
    audit.finish(user_ids)
    observations = tuple(int(n) for n in per_user.reindex(list(user_ids)).to_numpy())
    log.info("indexed %s: %d rows, %d users", path, audit.rows, len(user_ids))
    return UserIndex(user_ids=user_ids, fingerprint=file_sha256(path), observations=observations)


def _column_chunks(path: Path, data: DataSettings) -> Iterator[pd.DataFrame]:
    """The three configured columns in file order, a chunk at a time, as the full load reads them (typed
    as read_table types them, the timestamps' text aside), each indexed by its rows' positions in the file."""
    wanted = _wanted_columns(data)
    kind = _kind(path)
    try:
        if kind == "csv":
            _require_columns(_header(path, kind, wanted), wanted, path)
            # Timestamps as Python strings: pandas parses those (the audit's check) without first
            # converting an Arrow string array, which halves what the check costs. read_csv numbers a
            # chunk's rows on from the previous chunk: the index is the file position.
            types = _text_columns(data) | {data.time_column: object}
            with pd.read_csv(path, usecols=wanted, dtype=types, chunksize=STREAM_ROWS) as reader:
                yield from reader
            return
        import pyarrow.parquet as pq

        parquet = pq.ParquetFile(path)
        _require_columns(_header(path, kind, wanted), wanted, path)
        first_row = 0
        for batch in parquet.iter_batches(batch_size=STREAM_ROWS, columns=wanted):
            chunk = batch.to_pandas()
            chunk.index = pd.RangeIndex(first_row, first_row + len(chunk))
            first_row += len(chunk)
            yield chunk
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
            _require_columns(_header(path, kind, wanted), wanted, path)
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
    _require_columns(_header(path, "parquet", wanted), wanted, path)
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
        _require_columns(_header(path, kind, wanted), wanted, path)
        if kind == "csv":
            return pd.read_csv(path, usecols=wanted, dtype=_text_columns(data))
        return pd.read_parquet(path, columns=wanted)
    except _READ_ERRORS as exc:
        raise _unreadable(path, exc) from None


_READ_ERRORS = (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, OSError, ValueError)


def _unreadable(path: Path, exc: BaseException) -> DataError:
    if isinstance(exc, UnicodeDecodeError):
        return DataError(
            f"data file {path} is not UTF-8 text: it holds the byte {exc.object[exc.start]:#04x}, which is not valid"
            " UTF-8 (the file was likely saved as Latin-1 or Windows-1252). Save it as UTF-8, for example with:"
            f" iconv -f latin1 -t utf-8 '{path}' > '{path.with_suffix('.utf8.csv')}', then point data.path at the new"
            " file.")
    if isinstance(exc, pd.errors.EmptyDataError) and _blank(path):
        return DataError(f"data file {path} is empty ({path.stat().st_size} bytes, no text): it has no header line"
                         " and no rows. Point data.path at the file with your data (a header line naming its columns,"
                         " then one line per row).")
    return DataError(f"data file {path} cannot be read ({type(exc).__name__}: {exc}); check that it is a valid"
                     " CSV or Parquet file.")


def _blank(path: Path, at_most: int = 4096) -> bool:
    """Whether the file holds nothing but whitespace (an empty file, a lone newline): pandas' "No columns to
    parse" then means the file is empty, which is what to say."""
    try:
        return path.stat().st_size <= at_most and path.read_bytes().strip() == b""
    except OSError:
        return False


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
    text_columns: dict[str, type] = {data.user_column: str, data.time_column: str}
    if data.encoding == "categorical":
        text_columns[data.value_column] = str
    return text_columns


def _header(path: Path, kind: str, wanted: list[str]) -> list[str]:
    """The file's column names as written (pandas renames a repeated name, `value` to `value.1`), a
    DataError when one of `wanted` is named more than once."""
    if kind == "csv":
        first_line = pd.read_csv(path, header=None, nrows=1, dtype=str, keep_default_na=False)
        present = [str(name) for name in first_line.iloc[0]] if len(first_line) else []
    else:
        import pyarrow.parquet as pq

        present = list(pq.read_schema(path).names)
    repeated_columns(path, present, wanted)
    return present


def _require_columns(present: list[str], wanted: list[str], path: Path) -> None:
    missing = [column for column in dict.fromkeys(wanted) if column not in present]
    delimiter = next((mark for mark in (";", "\t", "|") if len(present) == 1 and mark in present[0]), None)
    if missing and delimiter is not None:
        shown = {";": "';'", "\t": "a tab", "|": "'|'"}[delimiter]
        raise DataError(
            f"data file {path} is not comma-separated: its one header field {present[0]!r} holds {shown}, so its"
            f" columns are separated by {shown}. shardrun reads CSV with commas (or Parquet): convert it, for"
            f" example with: python -c \"import pandas as pd; pd.read_csv('{path}', sep='{delimiter}')"
            f".to_csv('{path.with_suffix('.comma.csv')}', index=False)\", then point data.path at the new file."
        )
    if missing:
        raise DataError(
            f"data file {path} has no column {', '.join(repr(c) for c in missing)}; its columns are"
            f" {', '.join(repr(c) for c in present)}. Set data.user_column, data.time_column and"
            " data.value_column in the config to the file's column names."
        )


def _user_ids(column: pd.Series, path: Path, name: str) -> np.ndarray:
    missing = missing_ids(column)
    if missing.any():
        raise DataError(no_user_id(path, name, int(missing.sum()), _file_rows(column, np.flatnonzero(missing))))
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
            f" ({row_list(_file_rows(column, np.flatnonzero(empty)))}); fill in or remove those rows."
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
    def of(parsed: pd.Series) -> _Times:
        """From one parsed column: all without an offset, or all in one zone."""
        if isinstance(parsed.dtype, pd.DatetimeTZDtype):
            nat = np.full(len(parsed), np.datetime64("NaT"), dtype="datetime64[ns]")
            return _Times(np.ones(len(parsed), dtype=bool), nat,
                          _as_ns(parsed.dt.tz_convert("UTC").dt.tz_localize(None)), _as_ns(parsed.dt.tz_localize(None)))
        nat = np.full(len(parsed), np.datetime64("NaT"), dtype="datetime64[ns]")
        return _Times(np.zeros(len(parsed), dtype=bool), _as_ns(parsed), nat, nat)

    @staticmethod
    def of_rows(stamps: list[datetime]) -> _Times:
        """From Python datetimes, some with an offset and some without, or with different offsets."""
        aware = np.array([stamp.tzinfo is not None for stamp in stamps], dtype=bool)
        naive = _as_ns(pd.to_datetime([None if a else s for a, s in zip(aware, stamps)]))  # type: ignore[arg-type]
        utc = _as_ns(pd.to_datetime([s if a else None for a, s in zip(aware, stamps)], utc=True).tz_localize(None))  # type: ignore[arg-type]
        own = _as_ns(pd.to_datetime([s.replace(tzinfo=None) if a else None for a, s in zip(aware, stamps)]))  # type: ignore[arg-type]
        return _Times(aware, naive, utc, own)

    def resolve(self, path: Path, name: str, zone: str | None, file_rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """`file_rows`: each row's position in the file, for the messages."""
        if zone is None:
            if self.aware.any() and not self.aware.all():
                raise DataError(
                    f"data file {path}: column {name!r} mixes timestamps with and without a UTC offset"
                    f" ({row_list(file_rows[np.flatnonzero(~self.aware)])} have none), so their order is unknown; give"
                    " every timestamp an offset or none, or set data.timezone to the zone the ones without an offset"
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
                                     for i in unplaced[:EXAMPLES])
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
    examples = "; ".join(f"row {column.index[i] + 1}: {column.iloc[i]!r}" for i in bad[:EXAMPLES])
    more = f" and {len(bad) - EXAMPLES} more" if len(bad) > EXAMPLES else ""
    raise DataError(unparsed_times(path, name, len(bad), examples + more, time_format))


def _as_ns(times: pd.Series | pd.Index) -> np.ndarray:
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
        examples = "; ".join(f"row {column.index[i] + 1}: {column.iloc[i]!r}" for i in bad[:EXAMPLES])
        raise DataError(not_numbers(path, data.value_column, examples))
    return numbers.to_numpy(dtype=np.float64)


def _missing_values(values: np.ndarray, encoding: str) -> np.ndarray:
    if encoding == "categorical":
        return pd.isna(values)
    return ~np.isfinite(values)


class Resampled(NamedTuple):
    values: np.ndarray
    local_times: np.ndarray
    merged_rows: int  # rows that share their bin with another row (rows minus bins holding a row)
    empty_bins: int  # bins between the first and the last without a row (0 or left out by the aggregate)


def resample(values: np.ndarray, local_times: np.ndarray, step: str, aggregate: str) -> Resampled:
    """Values on a regular grid of `step` on the local clock (see the module docstring for empty bins)."""
    if len(values) == 0:
        return Resampled(values, local_times, 0, 0)
    dtype = object if values.dtype == object else np.float64
    series = pd.Series(values, index=pd.DatetimeIndex(local_times), dtype=dtype).sort_index(kind="stable")
    bins = series.resample(step)
    binned = bins.agg(aggregate)
    sizes = bins.size().to_numpy()
    held = int(np.count_nonzero(sizes > 0))
    binned = binned[binned.notna()]
    if values.dtype == object:
        # Categorical: the aggregate is a label (or a count, whose text is the label).
        out = np.array([str(v) for v in binned.to_numpy()], dtype=object)
    else:
        out = binned.to_numpy(dtype=np.float64)
    return Resampled(out, _as_ns(binned.index), len(values) - held, len(sizes) - held)
