"""A shard's results, exactly once: the group committer (batches of users, each batch file whole or
absent), the resume scan, and errors.jsonl.

A user is committed when a batch file holding its record is published in results/ (storage/batches.py
is the format): written to a fsynced temporary file and put in place by atomic.publish_new, so a crash
at any instant leaves every user committed whole or not at all. Batching is group commit: the users
that end within a second share one file and one fsync, instead of a file, two fsyncs and a link each.

Provenance: every batch carries the sha256 of its records' bytes and the shard's `config_hash`; a
batch edited after its commit, or copied in from a run of another config, is told apart from one
written here. Runs made before batches held one file per user (`u-<hash>.json`); those files are not
read: a shard dir holding one is refused (refuse_older_results), never half-read.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable, Container, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from shardrun.errors import AlreadyCommitted, ResumeMismatch, ShardrunError
from shardrun.storage.atomic import (
    fsync,
    fsync_dir,
    holds,
    json_safe,
    publish_new,
    read_json,
    utc_now,
    write_temp_file,
)
from shardrun.storage.batches import BadBatch, decode_batch, encode_batch, encode_record, readable_user_ids
from shardrun.storage.paths import ShardPaths, batch_number
from shardrun.storage.periodic import Periodic

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CommittedUser:
    user_id: str
    rows: list[dict[str, Any]]
    record: Mapping[str, Any]  # the user's record as stored; `ended_at` (when its analysis ended) for the timeline
    path: Path  # the batch file that holds it
    problem: str | None = None  # why the file cannot be trusted; only with untrusted="keep"
    replaced: tuple[Mapping[str, Any], ...] = ()  # the user's earlier records this one replaced (--retry-failed)

    @property
    def records(self) -> tuple[Mapping[str, Any], ...]:
        """Every committed record of the user, in commit order: the replaced ones, then the standing one."""
        return (*self.replaced, self.record)


def config_problem(file_hash: Any, rows_by_whose: Mapping[str, Sequence[Any]], config_hash: str | None) -> str | None:
    """Why a file of another config's run is not this shard's: its own config hash, or that of any of
    its rows (`rows_by_whose` names each row list for the message), differs from `config_hash`."""
    if config_hash is None:
        return None
    if file_hash is not None and file_hash != config_hash:
        return (f"it was committed under config hash {file_hash!r}, but this shard's is {config_hash!r}: it comes"
                " from another config's run")
    for whose, rows in rows_by_whose.items():
        foreign = {row.get("config_hash") for row in rows if isinstance(row, dict)} - {None, config_hash}
        if foreign:
            return (f"{whose} carry config hash {sorted(map(str, foreign))[0]!r}, but this shard's is"
                    f" {config_hash!r}: it comes from another config's run")
    return None


def shard_config_hash(paths: ShardPaths) -> str | None:
    """The config hash in the shard's shard.json, or None when there is none (yet) or it cannot be read."""
    try:
        identity = read_json(paths.identity)
    except (OSError, ValueError):
        return None
    value = identity.get("config_hash") if isinstance(identity, dict) else None
    return value if isinstance(value, str) else None


