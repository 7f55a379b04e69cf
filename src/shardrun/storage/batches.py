"""The batch file: several users' results under one checksum of the raw record bytes (pure).

A batch is trusted or set aside whole; the format is in docs/FORMATS.md ("Batch files").
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from shardrun.storage.atomic import json_safe

BATCH_FORMAT = 3


class BadBatch(ValueError):
    """The bytes are not a whole, unchanged batch file (torn, truncated, edited or not a batch)."""


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
        record["attempt"] = dict(attempt)
    record["rows"] = list(rows)
    try:
        text = _COMPACT.encode(record)
    except ValueError:  # a NaN or an infinity somewhere: only then is every value looked at
        record["rows"] = json_safe(record["rows"])
        if attempt is not None:
            record["attempt"] = json_safe(record["attempt"])
        text = _COMPACT.encode(record)
    return text.encode("ascii") + b"\n"


def encode_batch(header: Mapping[str, Any], record_lines: Sequence[bytes]) -> bytes:
    body = b"".join(record_lines)
    full_header = {"format": BATCH_FORMAT, "users": len(record_lines),
                   "records_sha256": hashlib.sha256(body).hexdigest(), **header}
    return json.dumps(full_header, separators=(",", ":"), allow_nan=False).encode("ascii") + b"\n" + body


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
