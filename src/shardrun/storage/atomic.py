"""Files that appear whole or not at all: write to a temporary file, fsync, rename (or link) into place;
and dirs that do the same (replace_dir: a dir built beside its target, fsynced, swapped into place)."""

from __future__ import annotations

import ctypes
import errno
import json
import math
import os
import shutil
import sys
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


# --- whole dirs -----------------------------------------------------------------------------

_AT_FDCWD = -100
_RENAME_EXCHANGE = 2


def fsync_tree(directory: Path) -> None:
    """fsync every file in `directory` (not recursive: a result set is flat), then the dir itself."""
    if os.name != "posix":
        return  # Windows flushes on close; rename is still atomic (see fsync_dir)
    for path in directory.iterdir():
        if path.is_file():
            with open(path, "rb") as handle:
                os.fsync(handle.fileno())
    fsync_dir(directory)


def exchange_paths(a: Path, b: Path) -> bool:
    """Swap two existing paths in one step (Linux renameat2 RENAME_EXCHANGE); False where the OS or
    the filesystem cannot (then the caller falls back to two renames)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    renameat2.restype = ctypes.c_int
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.ENOTSUP):
        return False
    raise OSError(err, os.strerror(err), str(b))


def replace_dir(new: Path, target: Path, aside: Path) -> None:
    """Put the complete, fsynced dir `new` at `target` (both in one parent): at every instant the
    path holds the old dir or the new one, never a mix. Where the path is taken, the two are swapped
    in one step (RENAME_EXCHANGE); without it the old dir is renamed to `aside`, the new one renamed
    in, the old one removed (a crash between the two renames leaves the old set complete at `aside`,
    which the next merge puts back). The old dir is removed last."""
    parent = target.parent
    if not target.exists() and not target.is_symlink():
        os.rename(new, target)
        fsync_dir(parent)
        return
    if exchange_paths(new, target):
        fsync_dir(parent)
        shutil.rmtree(new)  # it now holds the old set
        return
    os.rename(target, aside)
    os.rename(new, target)
    fsync_dir(parent)
    shutil.rmtree(aside)
