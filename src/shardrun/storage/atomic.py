"""Files and dirs that appear whole or not at all (temporary file, fsync, rename or link).

publish_new falls back from hard link to RENAME_NOREPLACE to a checked rename: docs/SHARED_FILESYSTEMS.md.
"""

from __future__ import annotations

import ctypes
import errno
import json
import logging
import math
import os
import secrets
import shutil
import sys
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from shardrun.platforms import describe_filesystem

log = logging.getLogger(__name__)


def utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def json_safe(value: Any) -> Any:
    """NaN and infinities as null: JSON has no NaN, and readers other than Python reject it."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


class FsyncFailed(OSError):
    """fsync(2) failed. Never retried: the kernel may have marked the lost pages clean already."""


def fsync(fd: int, path: Path | str) -> None:
    """os.fsync, whose failure is a FsyncFailed naming `path`."""
    try:
        os.fsync(fd)
    except OSError as exc:
        raise FsyncFailed(exc.errno, exc.strerror, str(path)) from exc


def fsync_dir(path: Path) -> None:
    if os.name != "posix":
        return  # directories cannot be opened for fsync on Windows; rename is still atomic
    fd = os.open(path, os.O_RDONLY)
    try:
        fsync(fd, path)
    finally:
        os.close(fd)


# O_EXCL and O_NOFOLLOW: a scratch name is never shared nor followed through a symlink
_NEW_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_BINARY", 0)
NEW_FILE_MODE = 0o666  # what open(path, "w") asks for: the kernel takes the umask (or the dir's default ACL) off


SCRATCH_SUFFIX = ".tmp"


def is_scratch_name(name: str) -> bool:
    """A name write_temp_file draws: a killed writer's leftover, never data."""
    token = name[1:-len(SCRATCH_SUFFIX)]
    return (name.startswith(".") and name.endswith(SCRATCH_SUFFIX) and len(token) == 16
            and all(c in "0123456789abcdef" for c in token))


def write_temp_file(directory: Path, payload: bytes) -> Path:
    """A new fsynced scratch file `.<random>.tmp` in `directory` holding `payload`.

    Mode 0o666 less the umask, so a group can share the run (mkstemp would force 0600)."""
    for _ in range(10):
        path = directory / f".{secrets.token_hex(8)}{SCRATCH_SUFFIX}"
        try:
            fd = os.open(path, _NEW_FILE_FLAGS, NEW_FILE_MODE)
            break
        except FileExistsError:
            continue  # another writer drew the same 64 random bits: draw again
    else:
        raise FileExistsError(errno.EEXIST, "no free scratch file name after 10 draws", str(directory))
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(payload)
            handle.flush()
            fsync(handle.fileno(), path)
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    return path


def encode_json(obj: Any) -> bytes:
    return (json.dumps(json_safe(obj), indent=1, allow_nan=False) + "\n").encode()


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


def create_json_once(path: Path, obj: Any, sole_writer: bool = False) -> bool:
    """Write `path` atomically only if it does not exist yet; True if this call created it.

    Without `sole_writer` (the shard lock), a checked rename is read back, as racing shards may replace it."""
    payload = encode_json(obj)
    tmp = write_temp_file(path.parent, payload)
    try:
        way = publish_new(tmp, path)
    except FileExistsError:
        # the sole writer finding its own bytes: an earlier attempt landed
        return sole_writer and holds(path, payload)
    finally:
        tmp.unlink(missing_ok=True)
    fsync_dir(path.parent)
    return sole_writer or way != CHECKED_RENAME or holds(path, payload)


# --- a file at a name that must not exist yet -----------------------------------------------

HARD_LINK = "hard link"
RENAME_NOREPLACE = "rename without replace (renameat2 RENAME_NOREPLACE)"
CHECKED_RENAME = "rename after checking that the name is free"

# link(2) errors meaning "no hard links here" (FAT, FUSE, BeeGFS across dirs: EPERM); a real EPERM
# resurfaces from the rename that follows
LINK_REFUSED_ERRNOS = frozenset({errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.ENOSYS, errno.EMLINK, errno.EXDEV})

_ways_by_dir: dict[str, str] = {}
_ways_said: set[tuple[int | None, str]] = set()
_ways_lock = threading.Lock()