class GroupCommitter:
    """Commits a shard's users in batches, each user exactly once (the shard lock makes this the only writer).

    `add` queues a finished user; the queue becomes one batch file, written to a fsynced temporary file
    and published under a new name (atomic.publish_new), so every user of the batch is committed at once
    or none is. A batch is written when `interval_seconds` have passed since the last one: a shard of
    long users commits each user as it ends, a shard of many small users one file (one fsync) a second.
    A crash loses at most the users queued since the last batch; they were never committed, so the
    resume computes them again. `flush` writes the queue now (the drain, the end of the shard).

    A background flusher (start_flusher) writes a queue left waiting behind a long user. The lock is
    taken only by this object; `try_flush` waits for it at most as long as it is told (a signal handler
    on the thread that holds it must not deadlock).
    """

    def __init__(self, paths: ShardPaths, header: Mapping[str, Any], committed: Iterable[str] = (),
                 interval_seconds: float = 1.0, clock: Callable[[], float] = time.monotonic,
                 guard: Callable[[str, Path, Callable[[], Any]], Any] | None = None,
                 on_commit: Callable[[Sequence[str]], None] = lambda user_ids: None):
        self._paths = paths
        self._header = dict(header)
        self._committed = set(committed)
        self._interval = interval_seconds
        self._clock = clock
        self._guard = guard or (lambda what, where, write: write())
        self._on_commit = on_commit  # told the user ids of every batch that landed (status counts)
        self._lock = threading.Lock()
        self._queue: list[tuple[str, bytes]] = []
        self._queued_ids: set[str] = set()
        self._last_batch = clock()
        self._next_number = next_batch_number(paths)
        self._failure: BaseException | None = None  # a background flush that failed, raised by the next call
        self._flusher: Periodic | None = None

    @property
    def queued(self) -> int:
        return len(self._queue)

    def add(self, user_id: str, rows: Sequence[Mapping[str, Any]], replaces: bool = False,
            attempt: Mapping[str, Any] | None = None) -> None:
        """Queue a finished user's rows (and the attempt that made them: storage/attempts.py)."""
        with self._lock:
            self._raise_failure()
            if not replaces and (user_id in self._committed or user_id in self._queued_ids):
                raise AlreadyCommitted(f"user {user_id!r} is committed already in {self._paths.results};"
                                       " a user is committed once.")
            ended_at = datetime.now(UTC).isoformat(timespec="milliseconds")
            self._queue.append((user_id, encode_record(user_id, rows, ended_at, replaces, attempt)))
            self._queued_ids.add(user_id)

    def flush_if_due(self) -> Path | None:
        with self._lock:
            self._raise_failure()
            return self._write_queue() if self._due() else None

    def flush(self) -> Path | None:
        with self._lock:
            self._raise_failure()
            return self._write_queue() if self._queue else None

    def try_flush(self, wait_seconds: float = 0.0) -> bool:
        """Write the queue if the lock comes free within `wait_seconds`; False if not, or if the write failed
        (logged: the caller is leaving, and the queued users are recomputed by the next run)."""
        if not self._lock.acquire(timeout=wait_seconds):
            log.error("could not commit the %d users queued: a commit was in progress", len(self._queue))
            return False
        try:
            if self._queue:
                self._raise_failure()
                self._write_queue()
            return True
        except Exception as exc:
            log.error("could not commit the %d users queued (they will be computed again): %s", len(self._queue), exc)
            return False
        finally:
            self._lock.release()

    def _due(self) -> bool:
        return bool(self._queue) and self._clock() - self._last_batch >= self._interval

    def _raise_failure(self) -> None:
        if self._failure is not None:
            raise self._failure

    def _write_queue(self) -> Path:
        users = [user_id for user_id, _ in self._queue]
        header = {**self._header, "committed_at": datetime.now(UTC).isoformat(timespec="milliseconds")}
        payload = encode_batch(header, [line for _, line in self._queue])
        target = self._paths.batch(self._next_number)
        what = (f"the result of user {users[0]!r}" if len(users) == 1
                else f"the results of {len(users)} users ({target.name})")
        results = self._paths.results
        # Three steps, each given to the guard alone so that a retry repeats only that step: the batch
        # written to a new fsynced temporary file (a retry writes another), published at its name (a
        # retry first looks whether the earlier attempt landed), and the dir fsynced (never retried).
        tmp = self._guard(what, results, lambda: write_temp_file(self._paths.tmp, payload))
        try:
            self._guard(what, results, lambda: publish_once(tmp, target, payload))
        finally:
            tmp.unlink(missing_ok=True)
        # Published: these users are committed now, whatever happens to the dir's fsync, so that no later
        # flush (the drain, the shard's end) writes them a second time.
        self._committed.update(users)
        self._queue.clear()
        self._queued_ids.clear()
        self._next_number += 1
        self._last_batch = self._clock()
        self._on_commit(users)
        self._guard(f"{what}, put in place,", results, lambda: fsync_dir(results))
        return target

    def start_flusher(self) -> None:
        if self._interval <= 0:
            return  # every user is committed as it ends (flush_if_due): nothing is ever left waiting
        self._flusher = Periodic("group-commit", self._interval, self._flush_in_background)
        self._flusher.start()

    def _flush_in_background(self) -> bool:
        with self._lock:
            if self._failure is not None:
                return False
            try:
                if self._due():
                    self._write_queue()
            except BaseException as exc:  # raised in the shard loop at its next commit
                self._failure = exc
                return False
        return True

    def stop_flusher(self) -> None:
        if self._flusher is not None:
            self._flusher.stop()


