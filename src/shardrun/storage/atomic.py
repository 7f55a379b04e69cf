"""Files that appear whole or not at all: write to a temporary file, fsync, rename (or link) into place."""

from __future__ import annotations

import json
import math
import os
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def json_safe(value: Any) -> Any:
    """NaN and infinities as null: JSON has no NaN, and readers other than Python reject it."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def fsync_dir(path: Path) -> None:
    if os.name != "posix":
        return  # directories cannot be opened for fsync on Windows; rename is still atomic
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_temp_file(directory: Path, payload: bytes) -> Path:
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


def encode_json(obj: Any) -> bytes:
    return (json.dumps(json_safe(obj), indent=1, sort_keys=False, allow_nan=False) + "\n").encode()


def write_bytes_atomic(path: Path, payload: bytes) -> None:
    """Replace `path` with `payload`: readers see the old file or the new one, never a mix."""
    tmp = write_temp_file(path.parent, payload)
    try:
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def write_json_atomic(path: Path, obj: Any) -> None:
    write_bytes_atomic(path, encode_json(obj))


def create_json_once(path: Path, obj: Any) -> bool:
    """Write `path` only if it does not exist yet (atomically). True if this call created it."""
    tmp = write_temp_file(path.parent, encode_json(obj))
    try:
        os.link(tmp, path)
    except FileExistsError:
        return False
    finally:
        tmp.unlink(missing_ok=True)
    fsync_dir(path.parent)
    return True


def read_json(path: Path) -> Any:
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)
