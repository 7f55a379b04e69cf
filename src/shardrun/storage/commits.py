"""A shard's results, exactly once: the batch file, the group committer, the resume scan, errors.jsonl.

Each batch file holds several users' records under one checksum of their raw bytes and is published
whole or not at all, so a crash leaves every user committed or not; users ending within a second share
one file and one fsync. A batch is trusted or set aside whole. Format: docs/FORMATS.md ("Batch files").
An attempt whose commit a crash lost leaves no record, so the next takes its number.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import time
from collections import Counter
from collections.abc import Callable, Container, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, NotRequired, TypedDict

from shardrun.errors import AlreadyCommitted, ResumeMismatch, ShardrunError
from shardrun.storage.atomic import fsync, fsync_dir, holds, json_safe, publish_new, read_json, utc_now, write_temp_file
from shardrun.storage.paths import ShardPaths, batch_number
from shardrun.storage.periodic import Periodic

log = logging.getLogger(__name__)


# --- attempts ---

ATTEMPT = "attempt"  # the key of the attempt record in a batch record and in an errors.jsonl line


def attempt_of(record: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The attempt record inside a batch record or an errors.jsonl line; None in older ones."""
    attempt = record.get(ATTEMPT)
    return attempt if isinstance(attempt, Mapping) else None


def recorded_attempts(errors: Iterable[Mapping[str, Any]],
                      committed: Mapping[str, Sequence[Mapping[str, Any]]]) -> dict[str, int]:
    """How many attempts at each user a shard dir records, from errors.jsonl lines and committed records.

    The highest of the three counts, since each alone misses some attempts."""
    numbers: dict[str, int] = {}
    error_lines: Counter[str] = Counter()
    for line in errors:
        user_id = line.get("user_id")
        if isinstance(user_id, str):
            error_lines[user_id] += 1
            numbers[user_id] = max(numbers.get(user_id, 0), _number(attempt_of(line)))
    for user_id, records in committed.items():
        numbers[user_id] = max([numbers.get(user_id, 0), len(records),
                                *(_number(attempt_of(record)) for record in records)])
    return {user_id: max(count, error_lines[user_id]) for user_id, count in numbers.items()}


def _number(attempt: Mapping[str, Any] | None) -> int:
    number = attempt.get("number") if attempt is not None else None
    return number if isinstance(number, int) and not isinstance(number, bool) and number > 0 else 0


# --- the batch file ---

BATCH_FORMAT = 3


class BadBatch(ValueError):
    """The bytes are not a whole, unchanged batch file (torn, truncated, edited or not a batch)."""


ATTEMPT_FIELDS = "`number`, and `host` to `cpu_seconds` as trace.tsv's columns"


class BatchHeader(TypedDict):
    """A batch file's first line."""

    format: Annotated[int, "3"]
    users: Annotated[int, "the records that follow"]
    records_sha256: Annotated[str, "sha256 of the exact bytes after the header line"]
    config_hash: Annotated[str, "as in run.json"]
    shard: Annotated[str, "`\"i/K\"`"]
    host: Annotated[str, "the machine that committed it"]
    committed_at: Annotated[str, "when (milliseconds)"]


class BatchRecord(TypedDict):
    """A batch file's line for one user."""

    user_id: Annotated[str, "the user"]
    ended_at: Annotated[str, "when its analysis ended (milliseconds)"]
    replaces: NotRequired[Annotated[bool, "true when `--retry-failed` ran the user again: its record takes the place"
                                          " of the earlier failed one (without it a second record of a user is a"
                                          " duplicate and the first stands)"]]
    attempt: NotRequired[Annotated[dict[str, Any], f"the attempt that made the rows ({ATTEMPT_FIELDS})"]]
    rows: Annotated[list[dict[str, Any]], "the user's result rows, NaN written as null"]


@dataclass(frozen=True)
class Batch:
    header: Mapping[str, Any]
    records: Sequence[Mapping[str, Any]]


# json.dumps with these options builds an encoder per call: a quarter of the cost of a small user's record
_COMPACT = json.JSONEncoder(separators=(",", ":"), allow_nan=False)


def encode_record(user_id: str, rows: Sequence[Mapping[str, Any]], ended_at: str, replaces: bool = False,
                  attempt: Mapping[str, Any] | None = None) -> bytes:
    """One user's line: NaN as null (JSON has none), compact, ASCII (any id survives any reader)."""
    record: dict[str, Any] = {"user_id": user_id, "ended_at": ended_at}
    if replaces:
        record["replaces"] = True
    if attempt is not None:
        record[ATTEMPT] = dict(attempt)
    record["rows"] = list(rows)
    try:
        text = _COMPACT.encode(record)
    except ValueError:  # a NaN or an infinity somewhere: only then is every value looked at
        text = _COMPACT.encode(json_safe(record))
    return text.encode("ascii") + b"\n"


def encode_batch(header: Mapping[str, Any], record_lines: Sequence[bytes]) -> bytes:
    body = b"".join(record_lines)
    full_header = {"format": BATCH_FORMAT, "users": len(record_lines),
                   "records_sha256": hashlib.sha256(body).hexdigest(), **header}
    return _COMPACT.encode(full_header).encode("ascii") + b"\n" + body


