"""A shard's results, exactly once: commit_user (one file per user, linked into place from a fsynced
temporary file, so it exists whole or not at all), the resume scan, and errors.jsonl."""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Mapping

from shardrun.errors import AlreadyCommitted
from shardrun.storage.atomic import (
    encode_json,
    fsync_dir,
    json_safe,
    read_json,
    utc_now,
    write_temp_file,
)
from shardrun.storage.paths import ShardPaths, user_file_stem

log = logging.getLogger(__name__)


RESULT_FORMAT = 1


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
    tmp = write_temp_file(paths.tmp, encode_json(record))
    try:
        if replace:
            os.replace(tmp, target)
        else:
            os.link(tmp, target)
    except FileExistsError:
        raise AlreadyCommitted(f"user {user_id!r} is committed already in {paths.results}; a user is committed once.") from None
    finally:
        tmp.unlink(missing_ok=True)
    fsync_dir(paths.results)
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
    line = json.dumps(json_safe({"time": utc_now(), **record}), allow_nan=False) + "\n"
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
