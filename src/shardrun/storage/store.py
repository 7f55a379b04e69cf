"""Durable state of a shard: atomic JSON, exactly-once result commits, the shard lock, resume scan.

A user's result becomes visible only whole: it is written to .tmp/, fsynced, then hard-linked
into results/ (link fails if the name exists, so a second commit of the same user cannot
replace the first) and the directory is fsynced. A crash at any instant leaves either no file
or a complete one; what resume sees in results/ is exactly what was committed.
"""

from __future__ import annotations

import json
import logging
import math
import os
import socket
import tempfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Mapping

from shardrun.errors import AlreadyCommitted, ResumeMismatch, ShardLocked
from shardrun.platforms import lock_exclusive
from shardrun.storage.paths import ShardPaths, user_file_stem

log = logging.getLogger(__name__)

RESULT_FORMAT = 1


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _json_safe(value: Any) -> Any:
    """NaN and infinities as null: JSON has no NaN, and readers other than Python reject it."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def _fsync_dir(path: Path) -> None:
    if os.name != "posix":
        return  # directories cannot be opened for fsync on Windows; rename is still atomic
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_tmp(directory: Path, payload: bytes) -> Path:
    fd, name = tempfile.mkstemp(dir=directory, prefix=".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
    except BaseException:
        Path(name).unlink(missing_ok=True)
        raise
    return Path(name)


def _encode(obj: Any) -> bytes:
    return (json.dumps(_json_safe(obj), indent=1, sort_keys=False, allow_nan=False) + "\n").encode()


def write_bytes_atomic(path: Path, payload: bytes) -> None:
    """Replace `path` with `payload`: readers see the old file or the new one, never a mix."""
    tmp = _write_tmp(path.parent, payload)
    try:
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def write_json_atomic(path: Path, obj: Any) -> None:
    write_bytes_atomic(path, _encode(obj))


def create_json_once(path: Path, obj: Any) -> bool:
    """Write `path` only if it does not exist yet (atomically). True if this call created it."""
    tmp = _write_tmp(path.parent, _encode(obj))
    try:
        os.link(tmp, path)
    except FileExistsError:
        return False
    finally:
        tmp.unlink(missing_ok=True)
    _fsync_dir(path.parent)
    return True


def read_json(path: Path) -> Any:
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


# --- results ------------------------------------------------------------------------------




@dataclass(frozen=True)
class CommittedUser:
    user_id: str
    rows: list[dict[str, Any]]
    record: dict[str, Any]
    path: Path


def commit_user(
    paths: ShardPaths, user_id: str, rows: list[Mapping[str, Any]], meta: Mapping[str, Any], replace: bool = False
) -> Path:
    """Make one user's rows visible, whole and exactly once.

    `replace` is only for --retry-failed: the new rows take the place of the failed ones in one
    atomic rename, so the user is never absent and never twice.
    """
    # milliseconds: a user can take well under a second, and the merge timeline starts it at
    # committed_at - seconds
    committed_at = datetime.now(timezone.utc).isoformat(timespec="milliseconds")
    record = {"format": RESULT_FORMAT, "user_id": user_id, "committed_at": committed_at, **meta, "rows": list(rows)}
    target = paths.result(user_id)
    tmp = _write_tmp(paths.tmp, _encode(record))
    try:
        if replace:
            os.replace(tmp, target)
        else:
            os.link(tmp, target)
    except FileExistsError:
        raise AlreadyCommitted(f"user {user_id!r} is committed already in {paths.results}; a user is committed once.") from None
    finally:
        tmp.unlink(missing_ok=True)
    _fsync_dir(paths.results)
    return target


def scan_committed(paths: ShardPaths) -> dict[str, CommittedUser]:
    """Every user committed in this shard dir, by user id.

    A result file that does not parse or whose name does not match its user id was not written
    by commit_user (a disk fault, a hand edit): it is moved aside to results/quarantine/ and
    the user counts as not committed, so resume recomputes it instead of trusting it.
    """
    committed: dict[str, CommittedUser] = {}
    if not paths.results.is_dir():
        return committed
    for path in sorted(paths.results.glob("u-*.json")):
        try:
            record = read_json(path)
            user_id = record["user_id"]
            rows = record["rows"]
            if not isinstance(user_id, str) or path.stem != user_file_stem(user_id) or not isinstance(rows, list):
                raise ValueError("file name, user id or rows do not match")
        except (OSError, ValueError, KeyError, TypeError) as exc:
            _quarantine(paths, path, exc)
            continue
        committed[user_id] = CommittedUser(user_id=user_id, rows=rows, record=record, path=path)
    return committed


def _quarantine(paths: ShardPaths, path: Path, why: Exception) -> None:
    quarantine = paths.results / "quarantine"
    quarantine.mkdir(exist_ok=True)
    target = quarantine / f"{path.name}.{datetime.now():%Y%m%d%H%M%S%f}"
    os.replace(path, target)
    log.warning("result file %s is unreadable (%s); moved to %s and the user will be recomputed", path, why, target)


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
    line = json.dumps(_json_safe({"time": utc_now(), **record}), allow_nan=False) + "\n"
    with open(paths.errors, "a", encoding="utf-8") as handle:
        handle.write(line)
        handle.flush()
        os.fsync(handle.fileno())


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


# --- identity -----------------------------------------------------------------------------


def ensure_identity(paths: ShardPaths, identity: Mapping[str, Any], resuming: bool) -> dict[str, Any]:
    """Write shard.json for a new shard dir, or check that a resumed one belongs to this run.

    Whether a dir is resumable is decided by its shard.json (same config hash, same data,
    same shard layout), never by the dir merely existing.
    """
    existing = read_json(paths.identity) if paths.identity.is_file() else None
    if existing is None:
        if resuming:
            raise ResumeMismatch(
                f"{paths.dir} is not a shard dir (no shard.json): pass a shard dir or a run dir made by"
                " run_production or launch_shards to --resume."
            )
        create_json_once(paths.identity, dict(identity))
        return dict(identity)
    if not resuming:
        raise ResumeMismatch(
            f"{paths.dir} already holds a shard of an earlier run; continue it with --resume {paths.dir.parent}"
            " or choose a new --out."
        )
    for key, what, fix in (
        ("shard", "shard", "pass the same --shard (or none) when resuming"),
        ("config_hash", "config hash", "resume with the config that started the run (see run.json)"),
        ("data_fingerprint", "input data", "the input file changed since the run started; restore it or start a new run"),
        ("pilot", "--pilot size", "resume with the same --full / --pilot N as the run started with"),
    ):
        if existing.get(key) != identity.get(key):
            def shown(value: Any) -> str:
                return "--full" if key == "pilot" and value is None else repr(value)

            raise ResumeMismatch(
                f"cannot resume {paths.dir}: its {what} is {shown(existing.get(key))} but this run has"
                f" {shown(identity.get(key))}; {fix}."
            )
    return existing


# --- lock ---------------------------------------------------------------------------------


class ShardLock:
    """At most one live process per shard dir.

    An OS file lock (flock) is held for the life of the process, so the kernel releases it when
    the process dies however it dies: a stale lock file left by a SIGKILL never blocks a resume.
    The file's text (pid, host) only serves the error message.
    """

    def __init__(self, paths: ShardPaths):
        self._path = paths.lock
        self._handle = None

    def acquire(self) -> None:
        handle = open(self._path, "a+", encoding="utf-8")
        try:
            lock_exclusive(handle)
        except OSError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown process"
            handle.close()
            raise ShardLocked(
                f"shard dir {self._path.parent} is in use by another process ({holder}); wait for it to end,"
                " or stop it, then resume. Two processes must never run one shard."
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": utc_now()}))
        handle.flush()
        self._handle = handle

    def release(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None

    def __enter__(self) -> "ShardLock":
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