def verified_body(payload: bytes) -> tuple[dict[str, Any], memoryview]:
    """A batch's header and its checksum-verified record bytes (unparsed), or BadBatch.

    The records are a view, not a copy: a merge reads hundreds of megabytes of them."""
    end_of_head = payload.find(b"\n")
    if end_of_head < 0:
        raise BadBatch("it has no header line (empty or cut off)")
    head, body = payload[:end_of_head], memoryview(payload)[end_of_head + 1:]
    try:
        header = json.loads(head)
    except ValueError as exc:
        raise BadBatch(f"its header is not JSON ({exc})") from None
    if not isinstance(header, dict) or header.get("format") != BATCH_FORMAT:
        raise BadBatch(f"its header is not a format-{BATCH_FORMAT} batch header")
    if hashlib.sha256(body).hexdigest() != header.get("records_sha256"):
        raise BadBatch("its records do not match the checksum written when it was committed (records_sha256):"
                       " it was cut short or edited after the commit")
    return header, body


def decode_batch(payload: bytes) -> Batch:
    """The header and records of a batch file's bytes, or BadBatch saying what is wrong with them."""
    header, body = verified_body(payload)
    lines = bytes(body).splitlines()
    if len(lines) != header.get("users"):
        raise BadBatch(f"it holds {len(lines)} records but its header says {header.get('users')}")
    records = []
    for number, line in enumerate(lines, start=2):
        try:
            record = json.loads(line)
        except ValueError as exc:
            raise BadBatch(f"line {number} is not JSON ({exc})") from None
        if not (isinstance(record, dict) and isinstance(record.get("user_id"), str)
                and isinstance(record.get("rows"), list)):
            raise BadBatch(f"line {number} is not a user's record (user_id and rows)")
        records.append(record)
    return Batch(header=header, records=records)


def readable_user_ids(payload: bytes) -> list[str]:
    """The user ids still readable in a bad batch, to name whose results it held."""
    user_ids = []
    for line in payload.split(b"\n")[1:]:
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and isinstance(record.get("user_id"), str):
            user_ids.append(record["user_id"])
    return user_ids


# --- committing and reading back ---


@dataclass(frozen=True)
class CommittedUser:
    user_id: str
    rows: list[dict[str, Any]]
    record: Mapping[str, Any]  # the user's record as stored; `ended_at` (when its analysis ended) for the timeline
    path: Path  # the batch file that holds it
    replaced: tuple[Mapping[str, Any], ...] = ()  # the user's earlier records this one replaced (--retry-failed)

    @property
    def records(self) -> tuple[Mapping[str, Any], ...]:
        """Every committed record of the user, the replaced ones first."""
        return (*self.replaced, self.record)


def config_problem(file_hash: Any, rows_by_whose: Mapping[str, Sequence[Any]], config_hash: str | None) -> str | None:
    """Why a file comes from another config's run (its or a row's config hash differs), or None."""
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
    """The config hash in shard.json, or None when absent or unreadable."""
    try:
        identity = read_json(paths.identity)
    except (OSError, ValueError):
        return None
    value = identity.get("config_hash") if isinstance(identity, dict) else None
    return value if isinstance(value, str) else None


class GroupCommitter:
    """Commits a shard's users in batches every `interval_seconds`, each user exactly once.

    A crash loses only users queued since the last batch (the resume recomputes them); `try_flush`
    waits bounded so a signal handler on the lock's thread cannot deadlock.
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
        """Queue a finished user's rows (and the attempt that made them)."""
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
        """Write the queue if the lock frees within `wait_seconds`; False (logged) if not or if it failed."""
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
        # write, publish, fsync the dir: each guarded alone so a retry repeats only that step
        tmp = self._guard(what, results, lambda: write_temp_file(self._paths.tmp, payload))
        try:
            self._guard(what, results, lambda: publish_once(tmp, target, payload))
        finally:
            tmp.unlink(missing_ok=True)
        # committed now, whatever the dir's fsync does: no later flush may write them again
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
    """Publish `tmp` at the new name `target`; safe to repeat after a lost answer (EIO, timeout).

    A different file already at `target` is AlreadyCommitted: batch names are never reused."""
    if holds(target, payload):
        return
    try:
        # safe without hard links too: the shard lock makes this the only writer (atomic.publish_new)
        publish_new(tmp, target)
    except FileExistsError:
        if not holds(target, payload):
            raise AlreadyCommitted(f"{target} exists already; batch names are never reused.") from None


def next_batch_number(paths: ShardPaths) -> int:
    """One past the highest batch number used, quarantined included: a name always means one file."""
    set_aside = [Path(path.name.rsplit(".", 1)[0]) for path in paths.quarantine.glob("b-*")]
    numbers = [batch_number(path) for path in [*paths.batch_files(), *set_aside]]
    return max((n for n in numbers if n is not None), default=0) + 1


