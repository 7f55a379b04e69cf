"""A shard's results, exactly once: commit_user (one file per user, put into place from a fsynced
temporary file by atomic.publish_new, so it exists whole or not at all), the resume scan, and errors.jsonl.

Provenance: every result file carries `rows_sha256` (sha256 of the canonical JSON of its rows, see
rows_checksum) and `config_hash` (the shard's, from shard.json). `verify_record` checks both, so a
file edited by hand after its commit, or copied in from a run of another config, is told apart from
one commit_user wrote here. Files of format 1 (before checksums) carry neither: they are accepted as
unverified (only the config hash of their rows is checked), so runs made before still merge and resume.
"""

from __future__ import annotations

import hashlib
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
    publish_new,
    read_json,
    utc_now,
    write_temp_file,
)
from shardrun.storage.paths import ShardPaths, user_file_stem

log = logging.getLogger(__name__)


RESULT_FORMAT = 2  # 2: rows_sha256 and config_hash in the file; 1 (older runs): neither


@dataclass(frozen=True)
class CommittedUser:
    user_id: str
    rows: list[dict[str, Any]]
    record: dict[str, Any]
    path: Path
    problem: str | None = None  # why the file cannot be trusted (verify_record); only with untrusted="keep"

    @property
    def verified(self) -> bool:
        """True if the file carries a checksum (format 2 or later); format 1 files cannot be checked."""
        return "rows_sha256" in self.record


def rows_checksum(rows: Any) -> str:
    """sha256 of the canonical JSON of the rows: NaN as null (as stored), keys sorted, no spaces,
    ASCII. The rows read back from a file give the same text, so the checksum survives the round trip."""
    canonical = json.dumps(json_safe(rows), sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)
    return hashlib.sha256(canonical.encode("ascii")).hexdigest()


def verify_record(record: Mapping[str, Any], config_hash: str | None) -> str | None:
    """Why a committed record cannot be trusted, or None.

    The checksum must match the rows (else the file was edited after its commit); the file's config
    hash and every row's `config_hash` must be the shard's (else the file comes from another config's
    run). `config_hash` None (no shard.json to compare with) checks the checksum only. A record
    without a checksum (format 1) is checked for its rows' config hash only.
    """
    rows = record.get("rows") or []
    stored = record.get("rows_sha256")
    if stored is not None and stored != rows_checksum(rows):
        return ("its rows do not match the checksum written when it was committed (rows_sha256): it was"
                " edited after the commit")
    if config_hash is None:
        return None
    file_hash = record.get("config_hash")
    if file_hash is not None and file_hash != config_hash:
        return f"it was committed under config hash {file_hash!r}, but this shard's is {config_hash!r}: it comes from another config's run"
    row_hashes = sorted({str(row.get("config_hash")) for row in rows if isinstance(row, dict) and row.get("config_hash") is not None})
    foreign = [h for h in row_hashes if h != config_hash]
    if foreign:
        return f"its rows carry config hash {foreign[0]!r}, but this shard's is {config_hash!r}: it comes from another config's run"
    return None


def shard_config_hash(paths: ShardPaths) -> str | None:
    """The config hash in the shard's shard.json, or None when there is none (yet) or it cannot be read."""
    try:
        identity = read_json(paths.identity)
    except (OSError, ValueError):
        return None
    value = identity.get("config_hash") if isinstance(identity, dict) else None
    return value if isinstance(value, str) else None


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
    stored_rows = json_safe(list(rows))
    record = {
        "format": RESULT_FORMAT,
        "user_id": user_id,
        "committed_at": committed_at,
        **meta,
        "config_hash": meta.get("config_hash", shard_config_hash(paths)),
        "rows_sha256": rows_checksum(stored_rows),
        "rows": stored_rows,
    }
    target = paths.result(user_id)
    tmp = write_temp_file(paths.tmp, encode_json(record))
    try:
        if replace:
            os.replace(tmp, target)
        else:
            # a hard link, or on a filesystem without them a rename that cannot replace: the shard
            # lock makes this process the only writer of results/ (atomic.publish_new)
            publish_new(tmp, target)
    except FileExistsError:
        raise AlreadyCommitted(f"user {user_id!r} is committed already in {paths.results}; a user is committed once.") from None
    finally:
        tmp.unlink(missing_ok=True)
    fsync_dir(paths.results)
    return target


def scan_committed(paths: ShardPaths, untrusted: str = "quarantine") -> dict[str, CommittedUser]:
    """Every user committed in this shard dir, by user id.

    A result file that does not parse or whose name does not match its user id was not written
    by commit_user (a disk fault, a hand edit): it is moved aside to results/quarantine/ and
    the user counts as not committed, so resume recomputes it instead of trusting it.

    A file that parses but fails verify_record (edited after its commit, or from another config's
    run) is, with `untrusted="quarantine"` (the resume scan), treated the same way: moved aside byte
    for byte with a warning that says why, and the user is recomputed (the analysis is deterministic,
    so the recomputed rows are the ones the file held before the edit). With `untrusted="keep"`
    (merge) it is left in place and returned with `problem` set, for the caller to report.
    """
    if untrusted not in ("quarantine", "keep"):
        raise ValueError(f"untrusted must be 'quarantine' or 'keep', not {untrusted!r}")
    committed: dict[str, CommittedUser] = {}
    if not paths.results.is_dir():
        return committed
    config_hash = shard_config_hash(paths)
    for path in sorted(paths.results.glob("u-*.json")):
        try:
            record = read_json(path)
            user_id = record["user_id"]
            rows = record["rows"]
            if not isinstance(user_id, str) or path.stem != user_file_stem(user_id) or not isinstance(rows, list):
                raise ValueError("file name, user id or rows do not match")
        except (OSError, ValueError, KeyError, TypeError) as exc:
            _quarantine(paths, path, f"is unreadable ({exc})")
            continue
        problem = verify_record(record, config_hash)
        if problem is not None and untrusted == "quarantine":
            _quarantine(paths, path, f"cannot be trusted: {problem}")
            continue
        committed[user_id] = CommittedUser(user_id=user_id, rows=rows, record=record, path=path, problem=problem)
    return committed


def results_listing(paths: ShardPaths) -> frozenset[tuple[str, int, int]]:
    """(name, size, mtime in ns) of every result file: what a second look compares with the first to
    know whether a scan still holds, without reading any file again."""
    if not paths.results.is_dir():
        return frozenset()
    listing = set()
    for path in paths.results.glob("u-*.json"):
        try:
            stat = path.stat()
        except FileNotFoundError:  # moved aside between the listing and the stat
            continue
        listing.add((path.name, stat.st_size, stat.st_mtime_ns))
    return frozenset(listing)


def _quarantine(paths: ShardPaths, path: Path, why: str) -> None:
    quarantine = paths.results / "quarantine"
    quarantine.mkdir(exist_ok=True)
    target = quarantine / f"{path.name}.{datetime.now():%Y%m%d%H%M%S%f}"
    os.replace(path, target)
    log.warning("result file %s %s; moved to %s and the user will be recomputed", path, why, target)


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
