"""The input's cells checked over the whole file before any user is analysed, and the refusals' words.

Every shard, and the launcher before it starts any, first reads the user index (data.user_index). That
pass reads the user id, timestamp and value columns chunk by chunk and gives every chunk to an
InputAudit, so that whatever would stop the analysis or silently change it is refused at start (exit
2), the same way in every shard, whichever rows each then loads. A full load (data.load without users)
audits its whole table alike, so both routes refuse with the same words. Refused always:
- a column the config names (user, timestamp or value column) that the header names twice (pandas
  would read the first and rename the second `value.1`): which one is meant is unknown;
- a row without a user id (missing or empty);
- a timestamp that does not parse (as ISO 8601, or as data.time_format when set);
- a value that is not a number, with quantile encoding;
- a value column without one usable value (every cell missing or not finite): nothing to analyse;
  with data.missing: drop, also a table without one row that keeps a user, a timestamp and a value;
- user ids that differ only by whitespace around them (" u002" and "u002"): one user or two is
  unknown. An id with whitespace around it and no such twin is kept as written.
Refused unless data.missing is drop: rows with a missing value (empty cell, NaN), an infinite value
(inf, -inf) or a missing timestamp. With drop they are left out and counted in each user's rows
(cleaning.py).

A row is named by its place among the data rows: row 1 is the first row after the header (line 2 of
a CSV).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from shardrun.errors import DataError
from shardrun.infodynamics.settings import DataSettings

EXAMPLES = 5  # rows, users or cells quoted in a message


@dataclass
class _Rows:
    """The rows with one problem: how many, the first few (positions in the file, with their cell when
    quoted) and the users they belong to, in the order first met."""

    count: int = 0
    first: list[int] = field(default_factory=list)
    cells: list[str] = field(default_factory=list)
    users: dict[str, None] = field(default_factory=dict)

    def add(self, mask: np.ndarray, positions: np.ndarray, ids: pd.Series | None = None,
            quoted: pd.Series | None = None) -> None:
        hits = np.flatnonzero(mask)
        if not len(hits):
            return
        self.count += len(hits)
        shown = hits[:max(EXAMPLES - len(self.first), 0)]
        self.first.extend(positions[shown].tolist())
        if quoted is not None:
            self.cells.extend(repr(quoted.iloc[i]) for i in shown)
        if ids is not None:
            owners = ids.iloc[hits]
            self.users.update(dict.fromkeys(owners[owners.notna()].astype(str).unique().tolist()))

    def examples(self) -> str:
        """'row 3: 'x'; row 9: 'y' and 4 more' (quoted cells)."""
        shown = "; ".join(f"row {row + 1}: {cell}" for row, cell in zip(self.first, self.cells))
        return shown + (f" and {self.count - EXAMPLES} more" if self.count > EXAMPLES else "")


class InputAudit:
    """Chunks of the three configured columns in, as the load reads them (indexed by each row's position
    in the file); `finish` raises one DataError naming every problem (the module docstring's rules).

    `whole_file` False audits some rows only (a shard's share): the checks of the whole table (an empty
    value column, whitespace twins) are then left to the user index, which saw every row.
    `parse_times` False leaves unparseable timestamps to the load, which parses them anyway."""

    def __init__(self, path: Path, data: DataSettings, *, whole_file: bool = True, parse_times: bool = True):
        self.path, self.data = path, data
        self.whole_file, self.parse_times = whole_file, parse_times
        self.rows = 0
        self.usable_values = 0  # rows whose value is a finite number (a label, categorical)
        self.usable_rows = 0  # rows with a user id, a timestamp and a usable value
        self.no_id, self.bad_time, self.not_number = _Rows(), _Rows(), _Rows()
        self.missing_value, self.infinite_value, self.missing_time = _Rows(), _Rows(), _Rows()
        self.dropped = _Rows()  # rows with any of the three above

    def add(self, chunk: pd.DataFrame) -> np.ndarray:
        """Audit one chunk; returns which of its rows have a user id."""
        data = self.data
        positions = chunk.index.to_numpy()
        ids, times, values = chunk[data.user_column], chunk[data.time_column], chunk[data.value_column]
        no_id = missing_ids(ids)
        missing_time = times.isna().to_numpy()
        bad_time = np.zeros(len(chunk), dtype=bool)
        if self.parse_times and _is_text(times):
            parsed = pd.to_datetime(times, format=data.time_format or "ISO8601", errors="coerce", utc=True)
            bad_time = parsed.isna().to_numpy() & ~missing_time
        missing_value = values.isna().to_numpy()
        infinite = np.zeros(len(chunk), dtype=bool)
        not_number = np.zeros(len(chunk), dtype=bool)
        if data.encoding != "categorical":
            numbers = pd.to_numeric(values, errors="coerce").to_numpy(dtype=np.float64)
            infinite = np.isinf(numbers)
            not_number = np.isnan(numbers) & ~missing_value
        usable_value = ~(missing_value | infinite | not_number)
        # A row without a user id is refused whatever else it lacks; the others are counted per cause.
        missing_value, infinite, missing_time = missing_value & ~no_id, infinite & ~no_id, missing_time & ~no_id
        dropped = missing_value | infinite | missing_time
        self.rows += len(chunk)
        self.usable_values += int(np.count_nonzero(usable_value))
        self.usable_rows += int(np.count_nonzero(usable_value & ~no_id & ~missing_time & ~bad_time))
        self.no_id.add(no_id, positions)
        self.bad_time.add(bad_time, positions, quoted=times)
        self.not_number.add(not_number, positions, quoted=values)
        self.missing_value.add(missing_value, positions)
        self.infinite_value.add(infinite, positions)
        self.missing_time.add(missing_time, positions)
        self.dropped.add(dropped, positions, ids=ids)
        return ~no_id

    def problems(self, user_ids: Iterable[str]) -> list[str]:
        """Each problem found, one paragraph each (the problem and the fix); [] when there is none."""
        data, path = self.data, self.path
        found = []
        if self.no_id.count:
            found.append(no_user_id(path, data.user_column, self.no_id.count, np.asarray(self.no_id.first)))
        if self.bad_time.count:
            found.append(unparsed_times(path, data.time_column, self.bad_time.count, self.bad_time.examples(),
                                        data.time_format))
        if self.not_number.count:
            found.append(not_numbers(path, data.value_column, self.not_number.examples()))
        if self.whole_file and self.rows and not self.usable_values:
            found.append(
                f"data file {path}: column {data.value_column!r} has no usable value in any of its {self.rows:,}"
                " rows (every one is missing or not finite), so there is nothing to analyse; check that"
                " data.value_column names the column that holds the observations, or fill the column in."
            )
        elif self.whole_file and self.rows and not self.usable_rows and not found:
            found.append(
                f"data file {path}: none of its {self.rows:,} rows has a user id, a timestamp and a usable value,"
                " so data.missing: drop would leave nothing to analyse; fill in the data."
            )
        elif self.dropped.count and data.missing == "refuse":
            found.append(self._missing_cells())
        if self.whole_file:
            twins = whitespace_twins(user_ids)
            if twins:
                found.append(_twins_message(path, data.user_column, twins))
        return found

    def finish(self, user_ids: Iterable[str]) -> None:
        found = self.problems(user_ids)
        if found:
            raise DataError("\n".join(found))

    def _missing_cells(self) -> str:
        data, dropped = self.data, self.dropped
        what = [f"{rows.count:,} {kind}{'' if rows.count == 1 else 's'} in column {column!r}"
                for rows, kind, column in ((self.missing_value, "missing value", data.value_column),
                                           (self.infinite_value, "infinite value", data.value_column),
                                           (self.missing_time, "missing timestamp", data.time_column))
                if rows.count]
        users = list(dropped.users)
        named = ", ".join(users[:EXAMPLES]) + (f" and {len(users) - EXAMPLES:,} more" if len(users) > EXAMPLES else "")
        return (
            f"data file {self.path}: {dropped.count:,} rows cannot be analysed as they are ({', '.join(what)}):"
            f" {row_list(np.asarray(dropped.first), dropped.count)} (row 1 is the first row after the header),"
            f" of {_count(len(users), 'user')} ({named}). Left out, they would join each user's series across"
            " the gap, which changes AIS, so they are refused. Fix the data (fill in or remove those rows), or"
            " set data.missing: drop to leave them out: each user's result rows then say how many were dropped"
            " and why (the columns n_dropped and dropped_reason)."
        )


def _count(n: int, noun: str) -> str:
    return f"{n:,} {noun}{'' if n == 1 else 's'}"


def _is_text(column: pd.Series) -> bool:
    """Timestamps as text (a CSV's, or a Parquet string column); a datetime column needs no parsing, and
    a numeric one is refused by the load (data.parse_timestamps) in every shard alike."""
    return not (pd.api.types.is_numeric_dtype(column) or pd.api.types.is_datetime64_any_dtype(column))


def missing_ids(column: pd.Series) -> np.ndarray:
    # An empty id counts as missing: a CSV cannot tell "" from no value (it reads both as missing,
    # here and in the merged results.csv), so a Parquet file must not make "" a user either.
    return (column.isna() | (column.astype(str) == "")).to_numpy()


def whitespace_twins(user_ids: Iterable[str]) -> list[list[str]]:
    """Groups of (distinct) ids that are equal once the whitespace around them is stripped, each group
    sorted, the groups in the order of their stripped id; an id without a twin is not listed."""
    groups: dict[str, list[str]] = {}
    for user in user_ids:
        groups.setdefault(user.strip(), []).append(user)
    return [sorted(group) for _, group in sorted(groups.items()) if len(group) > 1]


def _twins_message(path: Path, column: str, twins: Sequence[Sequence[str]]) -> str:
    shown = "; ".join(" and ".join(repr(user) for user in group) for group in twins[:EXAMPLES])
    more = f" and {len(twins) - EXAMPLES:,} more" if len(twins) > EXAMPLES else ""
    return (
        f"data file {path}: column {column!r} has user ids that differ only by whitespace around them ({shown}{more}),"
        " which would be analysed as different users; whether they are one user is unknown. Strip the"
        " whitespace from those ids in the data (or give different users ids that differ otherwise)."
    )


def repeated_columns(path: Path, present: Sequence[str], wanted: Sequence[str]) -> None:
    """Refuse a header that names a configured column more than once (`present`: the names as written)."""
    repeated = [name for name in dict.fromkeys(wanted) if list(present).count(name) > 1]
    if repeated:
        where = "; ".join(f"{name!r} at columns {', '.join(str(i + 1) for i, n in enumerate(present) if n == name)}"
                          for name in repeated)
        raise DataError(
            f"data file {path}: its header names a column the config reads more than once ({where}), so which one"
            " holds the data is unknown (pandas would read the first and rename the others). Rename or remove"
            " the extra columns in the file, or point data.user_column, data.time_column and data.value_column"
            " at columns named once."
        )


def no_user_id(path: Path, name: str, count: int, first_rows: np.ndarray) -> str:
    return (f"data file {path}: {count} rows have no user id (missing or empty) in column {name!r}"
            f" ({row_list(first_rows, count)}); fill in or remove those rows.")


def unparsed_times(path: Path, name: str, count: int, examples: str, time_format: str | None) -> str:
    if time_format:
        return (f"data file {path}: column {name!r} has {count} timestamps that do not match data.time_format"
                f" {time_format!r} ({examples}); fix those rows, or set data.time_format to the format the"
                " column is written in.")
    return (
        f"data file {path}: column {name!r} has {count} timestamps that are not ISO 8601 ({examples})."
        " Dates such as 11/01/2025 are never guessed (11 January or 1 November?): write ISO 8601 such as"
        " 2025-01-31T13:00:00 or 2025-01-31T13:00:00+01:00, or set data.time_format to the column's format,"
        ' such as "%d/%m/%Y %H:%M" (day first) or "%m/%d/%Y %H:%M" (month first).'
    )


def not_numbers(path: Path, name: str, examples: str) -> str:
    return (f"data file {path}: column {name!r} holds values that are not numbers ({examples}); quantile"
            " encoding needs numbers. Fix the column, or set data.encoding: categorical to treat the values"
            " as labels.")


def row_list(rows: np.ndarray, count: int | None = None) -> str:
    """'rows 1, 4 and 7 more': the first positions (0-based in the file) of `count` rows (default all of `rows`)."""
    count = len(rows) if count is None else count
    shown = ", ".join(str(int(i) + 1) for i in rows[:EXAMPLES])
    more = f" and {count - EXAMPLES} more" if count > EXAMPLES else ""
    return f"rows {shown}{more}"