def publish_once(tmp: Path, target: Path, payload: bytes) -> None:
    """Put the fsynced batch file `tmp` (whose bytes are `payload`) at `target`, a name that must be new;
    safe to repeat: an attempt whose answer was lost (an EIO or a timeout from a file server after the
    link was made) has landed when `target` holds exactly `payload`, and then nothing is done again.
    A different file at `target` is AlreadyCommitted: batch names are never reused."""
    if holds(target, payload):
        return
    try:
        # a hard link, or on a filesystem without them a rename that cannot replace: the shard lock makes
        # this process the only writer of results/ (atomic.publish_new)
        publish_new(tmp, target)
    except FileExistsError:
        if holds(target, payload):
            return
        raise AlreadyCommitted(f"{target} exists already; batch names are never reused.") from None


def next_batch_number(paths: ShardPaths) -> int:
    """One past the highest batch number ever used here, quarantined batches included: a number is never
    given to a second batch, so a name in a log or a report always means one file."""
    set_aside = [Path(path.name.rsplit(".", 1)[0]) for path in paths.quarantine.glob("b-*")]
    numbers = [batch_number(path) for path in [*paths.batch_files(), *set_aside]]
    return max((n for n in numbers if n is not None), default=0) + 1


OLDER_RESULTS = "u-*.json"  # one file per user: how runs made before batch files committed (not read)


def refuse_older_results(paths: ShardPaths, error: type[ShardrunError] = ResumeMismatch) -> None:
    """Raise `error` when the shard dir holds result files of a run made before batch files: resumed or
    merged, their users would be computed again or missing without a word."""
    older = min(paths.results.glob(OLDER_RESULTS), default=None) if paths.results.is_dir() else None
    if older is not None:
        raise error(
            f"{paths.dir} holds result files of a run made before batch files ({older.name}, for one),"
            " which this shardrun does not read. Start the run again in a new dir (--out NEW_DIR), or resume"
            " and merge it with the shardrun version that made it."
        )


def scan_committed(paths: ShardPaths, untrusted: str = "quarantine") -> dict[str, CommittedUser]:
    """Every user committed in this shard dir, by user id, from its batch files (refuse_older_results
    first).

    A file that cannot be read as what commits write (torn, truncated, edited, another config's)
    cannot be trusted. With `untrusted="quarantine"`
    (the resume scan, under the shard lock) it is moved aside byte for byte to results/quarantine/
    with a warning that says why, and its users count as not committed, so the resume recomputes them
    (the analysis is deterministic: the same numbers). With `untrusted="keep"` (merge, and readers of a
    live shard) it is left in place and its users are returned with `problem` set, for the caller to
    report.

    A second record of a user replaces the first only when it says so (--retry-failed); otherwise the
    first stands and the duplicate is logged.
    """
    if untrusted not in ("quarantine", "keep"):
        raise ValueError(f"untrusted must be 'quarantine' or 'keep', not {untrusted!r}")
    committed: dict[str, CommittedUser] = {}
    if not paths.results.is_dir():
        return committed
    refuse_older_results(paths)
    config_hash = shard_config_hash(paths)

    def set_aside(path: Path, user_ids: Sequence[str], problem: str) -> None:
        if untrusted == "quarantine":
            _quarantine(paths, path, problem)
            return
        for user_id in user_ids:
            committed.setdefault(user_id, CommittedUser(user_id, [], {}, path, problem=problem))

    for path in paths.batch_files():
        _scan_batch_file(path, config_hash, committed, set_aside)
    return committed


