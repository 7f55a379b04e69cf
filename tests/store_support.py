"""Reading and damaging a shard's committed results the way a disk fault or a hand edit would (tests only)."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from shardrun.storage.commits import (
    GroupCommitter,
    append_line_once,
    decode_batch,
    encode_batch,
    encode_record,
    error_line,
    readable_user_ids,
    shard_config_hash,
)
from shardrun.storage.paths import ShardPaths


def append_error(paths: ShardPaths, record: Mapping[str, Any]) -> None:
    """An errors.jsonl line for a failed attempt, as a shard writes it."""
    append_line_once(paths.errors, error_line(record))


def batch_files(shard_dir: Path) -> list[Path]:
    return ShardPaths(Path(shard_dir)).batch_files()


def batch_users(path: Path) -> list[str]:
    """The user ids a batch file names (read leniently: also from a damaged batch)."""
    return readable_user_ids(path.read_bytes())


def batch_of(shard_dir: Path, user_id: str) -> Path:
    """The batch file that holds `user_id`'s record."""
    return next(path for path in batch_files(shard_dir) if user_id in batch_users(path))


def committed_users(shard_dir: Path) -> list[str]:
    """The users in the batch files of a shard dir, in commit order (each file is published whole, so a
    live shard's can be read too; a damaged one raises)."""
    return [record["user_id"] for path in batch_files(shard_dir) for record in decode_batch(path.read_bytes()).records]


def committed_user_count(shard_dir: Path) -> int:
    return len(committed_users(shard_dir)) if (Path(shard_dir) / "results").is_dir() else 0


def edit_batch(path: Path, edit: Callable[[dict[str, Any]], Any], keep_checksum: bool = True,
               header: dict[str, Any] | None = None) -> None:
    """Rewrite each record of a batch through `edit` (a hand edit). With `keep_checksum` the header's
    records_sha256 is left as it was, so the edit shows; without it the checksum is made to match (rows
    that really differ, as from a non-deterministic computation)."""
    head, _, body = path.read_bytes().partition(b"\n")
    old_header = json.loads(head)
    records = [json.loads(line) for line in body.splitlines()]
    for record in records:
        edit(record)
    lines = [encode_record(r["user_id"], r["rows"], r["ended_at"], r.get("replaces", False), r.get("attempt"))
             for r in records]
    fields = {k: v for k, v in old_header.items() if k not in ("format", "users", "records_sha256")}
    payload = encode_batch({**fields, **(header or {})}, lines)
    if keep_checksum:
        _new_head, _, new_body = payload.partition(b"\n")
        payload = head + b"\n" + new_body
    path.write_bytes(payload)


def commit_user(paths: ShardPaths, user_id: str, rows: Sequence[Mapping[str, Any]],
                header: Mapping[str, Any] | None = None, replaces: bool = False,
                attempt: Mapping[str, Any] | None = None) -> Path:
    """Commit one user now, as a batch of its own (a stand-in worker's or a tool's single commit)."""
    committer = GroupCommitter(paths, {"config_hash": shard_config_hash(paths), **(header or {})},
                               committed=[user for path in paths.batch_files() for user in batch_users(path)])
    committer.add(user_id, rows, replaces=replaces, attempt=attempt)
    written = committer.flush()
    assert written is not None
    return written