OLDER_RESULTS = "u-*.json"  # one file per user: how runs made before batch files committed (not read)


def refuse_older_results(paths: ShardPaths, error: type[ShardrunError] = ResumeMismatch) -> None:
    """Raise `error` if pre-batch result files are here: they would otherwise be silently ignored."""
    older = min(paths.results.glob(OLDER_RESULTS), default=None)
    if older is not None:
        raise error(
            f"{paths.dir} holds result files of a run made before batch files ({older.name}, for one),"
            " which this shardrun does not read. Start the run again in a new dir (--out NEW_DIR), or resume"
            " and merge it with the shardrun version that made it."
        )


def scan_committed(paths: ShardPaths) -> dict[str, CommittedUser]:
    """Every user committed in this shard dir, by user id, from its batch files (under the shard lock).

    An untrusted file is moved to results/quarantine/; merge reads through results/read.py instead.
    """
    committed: dict[str, CommittedUser] = {}
    refuse_older_results(paths)
    config_hash = shard_config_hash(paths)
    for path in paths.batch_files():
        problem = _scan_batch_file(path, config_hash, committed)
        if problem is not None:
            paths.quarantine.mkdir(exist_ok=True)
            target = paths.quarantine / f"{path.name}.{datetime.now():%Y%m%d%H%M%S%f}"
            os.replace(path, target)
            log.warning("result file %s cannot be trusted: %s; moved to %s and its users will be recomputed", path,
                        problem, target)
    return committed


def _scan_batch_file(path: Path, config_hash: str | None, committed: dict[str, CommittedUser]) -> str | None:
    """Add the users of one batch file to `committed`, or say why the file cannot be trusted."""
    try:
        batch = decode_batch(path.read_bytes())
    except OSError as exc:
        return f"it is unreadable ({exc})"
    except BadBatch as exc:
        return str(exc)
    user_ids = [record["user_id"] for record in batch.records]
    problem = config_problem(batch.header.get("config_hash"),
                             {f"the rows of user {r['user_id']!r}": r["rows"] for r in batch.records}, config_hash)
    if problem is not None:
        return problem
    repeated = [user_id for user_id, record in zip(user_ids, batch.records)
                if not stands(user_id, record.get("replaces", False), committed)]
    if repeated and len(repeated) == len(user_ids):
        earlier = committed[repeated[0]].path.name
        return f"every user in it is committed already (a copy of {earlier}?), and it replaces none"
    for user_id in repeated:
        log.warning("user %r has a second record in %s that does not replace the first (in %s); the first"
                    " stands", user_id, path, committed[user_id].path)
    for record in batch.records:
        if record["user_id"] not in repeated:
            before = committed.get(record["user_id"])
            replaced = () if before is None else before.records
            committed[record["user_id"]] = CommittedUser(record["user_id"], record["rows"], record, path,
                                                         replaced=replaced)
    return None


def stands(user_id: str, replaces: bool, earlier: Container[str]) -> bool:
    """Whether a record stands: the user's first, or a later one that says it replaces (--retry-failed)."""
    return user_id not in earlier or bool(replaces)


def results_listing(paths: ShardPaths) -> frozenset[tuple[str, int, int]]:
    """(name, size, mtime ns) of every result file, to tell cheaply whether a scan still holds."""
    listing = set()
    for path in paths.batch_files():
        try:
            stat = path.stat()
        except FileNotFoundError:  # moved aside between the listing and the stat
            continue
        listing.add((path.name, stat.st_size, stat.st_mtime_ns))
    return frozenset(listing)


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


class ErrorLine(TypedDict):
    """errors.jsonl's line (built by shard/attempts.py error_record)."""

    time: Annotated[str, "when it was written"]
    user_id: Annotated[str, "the user"]
    shard: Annotated[str, "`\"i/K\"`"]
    error_type: Annotated[str, "the Python class of the error"]
    message: Annotated[str, "its message"]
    java_class: Annotated[str | None, "the Java class of a Java exception"]
    java_stack: Annotated[str | None, "its Java stack trace"]
    traceback: Annotated[str, "the Python traceback"]
    xmx: Annotated[str, "the `-Xmx` of the JVM"]
    attempt: Annotated[dict[str, Any], f"the failed attempt ({ATTEMPT_FIELDS})"]
    heap_needed_bytes: NotRequired[Annotated[int | None, "for a heap failure: the heap it needed (null when unknown)"]]


def error_line(record: Mapping[str, Any]) -> bytes:
    """errors.jsonl's line for a failed attempt, timestamped so no two lines are alike."""
    return (json.dumps(json_safe({"time": utc_now(), **record}), allow_nan=False) + "\n").encode()


def append_line_once(path: Path, line: bytes) -> None:
    """Append `line` to `path` and fsync, so a crash right after keeps it; safe to repeat: a line already at
    the end is not appended again."""
    with open(path, "a+b") as handle:
        handle.seek(max(handle.seek(0, os.SEEK_END) - len(line), 0))
        if handle.read() != line:  # a shorter file cannot end with the line either
            handle.write(line)  # at the end, wherever the position: the file is open for appending
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
