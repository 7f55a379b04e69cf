"""Files that appear whole or not at all: write to a temporary file, fsync, rename (or link) into place;
and dirs that do the same (replace_dir: a dir built beside its target, fsynced, swapped into place).

publish_new is the one place where a file is put at a name that must not exist yet (a user's result,
shard.json, run.json): a hard link where the filesystem has them, else a rename that refuses to
replace (renameat2 RENAME_NOREPLACE), else a rename after checking that the name is free. The way is
chosen once per dir and logged once (docs/SHARED_FILESYSTEMS.md).
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
    """fsync(2) failed: the data may not be on the disk. Never retried (durability.is_transient): after a
    failed fsync the kernel may have dropped the unwritten pages and marked them clean, so a second fsync
    would succeed without writing them."""


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


# O_EXCL: a scratch name is never shared with another writer, nor followed through a symlink;
# binary on Windows (Python makes every fd non-inheritable already)
_NEW_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_BINARY", 0)
NEW_FILE_MODE = 0o666  # what open(path, "w") asks for: the kernel takes the umask (or the dir's default ACL) off


SCRATCH_SUFFIX = ".tmp"


def is_scratch_name(name: str) -> bool:
    """A name create_temp_file draws: such a file in a dir is only ever a writer's unfinished work (left
    behind by one that was killed mid-write), never something a reader takes for data."""
    token = name[1:-len(SCRATCH_SUFFIX)]
    return (name.startswith(".") and name.endswith(SCRATCH_SUFFIX) and len(token) == 16
            and all(c in "0123456789abcdef" for c in token))


def create_temp_file(directory: Path) -> tuple[int, Path]:
    """A new, empty scratch file `.<random>.tmp` in `directory`, open for writing: (fd, path).

    Its mode is the one any program's new file gets (0o666 less the umask), so what is published
    from it is as readable and writable by the group as the user's umask says (umask 002: a lab
    shares the run). tempfile.mkstemp would create 0600 whatever the umask. The mode is given to the
    create itself, never set afterwards: no reading of the process-wide umask (racy: os.umask can
    only be read by setting it), and no moment at which the file has another mode."""
    for _ in range(10):
        path = directory / f".{secrets.token_hex(8)}{SCRATCH_SUFFIX}"
        try:
            return os.open(path, _NEW_FILE_FLAGS, NEW_FILE_MODE), path
        except FileExistsError:
            continue  # another writer drew the same 64 random bits: draw again
    raise FileExistsError(errno.EEXIST, "no free scratch file name after 10 draws", str(directory))


def write_temp_file(directory: Path, payload: bytes) -> Path:
    fd, name = create_temp_file(directory)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(payload)
            handle.flush()
            fsync(handle.fileno(), name)
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


def create_json_once(path: Path, obj: Any, sole_writer: bool = False) -> bool:
    """Write `path` only if it does not exist yet (atomically). True if this call created it.

    `sole_writer`: the caller holds the shard lock of the dir (shard.json). Without it (run.json,
    which every shard of a run may try to create at once) and where the filesystem offers only the
    checked rename, the file is read back: if another process's rename replaced this one's, the call
    says it did not create the file, and the caller compares with what is there."""
    payload = encode_json(obj)
    tmp = write_temp_file(path.parent, payload)
    try:
        way = publish_new(tmp, path)
    except FileExistsError:
        # The sole writer finding its very bytes there: its own earlier attempt landed (a retry after a
        # lost reply), so it did create the file.
        return sole_writer and holds(path, payload)
    finally:
        tmp.unlink(missing_ok=True)
    fsync_dir(path.parent)
    if way == CHECKED_RENAME and not sole_writer:
        try:
            return path.read_bytes() == payload
        except FileNotFoundError:
            return False
    return True


# --- a file at a name that must not exist yet -----------------------------------------------

HARD_LINK = "hard link"
RENAME_NOREPLACE = "rename without replace (renameat2 RENAME_NOREPLACE)"
CHECKED_RENAME = "rename after checking that the name is free"

# What link(2) answers on a filesystem (or a pair of dirs) that has no hard links: FAT and exFAT,
# FUSE filesystems without link (EPERM), BeeGFS across dirs (EPERM), others EOPNOTSUPP, ENOSYS,
# EMLINK or EXDEV. A real permission problem gives EPERM too; the rename that follows then fails with
# it and the caller reports it.
LINK_REFUSED_ERRNOS = frozenset({errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.ENOSYS, errno.EMLINK, errno.EXDEV})

_ways_by_dir: dict[str, str] = {}
_ways_said: set[tuple[int | None, str]] = set()
_ways_lock = threading.Lock()


def publish_way(directory: Path) -> str:
    """How publish_new puts files into `directory` in this process (HARD_LINK until a link was refused)."""
    with _ways_lock:
        return _ways_by_dir.get(str(directory), HARD_LINK)


def _choose_way(directory: Path, way: str, refused: OSError) -> None:
    """Remember `way` for `directory`; say so once per filesystem at warning level (a shard has three
    such dirs: the run dir, its own dir and results/), and for its other dirs at info level."""
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
    """Put the complete, fsynced file `tmp` at `target` in one step, only if `target` does not exist:
    FileExistsError if it does (then `tmp` stays for the caller to remove). Returns the way used.

    A hard link is atomic and refuses an existing name, on any number of writers. Where links are
    refused, renameat2(RENAME_NOREPLACE) keeps both properties. Where that is missing too (NFS and
    FUSE filesystems without it answer EINVAL), the name is checked and then renamed into: exactly once as long as one
    process writes the dir, which the shard lock guarantees for a shard dir. Even if two writers did
    race there, the name is the user's, so the second rename replaces the first file whole: the user
    is never there twice and never torn."""
    directory = target.parent
    way = publish_way(directory)
    if way == HARD_LINK:
        try:
            os.link(tmp, target)
            return HARD_LINK
        except FileExistsError:
            raise
        except OSError as exc:
            if exc.errno not in LINK_REFUSED_ERRNOS:
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
    # A crash here leaves `tmp` in its scratch dir (removed at the next start) and the name free: the
    # user is not committed and is computed again.
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
    """Linux renameat2(a, b, flags); False where the OS, the C library or the filesystem lacks it
    (ENOSYS, EINVAL, EOPNOTSUPP); any other failure is raised (EEXIST as FileExistsError)."""
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
    """Swap two existing paths in one step (Linux renameat2 RENAME_EXCHANGE); False where the OS or
    the filesystem cannot (then the caller falls back to two renames)."""
    return _renameat2(a, b, _RENAME_EXCHANGE)


def rename_noreplace(a: Path, b: Path) -> bool:
    """Rename `a` to `b` in one step unless `b` exists (FileExistsError); False where the OS or the
    filesystem has no such rename (Linux renameat2 RENAME_NOREPLACE; NFS and many FUSE filesystems lack it)."""
    return _renameat2(a, b, _RENAME_NOREPLACE)


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