def publish_way(directory: Path) -> str:
    """How publish_new puts files into `directory` (HARD_LINK until a link was refused)."""
    with _ways_lock:
        return _ways_by_dir.get(str(directory), HARD_LINK)


def _choose_way(directory: Path, way: str, refused: OSError) -> None:
    """Remember `way` for `directory`; warn once per filesystem, then log at info level."""
    try:
        device = os.stat(directory).st_dev
    except OSError:
        device = None
    with _ways_lock:
        _ways_by_dir[str(directory)] = way
        first_on_device = (device, way) not in _ways_said
        _ways_said.add((device, way))
    if not first_on_device:
        log.info("hard links are refused in %s too: files are put in place by %s", directory, way)
        return
    why = ("still one atomic step that fails if the name exists" if way == RENAME_NOREPLACE else
           "exactly once because one process writes each shard dir (the shard lock), so no other process can"
           " take the name between the check and the rename")
    log.warning("hard links are refused in %s (%s: link failed with %s, %s): files are put in place by %s from now"
                " on; %s (docs/SHARED_FILESYSTEMS.md)", directory, describe_filesystem(directory),
                errno.errorcode.get(refused.errno or 0, refused.errno), refused.strerror, way, why)


def publish_new(tmp: Path, target: Path) -> str:
    """Put the fsynced `tmp` at `target` in one step, FileExistsError if it exists; returns the way used.

    The checked-rename fallback is exactly-once only with one writer per dir (the shard lock)."""
    directory = target.parent
    way = publish_way(directory)
    if way == HARD_LINK:
        try:
            os.link(tmp, target)
            return HARD_LINK
        except OSError as exc:
            if exc.errno not in LINK_REFUSED_ERRNOS:  # FileExistsError among them
                raise
            refused = exc
        if rename_noreplace(tmp, target):
            _choose_way(directory, RENAME_NOREPLACE, refused)
            return RENAME_NOREPLACE
        _choose_way(directory, CHECKED_RENAME, refused)
        way = CHECKED_RENAME
    if way == RENAME_NOREPLACE and rename_noreplace(tmp, target):
        return RENAME_NOREPLACE
    if os.path.lexists(target):
        raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), str(target))
    # a crash here leaves the name free: the user is recomputed
    os.rename(tmp, target)
    return CHECKED_RENAME


def holds(path: Path, payload: bytes) -> bool:
    """Whether the file `path` exists with exactly these bytes (a missing file does not)."""
    try:
        return path.stat().st_size == len(payload) and path.read_bytes() == payload
    except FileNotFoundError:
        return False


def read_json(path: Path) -> Any:
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


# --- whole dirs -----------------------------------------------------------------------------

_AT_FDCWD = -100
_RENAME_NOREPLACE = 1
_RENAME_EXCHANGE = 2


def fsync_tree(directory: Path) -> None:
    """fsync every file in `directory` (not recursive: a result set is flat), then the dir itself."""
    if os.name != "posix":
        return  # Windows flushes on close; rename is still atomic (see fsync_dir)
    for path in directory.iterdir():
        if path.is_file():
            with open(path, "rb") as handle:
                fsync(handle.fileno(), path)
    fsync_dir(directory)


def _renameat2(a: Path, b: Path, flags: int) -> bool:
    """Linux renameat2(a, b, flags); False where unsupported, any other failure raised."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    renameat2.restype = ctypes.c_int
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), flags) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.ENOTSUP):
        return False
    raise OSError(err, os.strerror(err), str(b))  # OSError picks the subclass: EEXIST is FileExistsError


def exchange_paths(a: Path, b: Path) -> bool:
    """Swap two paths in one step (RENAME_EXCHANGE); False where unsupported."""
    return _renameat2(a, b, _RENAME_EXCHANGE)


def rename_noreplace(a: Path, b: Path) -> bool:
    """Rename `a` to `b` unless `b` exists (FileExistsError); False where unsupported (NFS, many FUSE)."""
    return _renameat2(a, b, _RENAME_NOREPLACE)


def replace_dir(new: Path, target: Path, aside: Path) -> None:
    """Put the fsynced dir `new` at `target`: the old dir or the new, never a mix.

    Without RENAME_EXCHANGE a crash may leave the old set at `aside`, which the next merge puts back."""
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