def _scan_batch_file(path: Path, config_hash: str | None, committed: dict[str, CommittedUser],
                     set_aside: Callable[[Path, Sequence[str], str], None]) -> None:
    try:
        payload = path.read_bytes()
        batch = decode_batch(payload)
    except OSError as exc:
        set_aside(path, [], f"it is unreadable ({exc})")
        return
    except BadBatch as exc:
        set_aside(path, readable_user_ids(payload), str(exc))
        return
    user_ids = [record["user_id"] for record in batch.records]
    problem = config_problem(batch.header.get("config_hash"),
                             {f"the rows of user {r['user_id']!r}": r["rows"] for r in batch.records}, config_hash)
    if problem is not None:
        set_aside(path, user_ids, problem)
        return
    repeated = [user_id for user_id, record in zip(user_ids, batch.records)
                if not stands(user_id, record.get("replaces", False), committed)]
    if repeated and len(repeated) == len(user_ids):
        earlier = committed[repeated[0]].path.name
        set_aside(path, [], f"every user in it is committed already (a copy of {earlier}?), and it replaces none")
        return
    for user_id in repeated:
        log.warning("user %r has a second record in %s that does not replace the first (in %s); the first"
                    " stands", user_id, path, committed[user_id].path)
    for record in batch.records:
        if record["user_id"] not in repeated:
            before = committed.get(record["user_id"])
            replaced = () if before is None or before.problem is not None else before.records
            committed[record["user_id"]] = CommittedUser(record["user_id"], record["rows"], record, path,
                                                         replaced=replaced)


def stands(user_id: str, replaces: bool, earlier: Container[str]) -> bool:
    """Whether a user's record stands: the first of that user, or a later one that replaces the earlier
    (--retry-failed). A later record that does not say so is a duplicate; the first one stands."""
    return user_id not in earlier or bool(replaces)


def results_listing(paths: ShardPaths) -> frozenset[tuple[str, int, int]]:
    """(name, size, mtime in ns) of every result file: what a second look compares with the first to
    know whether a scan still holds, without reading any file again."""
    if not paths.results.is_dir():
        return frozenset()
    listing = set()
    for path in paths.batch_files():
        try:
            stat = path.stat()
        except FileNotFoundError:  # moved aside between the listing and the stat
            continue
        listing.add((path.name, stat.st_size, stat.st_mtime_ns))
    return frozenset(listing)


def _quarantine(paths: ShardPaths, path: Path, why: str) -> None:
    paths.quarantine.mkdir(exist_ok=True)
    target = paths.quarantine / f"{path.name}.{datetime.now():%Y%m%d%H%M%S%f}"
    os.replace(path, target)
    log.warning("result file %s cannot be trusted: %s; moved to %s and its users will be recomputed", path, why,
                target)


def clean_tmp(paths: ShardPaths) -> int:
    """Remove scratch files of a previous process (never visible results)."""
    removed = 0
    if paths.tmp.is_dir():
        for leftover in paths.tmp.iterdir():
            leftover.unlink(missing_ok=True)
            removed += 1
    for leftover in paths.dir.glob(".*.tmp"):
        leftover.unlink(missing_ok=True)
        removed += 1
    return removed


def append_error(paths: ShardPaths, record: Mapping[str, Any]) -> None:
    """One line per failed attempt; flushed and fsynced so a crash right after keeps it."""
    append_line_once(paths.errors, error_line(record))


def error_line(record: Mapping[str, Any]) -> bytes:
    """errors.jsonl's line for a failed attempt, stamped with the time now (so that no two lines are alike)."""
    return (json.dumps(json_safe({"time": utc_now(), **record}), allow_nan=False) + "\n").encode()


def append_line_once(path: Path, line: bytes) -> None:
    """Append `line` to `path` and fsync it; safe to repeat (durability.durable_write): an earlier attempt
    whose write landed before it failed left the line at the file's end, and it is not appended again."""
    with open(path, "a+b") as handle:
        end = handle.seek(0, os.SEEK_END)
        if end >= len(line):
            handle.seek(end - len(line))
            if handle.read(len(line)) == line:
                fsync(handle.fileno(), path)
                return
        handle.write(line)
        handle.flush()
        fsync(handle.fileno(), path)


def read_errors(paths: ShardPaths) -> list[dict[str, Any]]:
    if not paths.errors.is_file():
        return []
    records = []
    for line in paths.errors.read_text(encoding="utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a line torn by a crash mid-append carries no information worth failing for
    return records
