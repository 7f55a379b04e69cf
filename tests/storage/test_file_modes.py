"""Runs a lab can share: every file and dir a run creates has the mode any program's would under the
user's umask (0o666 / 0o777 less the umask), so `umask 002` makes a run its group can monitor and merge,
and `umask 077` one nobody else can read. Real files, real shard processes."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from shardrun.storage.atomic import (
    create_json_once,
    publish_new,
    write_bytes_atomic,
    write_json_atomic,
    write_temp_file,
)
from shardrun.storage.lock import Lease

from e2e_support import write_categorical_data, write_config


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


@pytest.mark.parametrize("umask", [0o002, 0o022, 0o077], ids=lambda umask: f"umask-{umask:03o}")
def test_the_atomic_writers_create_files_as_open_would_under_the_umask(tmp_path, umask):
    """Each way shardrun puts a file in place, in this process under a set umask (restored after)."""
    previous = os.umask(umask)
    try:
        with open(tmp_path / "plain", "w"):
            pass
        write_json_atomic(tmp_path / "replaced.json", {"a": 1})
        write_bytes_atomic(tmp_path / "replaced.bin", b"x")
        assert create_json_once(tmp_path / "once.json", {"b": 2})
        publish_new(write_temp_file(tmp_path, b"a user"), tmp_path / "published")
        lease = Lease(tmp_path / "lease")
        lease.acquire()
        try:
            lease_mode = mode_of(tmp_path / "lease")
        finally:
            lease.release()
    finally:
        os.umask(previous)
    expected = 0o666 & ~umask
    assert mode_of(tmp_path / "plain") == expected
    modes = {name: mode_of(tmp_path / name) for name in ("replaced.json", "replaced.bin", "once.json", "published")}
    assert modes == dict.fromkeys(modes, expected), f"{modes} under umask {umask:03o}"
    assert lease_mode == expected


def test_a_scratch_file_never_reuses_another_writers_name(tmp_path, monkeypatch):
    """Where the random name drawn is taken, the scratch file gets another and the existing one is untouched."""
    taken = tmp_path / ".aaaa.tmp"
    taken.write_bytes(b"another writer's")
    draws = iter(["aaaa", "bbbb"])
    monkeypatch.setattr("shardrun.storage.atomic.secrets.token_hex", lambda nbytes: next(draws))
    assert write_temp_file(tmp_path, b"mine") == tmp_path / ".bbbb.tmp"
    assert taken.read_bytes() == b"another writer's" and (tmp_path / ".bbbb.tmp").read_bytes() == b"mine"


def entries_of(run: Path) -> tuple[list[Path], list[Path]]:
    files, dirs = [], [run]
    for parent, dirnames, filenames in os.walk(run):
        dirs += [Path(parent, name) for name in dirnames]
        files += [Path(parent, name) for name in filenames]
    return files, dirs


def run_under_umask(umask: str, tmp_path: Path) -> tuple[Path, Path]:
    """A small real run, launched (2 shards, their merge and validation) by `sh -c "umask U; exec ..."`:
    the pytest process's own umask is never touched."""
    data = tmp_path / "users.csv"
    write_categorical_data(data, n_users=4, n_rows=300)
    config = write_config(tmp_path / "config.yaml", data, tmp_path, surrogates=20, k_grid=(1, 2))
    run = tmp_path / "run"
    command = [sys.executable, "-m", "shardrun", "launch", "--config", str(config), "--shards", "2", "--out", str(run)]
    result = subprocess.run(["sh", "-c", f'umask {umask}; exec "$@"', "sh", *command], cwd=tmp_path,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr}"
    assert "validation passed" in result.stdout, result.stdout
    return run, tmp_path / "logs"


@pytest.mark.e2e
def test_a_run_under_umask_002_is_group_writable_throughout(tmp_path):
    run, logs = run_under_umask("002", tmp_path)
    files, dirs = entries_of(run)
    names = {path.relative_to(run).as_posix() for path in files}
    # the files a colleague needs to monitor, continue and merge the run are among those checked
    for needed in ("run.json", "launcher.json", "shard-0-of-2/shard.json", "shard-0-of-2/status.json",
                   "shard-1-of-2/shard.log", "merged/results.csv", "merged/results.parquet",
                   "merged/merge_report.json", "merged/summary.png"):
        assert needed in names, sorted(names)
    assert any(name.startswith("shard-0-of-2/results/") for name in names), sorted(names)
    log_files, _ = entries_of(logs)
    assert log_files, "the launcher wrote no shard logs"
    not_shared = {str(path): oct(mode_of(path)) for path in files + log_files if mode_of(path) & 0o660 != 0o660}
    assert not not_shared, f"files not read-write for the group under umask 002: {not_shared}"
    closed = {str(path): oct(mode_of(path)) for path in dirs if mode_of(path) & 0o770 != 0o770}
    assert not closed, f"dirs the group cannot list, enter and write under umask 002: {closed}"


@pytest.mark.e2e
def test_a_run_under_umask_077_is_private_throughout(tmp_path):
    run, logs = run_under_umask("077", tmp_path)
    files, dirs = entries_of(run)
    log_files, _ = entries_of(logs)
    assert len(files) > 10 and log_files
    open_to_others = {str(path): oct(mode_of(path)) for path in files + log_files + dirs if mode_of(path) & 0o077}
    assert not open_to_others, f"entries the group or others can use under umask 077: {open_to_others}"
    assert all(mode_of(path) & 0o600 == 0o600 for path in files)
