"""Fault injection, driven by a table: each case is a fault, how it is injected, and what must hold after.

Real processes, real signals, real files, the real JVM and JIDT jar. Where the fault needs the
machine's help (a read-only mount, a tmpfs that fills up, a file-size limit) the test asks the
kernel for it; docs/RELIABILITY.md lists every case, how it is injected and the guarantee it checks.

`test_fault` runs one case and then the checks every case must pass:
- the faulted command's exit code and the message fragments of the table;
- every error is clear: no Python traceback anywhere in the output, one `error: ...` paragraph for
  the deliberate exits 2, 4 and 6;
- nothing committed is ever lost: every result file the test saw committed (whole, parsing, named
  by its user's hash) is still there, byte for byte, at the end;
- nothing escapes: outside the case's output root and log dir nothing changed (the whole pytest
  tmp tree and the repository are compared before and after), and inside them every file has a
  name shardrun gives (never one made from a user id).
"""

from __future__ import annotations

import errno
import json
import os
import random
import re
import resource
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import psutil
import pytest
import yaml

from shardrun.results.merge import merge_shards
from shardrun.results.read import read_result_file, shard_dirs_of_run
from shardrun.storage.commits import decode_batch

from e2e_support import analysis_values, read_status, shardrun, wait_for, write_categorical_data, write_config
from fs_support import stand_in_worker, vfat_mount
from store_support import batch_files, batch_of, committed_user_count, committed_users, edit_batch

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[1]
MODES = ("activity", "composite")  # the feature modes of write_config: two rows per user
KILL_TRIALS = 12
KILL_SEED = 20260301


# --- the small workload every case runs ------------------------------------------------------


@dataclass(frozen=True)
class Small:
    """Ten users, a small grid and few surrogates (a whole shard takes about 2 s), and its reference."""

    root: Path
    data: Path
    run: Path  # the reference: one uninterrupted K=1 run, merged
    reference: pd.DataFrame
    first_commit_seconds: float  # when the reference run committed its first user, from process start


SURROGATES = 200
K_GRID = (1, 2, 3)


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> Small:
    root = tmp_path_factory.mktemp("faults-small")
    data = root / "users.csv"
    write_categorical_data(data, n_users=10, n_rows=600)
    config = write_config(root / "config.yaml", data, root, surrogates=SURROGATES, k_grid=K_GRID)
    run = root / "reference"
    started = time.monotonic()
    # One user per batch file: the cases that damage a copy of this run aim at one user's batch.
    process = subprocess.Popen(
        worker_command(config, "--shard", "0/1", "--out", str(run), "--commit-interval", "0"),
        cwd=root, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    results = run / "shard-0-of-1" / "results"
    first = None
    while process.poll() is None:
        if first is None and results.is_dir() and any(results.glob("b-*.jsonl")):
            first = time.monotonic() - started
        time.sleep(0.005)
    output = process.communicate()[0]
    assert process.returncode == 0 and first is not None, output
    shardrun("merge", "--run", str(run), "--output", str(run / "merged"), cwd=root)
    return Small(root, data, run, analysis_values(run / "merged"), first)


# --- the lab: one case's sandbox and the universal checks -------------------------------------


@dataclass
class Lab:
    root: Path  # the case's sandbox and the working directory of every process it starts
    small: Small
    basetemp: Path
    own: set[Path] = field(default_factory=set)  # inputs the test itself wrote
    writable: list[Path] = field(default_factory=list)  # where shardrun may write: output root, log dir
    committed: dict[Path, bytes] = field(default_factory=dict)  # every batch file seen, with its bytes
    batch_sizes: list[int] = field(default_factory=list)  # users per batch file, of every batch seen
    cleanups: list[Callable[[], None]] = field(default_factory=list)

    @property
    def out(self) -> Path:
        return self.root / "out"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    def input(self, name: str, content: bytes | str) -> Path:
        path = self.root / "in" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content.encode() if isinstance(content, str) else content)
        self.own.add(path)
        return path

    def config(self, data: Path | None = None, name: str = "config.yaml",
               edit: Callable[[dict], None] | None = None) -> Path:
        """A config of the small workload (same hash as the reference) writing under this sandbox."""
        (self.root / "in").mkdir(exist_ok=True)
        path = write_config(self.root / "in" / name, data or self.small.data, self.root,
                            surrogates=SURROGATES, k_grid=K_GRID)
        if edit is not None:
            raw = yaml.safe_load(path.read_text())
            edit(raw)
            path.write_text(yaml.safe_dump(raw, sort_keys=False))
        self.own.add(path)
        return path

    def observe(self, shard_dir: Path, skip: tuple[Path, ...] = ()) -> int:
        """Every batch file in results/ is a whole commit (its checksum holds, each user once with one row
        per mode); remember its bytes. Returns the number of committed users."""
        users: list[str] = []
        for path in batch_files(shard_dir):
            if path in skip:
                continue
            payload = path.read_bytes()
            batch = decode_batch(payload)  # a torn or changed batch fails here
            for record in batch.records:
                assert sorted(row["feature_mode"] for row in record["rows"]) == sorted(MODES), path
                assert all(row["user_id"] == record["user_id"] for row in record["rows"]), path
                users.append(record["user_id"])
            if path not in self.committed:
                self.batch_sizes.append(len(batch.records))
            self.committed[path] = payload
        assert len(users) == len(set(users)), f"a user committed twice in {shard_dir}: {sorted(users)}"
        return len(users)


def snapshot(*roots: Path, skip: tuple[str, ...] = ()) -> dict[Path, tuple[int, int]]:
    files = {}
    for root in roots:
        for base, dirs, names in os.walk(root):
            dirs[:] = [d for d in dirs if d not in skip]
            for name in names:
                path = Path(base) / name
                try:
                    stat = path.lstat()
                except FileNotFoundError:
                    continue
                files[path] = (stat.st_size, stat.st_mtime_ns)
    return files


REPO_SKIP = (".venv", ".git", "__pycache__", ".pytest_cache")


@pytest.fixture
def lab(small, tmp_path, tmp_path_factory):
    lab = Lab(root=tmp_path, small=small, basetemp=tmp_path_factory.getbasetemp())
    lab.writable = [lab.out, lab.logs]
    yield lab
    for cleanup in reversed(lab.cleanups):
        cleanup()


# Names shardrun gives, by the kind of dir that holds them. A user id never becomes one of them.
NAME_RULES = {
    "run": (r"run\.json", r"launcher\.json", r"\.launcher\.lock", r"\.merged\.merge-lock", r"\.[^/]+\.tmp"),
    "shard": (r"shard\.json", r"status\.json", r"lock", r"lease", r"shard\.log", r"errors\.jsonl", r"hs_err_pid\d+\.log",
              r"\.[^/]+\.tmp"),
    "results": (r"b-\d{6}\.jsonl",),
    "quarantine": (r"b-\d{6}\.jsonl\.\d+",),
    "tmp": (r"\.[^/]+\.tmp",),
    "merged": (r"results\.csv", r"results\.parquet", r"merge_report\.json", r"validation\.json", r"summary\.png",
               r"run\.png", r"trace\.tsv",
               r"\.[^/]+\.tmp"),
    "logs": (r"shard\d+\.log",),
}
SUBDIRS = {
    "run": ((r"shard-\d+-of-\d+", "shard"), (r"merged", "merged")),
    "shard": ((r"results", "results"), (r"\.tmp", "tmp")),
    "results": ((r"quarantine", "quarantine"),),
}


def assert_shardrun_names(path: Path, kind: str) -> None:
    for child in path.iterdir():
        if child.is_dir():
            sub = [k for pattern, k in SUBDIRS.get(kind, ()) if re.fullmatch(pattern, child.name)]
            assert sub, f"unexpected dir {child!r} in a {kind} dir"
            assert_shardrun_names(child, sub[0])
        else:
            assert any(re.fullmatch(p, child.name) for p in NAME_RULES[kind]), f"unexpected file {child!r}"


def universal_checks(lab: Lab, before: dict) -> None:
    # Nothing committed is ever lost.
    for path, payload in lab.committed.items():
        assert path.is_file(), f"committed {path} was lost"
        assert path.read_bytes() == payload, f"committed {path} changed"
    # Nothing escapes: outside the writable dirs, nothing changed ...
    after = snapshot(lab.basetemp, REPO, skip=REPO_SKIP)
    changed = {p for p in set(before) | set(after) if before.get(p) != after.get(p)}
    allowed = [*lab.writable]
    escaped = sorted(p for p in changed if p not in lab.own and not any(p.is_relative_to(a) for a in allowed))
    assert not escaped, f"written outside the run and log dirs: {escaped[:10]}"
    # ... and inside them every name is one shardrun gives.
    if lab.out.is_dir():
        for entry in lab.out.iterdir():
            assert entry.is_dir(), f"unexpected file {entry!r} in the output root"
            assert_shardrun_names(entry, "merged" if entry.name.startswith("merged") else "run")
    if lab.logs.is_dir():
        assert_shardrun_names(lab.logs, "logs")


# --- running shardrun -------------------------------------------------------------------------


# Group commit as users meet it, on the small workload's short users: a batch file of one to a few users.
COMMIT_INTERVAL = "0.2"
# The batches of the group-commit cases (tests/stand_in_worker.py's STAND_IN_COMMIT_EVERY_USERS).
USERS_PER_BATCH = 3
# Users of about 0.1 s (a cooldown between them): a case that acts "after N commits" on a running shard
# finds users left to do when the commits (in batches) show, whatever the machine's speed.
SLOWED = ("--cooldown", "0.1")


def worker_command(config: Path, *args: str) -> list[str]:
    interval = () if "--commit-interval" in args else ("--commit-interval", COMMIT_INTERVAL)
    return [sys.executable, "-m", "shardrun", "run", "--config", str(config), "--full", *interval, *args]


def run(lab: Lab, command: list[str], env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(command, cwd=lab.root, capture_output=True, text=True, timeout=300,
                          env={**os.environ, **(env or {})})


def start(lab: Lab, command: list[str], **kwargs) -> subprocess.Popen:
    """A process for the case to drive; killed at teardown if the case left it running (a failed case
    must not leave a shard writing into the next one's files)."""
    process = subprocess.Popen(command, cwd=lab.root, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               **kwargs)
    lab.cleanups.append(lambda: stop_if_running(process))
    return process


def stop_if_running(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.kill()
        process.wait(timeout=60)


def resume(lab: Lab, config: Path, shard_dir: Path) -> subprocess.CompletedProcess:
    result = run(lab, worker_command(config, "--resume", str(shard_dir)))
    assert result.returncode == 0, result.stdout + result.stderr
    assert read_status(shard_dir)["state"] == "completed"
    return result


def merged_values(lab: Lab, run_dir: Path, in_process: bool = False) -> pd.DataFrame:
    """merge_shard_results --run RUN (in this process when asked: the same code, without the start-up)."""
    if in_process:
        assert merge_shards(shard_dirs_of_run(run_dir), run_dir / "merged").complete
    else:
        shardrun("merge", "--run", str(run_dir), "--output", str(run_dir / "merged"), cwd=lab.root)
    merged = analysis_values(run_dir / "merged")
    assert not merged.duplicated(["user_id", "feature_mode"]).any()
    return merged


def committed_count(shard_dir: Path) -> int:
    return committed_user_count(shard_dir)


def wait_for_commits(process: subprocess.Popen, shard_dir: Path, n: int) -> None:
    wait_for(lambda: committed_count(shard_dir) >= n, process=process, every=0.005)


def output_of(process: subprocess.Popen) -> str:
    return process.communicate(timeout=300)[0]


@dataclass
class Outcome:
    exit_code: int | None
    output: str = ""
    facts: dict = field(default_factory=dict)  # values for the message fragments and the checks
    recovered: pd.DataFrame | None = None  # merged analysis values after the documented recovery


# --- 1. SIGKILL at random points ---------------------------------------------------------------


@dataclass(frozen=True)
class KillPoint:
    """Where a SIGKILL lands: `delay` seconds after the process starts, but no later than its first
    new commit (start-up: config, data, run.json, shard.json, lock, tmp clean-up, JVM); or, when
    `after_commits` > 0, `delay` seconds after its `after_commits`-th new commit (the user loop)."""

    after_commits: int
    delay: float


def kill_plan(small: Small) -> list[list[KillPoint]]:
    """Seeded: odd trials are first killed in start-up, even ones in the loop; every third trial is
    killed again in its resume (in start-up after a loop kill, in the loop after a start-up kill)."""
    rng = random.Random(KILL_SEED)

    def in_start_up() -> KillPoint:
        return KillPoint(0, rng.uniform(0.05, 0.95) * small.first_commit_seconds)

    def in_loop(most: int) -> KillPoint:
        return KillPoint(rng.randint(1, most), rng.uniform(0.0, 0.03))

    plans = []
    for trial in range(KILL_TRIALS):
        plan = [in_start_up() if trial % 2 else in_loop(5)]
        if trial % 3 == 2:
            plan.append(in_loop(3) if trial % 2 else in_start_up())
        plans.append(plan)
    return plans


def kill_at(process: subprocess.Popen, shard_dir: Path, point: KillPoint) -> None:
    started = time.monotonic()
    before = committed_count(shard_dir)
    if point.after_commits:
        wait_for(lambda: committed_count(shard_dir) >= before + point.after_commits, process=process, every=0.002)
        time.sleep(point.delay)
    else:
        while (time.monotonic() - started < point.delay and committed_count(shard_dir) == before
               and process.poll() is None):
            time.sleep(0.002)
    process.send_signal(signal.SIGKILL)


def sigkill_trial(lab: Lab, config: Path, trial: int, points: list[KillPoint]) -> list[tuple[int, int, int]]:
    """Kill at each point, resume until complete, merge; returns (trial, kill, users committed after it)."""
    run_dir = lab.out / f"trial-{trial:02d}"
    shard_dir = run_dir / "shard-0-of-1"

    def continuation() -> list[str]:
        """What a user runs next: the shard dir if it has an identity, else the same run again."""
        if (shard_dir / "shard.json").is_file():
            return ["--resume", str(shard_dir)]
        return ["--shard", "0/1", "--out", str(run_dir)]

    landed = []
    counts = [0]
    for kill, point in enumerate(points):
        victim = start(lab, worker_command(config, *continuation()))
        kill_at(victim, shard_dir, point)
        output = output_of(victim)
        assert victim.returncode == -signal.SIGKILL, f"trial {trial}: ended before the kill {point}\n{output}"
        assert "Traceback" not in output, output
        counts.append(lab.observe(shard_dir) if shard_dir.is_dir() else 0)
        assert counts[-1] >= counts[-2], f"trial {trial}: committed users went from {counts[-2]} to {counts[-1]}"
        assert not (shard_dir / "results" / "quarantine").exists()
        landed.append((trial, kill, counts[-1]))
    finished = run(lab, worker_command(config, *continuation()))
    assert finished.returncode == 0 and "Traceback" not in finished.stderr, finished.stderr
    status = read_status(shard_dir)
    assert status["state"] == "completed" and status["users_done"] == status["users_total"] == 10
    assert status["resumed_with_done"] == counts[-1]
    assert not (shard_dir / "results" / "quarantine").exists(), "resume found a torn result file"
    assert lab.observe(shard_dir) == 10
    with MERGE_LOCK:  # in this process: matplotlib's pyplot is not thread-safe
        merged = merged_values(lab, run_dir, in_process=True)
    pd.testing.assert_frame_equal(merged, lab.small.reference, check_exact=True, obj=f"trial {trial}")
    return landed


MERGE_LOCK = threading.Lock()


def sigkill_trials(lab: Lab) -> Outcome:
    """The trials, two at a time (the kill points follow each process's own progress, not the clock alone)."""
    config = lab.config()
    with ThreadPoolExecutor(max_workers=2) as pool:
        trials = [pool.submit(sigkill_trial, lab, config, trial, points)
                  for trial, points in enumerate(kill_plan(lab.small))]
        landed = [kill for trial in trials for kill in trial.result()]
    return Outcome(-signal.SIGKILL, facts={"landed": landed})


def kills_hit_start_up_and_the_loop(lab: Lab, outcome: Outcome) -> None:
    """The trials killed shards before any commit and between commits (not all at one point)."""
    landed = outcome.facts["landed"]
    assert len(landed) == KILL_TRIALS + sum(1 for d in kill_plan(lab.small) if len(d) > 1)
    after = [count for _, _, count in landed]
    assert 0 in after, landed
    assert any(0 < count < 10 for count in after), landed
    assert max(lab.batch_sizes) >= 2, f"no batch of several users: {lab.batch_sizes}"  # group commit was exercised


# --- 2. SIGTERM drain -----------------------------------------------------------------------------


def sigterm_drain(lab: Lab) -> Outcome:
    config = lab.config()
    run_dir = lab.out / "run"
    shard_dir = run_dir / "shard-0-of-1"
    # status.json written every 50 ms (at most once a second by default), so the case sees the user in flight;
    # slowed, so that users are left when it does
    shard = start(lab, worker_command(config, "--shard", "0/1", "--out", str(run_dir), "--heartbeat", "0.05",
                                      *SLOWED))

    def in_flight_after_two() -> str | None:
        status = read_status(shard_dir)
        return status.get("current_user") if status.get("users_done", 0) >= 2 else None

    in_flight = wait_for(in_flight_after_two, process=shard, every=0.005)
    shard.send_signal(signal.SIGTERM)
    output = output_of(shard)
    return Outcome(shard.returncode, output, facts={"run": run_dir, "shard_dir": shard_dir, "in_flight": in_flight,
                                                   "config": config})


def drained_whole(lab: Lab, outcome: Outcome) -> None:
    """state interrupted; users_done = the files committed; the user in flight was committed whole."""
    shard_dir = outcome.facts["shard_dir"]
    status = read_status(shard_dir)
    committed = lab.observe(shard_dir)
    assert status["state"] == "interrupted" and status["current_user"] is None
    assert status["users_done"] == committed and 0 < committed < 10
    assert outcome.facts["in_flight"] in committed_users(shard_dir)
    assert list((shard_dir / ".tmp").iterdir()) == []


def resume_run(lab: Lab, outcome: Outcome) -> pd.DataFrame:
    shard_dir = outcome.facts["shard_dir"]
    resume(lab, outcome.facts["config"], shard_dir)
    lab.observe(shard_dir)
    return merged_values(lab, outcome.facts["run"])


# --- 3. torn and partial result files -------------------------------------------------------------


def torn_files(lab: Lab) -> Outcome:
    run_dir = lab.out / "run"
    shutil.copytree(lab.small.run, run_dir, ignore=shutil.ignore_patterns("merged"))
    shard_dir = run_dir / "shard-0-of-1"
    by_user = {user: batch_of(shard_dir, user) for user in ("user-01", "user-04", "user-06", "user-08", "user-09")}
    real = by_user["user-01"].read_bytes()
    injected = {
        by_user["user-01"]: real[: len(real) // 2],  # a truncated copy of its own real file
        by_user["user-04"]: b"\x00\xff\x13 not json at all \x00" * 7,  # garbage
        by_user["user-06"]: b"",  # zero length (a crash before the data reached the disk)
    }
    # another user's whole batch under this one's name: whole and checked, but user-08 is no longer in it
    by_user["user-08"].write_bytes(by_user["user-09"].read_bytes())
    for path, payload in injected.items():
        path.write_bytes(payload)
    strays = [shard_dir / ".tmp" / ".k3j2h1.tmp", shard_dir / ".status.json.x1y2.tmp"]
    for stray in strays:
        stray.write_bytes(real)
    lab.observe(shard_dir, skip=(*injected, by_user["user-08"], by_user["user-09"]))
    config = lab.config()
    result = run(lab, worker_command(config, "--resume", str(shard_dir)))
    return Outcome(result.returncode, result.stdout + result.stderr,
                   facts={"run": run_dir, "shard_dir": shard_dir, "injected": injected, "strays": strays,
                          "repeated": by_user["user-09"]})


def torn_quarantined_and_recomputed(lab: Lab, outcome: Outcome) -> None:
    """The three damaged files are in results/quarantine/ as they were, and so is the later of the two
    batches that hold user-09 alone (a batch that adds nothing); the users of the damaged files, and
    user-08, whose batch was overwritten by user-09's, were computed again."""
    shard_dir, injected = outcome.facts["shard_dir"], outcome.facts["injected"]
    repeated = outcome.facts["repeated"]
    quarantined = sorted((shard_dir / "results" / "quarantine").iterdir())
    set_aside = {**{path.name: payload for path, payload in injected.items()}, repeated.name: None}
    assert sorted(p.name.split(".jsonl.")[0] + ".jsonl" for p in quarantined) == sorted(set_aside)
    assert sorted(p.read_bytes() for p in quarantined if not p.name.startswith(repeated.name)) == sorted(
        injected.values())
    assert not repeated.exists() and committed_users(shard_dir).count("user-09") == 1
    assert not any(stray.exists() for stray in outcome.facts["strays"])
    status = read_status(shard_dir)
    assert (status["state"], status["resumed_with_done"], status["users_done"]) == ("completed", 6, 10)
    assert lab.observe(shard_dir) == 10


def merge_run(lab: Lab, outcome: Outcome) -> pd.DataFrame:
    return merged_values(lab, outcome.facts["run"])


# --- 4. full disk: a file-size limit, and a tmpfs that fills up -----------------------------------


def file_size_limit(lab: Lab) -> Outcome:
    """prlimit(2) on the running shard: RLIMIT_FSIZE below a result file, above status.json."""
    config = lab.config()
    run_dir = lab.out / "run"
    shard_dir = run_dir / "shard-0-of-1"
    # one user per batch, so that every batch to come is as large as those already written
    shard = start(lab, worker_command(config, "--shard", "0/1", "--out", str(run_dir), "--heartbeat", "0.05",
                                      "--commit-interval", "0", *SLOWED))
    wait_for_commits(shard, shard_dir, 3)
    smallest_result = min(p.stat().st_size for p in batch_files(shard_dir))
    limit = smallest_result - 64
    # the premise: the failed state (status.json with the error in it) still fits, a user does not
    assert (shard_dir / "status.json").stat().st_size + 400 < limit
    resource.prlimit(shard.pid, resource.RLIMIT_FSIZE, (limit, limit))
    before = committed_count(shard_dir)
    output = output_of(shard)
    return Outcome(shard.returncode, output, facts={"run": run_dir, "shard_dir": shard_dir, "config": config,
                                                   "before": before})


def stopped_failed_with_commits_intact(lab: Lab, outcome: Outcome) -> None:
    """state failed with the error; the users committed before are whole; no partial file anywhere."""
    shard_dir = outcome.facts["shard_dir"]
    status = read_status(shard_dir)
    assert status["state"] == "failed" and "file size limit" in status["last_error"]
    committed = lab.observe(shard_dir)
    assert outcome.facts["before"] <= committed < 10 and status["users_done"] == committed
    assert list((shard_dir / ".tmp").iterdir()) == []


def needs_root_mounts() -> None:
    if os.geteuid() != 0 or subprocess.run(["unshare", "-m", "true"], capture_output=True).returncode != 0:
        pytest.skip("needs root with mount rights (tmpfs, bind mounts); see docs/RELIABILITY.md")


def fill_to_the_brim(filler: Path) -> Path:
    """A file that takes every free byte of its filesystem (a real ENOSPC for whoever writes next)."""
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
    try:
        while True:
            os.write(fd, b"\0" * 4096)
    except OSError as exc:
        assert exc.errno == errno.ENOSPC
    finally:
        os.close(fd)
    return filler


def disk_full(lab: Lab) -> Outcome:
    """A real ENOSPC: the run dir on a 2 MiB tmpfs that a filler file fills after three commits."""
    needs_root_mounts()
    disk = lab.out  # the output root is the small disk
    disk.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(disk)], check=True)
    lab.cleanups.append(lambda: subprocess.run(["umount", "-l", str(disk)], check=True))
    config = lab.config()
    run_dir = disk / "run"
    shard_dir = run_dir / "shard-0-of-1"
    shard = start(lab, worker_command(config, "--shard", "0/1", "--out", str(run_dir), "--heartbeat", "0.05",
                                      *SLOWED))
    wait_for_commits(shard, shard_dir, 3)
    filler = fill_to_the_brim(disk / "filler")
    before = committed_count(shard_dir)
    output = output_of(shard)
    return Outcome(shard.returncode, output, facts={"run": run_dir, "shard_dir": shard_dir, "config": config,
                                                   "before": before, "filler": filler})


def commits_intact(lab: Lab, outcome: Outcome) -> None:
    """The users committed before the fault are whole; the shard did not finish; no partial file."""
    shard_dir = outcome.facts["shard_dir"]
    committed = lab.observe(shard_dir)
    assert outcome.facts["before"] <= committed < 10
    assert list((shard_dir / ".tmp").iterdir()) == []
    assert read_status(shard_dir)["state"] != "completed"


def free_space_and_resume(lab: Lab, outcome: Outcome) -> pd.DataFrame:
    outcome.facts["filler"].unlink()
    return resume_run(lab, outcome)


# --- 5. read-only output dirs ---------------------------------------------------------------------


def read_only_root(lab: Lab, command: Callable[[Lab, Path], list[str]]) -> Outcome:
    """The output root read-only from the start: a read-only bind mount, in a private mount namespace
    of the command alone (as root, chmod would not stop a write); for other users a chmod 0555."""
    config = lab.config()
    lab.out.mkdir()
    if os.geteuid() == 0:
        needs_root_mounts()
        wrapped = ["unshare", "-m", "--propagation", "private", "sh", "-c",
                   'mount --bind "$0" "$0" && mount -o remount,ro,bind "$0" && exec "$@"', str(lab.out),
                   *command(lab, config)]
        words = "read-only"
    else:
        lab.out.chmod(0o555)
        lab.cleanups.append(lambda: lab.out.chmod(0o755))
        wrapped, words = command(lab, config), "permission denied"
    result = run(lab, wrapped)
    return Outcome(result.returncode, result.stdout + result.stderr, facts={"out": lab.out, "words": words})


def read_only_root_worker(lab: Lab) -> Outcome:
    return read_only_root(lab, lambda lab, config: worker_command(config, "--shard", "0/1"))


def read_only_root_launcher(lab: Lab) -> Outcome:
    return read_only_root(lab, lambda lab, config: [sys.executable, "-m", "shardrun", "launch", "--config",
                                                    str(config), "--shards", "2"])


def output_root_empty(lab: Lab, outcome: Outcome) -> None:
    """Nothing was written: the output root is as empty as it was."""
    assert list(lab.out.iterdir()) == []


def read_only_mid_run(lab: Lab) -> Outcome:
    """The shard dir turns read-only after three commits: a read-only bind mount over it, made inside
    the shard's own mount namespace (nsenter), so nothing outside the shard process sees it."""
    config = lab.config()
    run_dir = lab.out / "run"
    shard_dir = run_dir / "shard-0-of-1"
    # --cooldown keeps the shard running (between users) while the mount is made after its third commit
    command = worker_command(config, "--shard", "0/1", "--out", str(run_dir), "--heartbeat", "0.05",
                             "--cooldown", "0.3")
    if os.geteuid() == 0:
        needs_root_mounts()
        shard = start(lab, ["unshare", "-m", "--propagation", "private", *command])
        wait_for_commits(shard, shard_dir, 3)
        # The remount fails with EBUSY while the shard holds a file open for writing through the new
        # bind mount (a status.json or result temp file, every few ms), so it is retried until it lands
        # between two writes.
        subprocess.run(["nsenter", "-t", str(shard.pid), "-m", "sh", "-c",
                        'mount --bind "$0" "$0" && for attempt in $(seq 500); do'
                        ' mount -o remount,ro,bind "$0" 2>/dev/null && exit 0; sleep 0.01; done;'
                        ' mount -o remount,ro,bind "$0"', str(shard_dir)], check=True)
        words = "read-only"
    else:
        shard = start(lab, command)
        wait_for_commits(shard, shard_dir, 3)
        for path in (shard_dir, shard_dir / "results", shard_dir / ".tmp"):
            path.chmod(0o555)
        words = "permission denied"
    before = committed_count(shard_dir)
    output = output_of(shard)
    if os.geteuid() != 0:
        for path in (shard_dir, shard_dir / "results", shard_dir / ".tmp"):
            path.chmod(0o755)
    return Outcome(shard.returncode, output, facts={"run": run_dir, "shard_dir": shard_dir, "config": config,
                                                   "before": before, "words": words})


# --- 6. two processes on one shard ----------------------------------------------------------------


def sigterm_during_exit(lab: Lab) -> Outcome:
    """SIGTERM to a shard whose users are all committed, while its process exits (the stand-in holds the
    exit open with the default signal actions back, as at the end of Python's finalization)."""
    config = lab.config()
    run_dir = lab.out / "run"
    shard = start(lab, stand_in_worker("--config", str(config), "--full", "--shard", "0/1", "--out", str(run_dir)),
                  env={**os.environ, "STAND_IN_SLOW_EXIT": "3"})
    wait_for(lambda: "exiting" in (shard.stdout.readline() or ""), process=shard)
    shard.send_signal(signal.SIGTERM)
    return Outcome(shard.returncode if shard.wait(timeout=60) is not None else None, output_of(shard),
                   facts={"run": run_dir, "shard_dir": run_dir / "shard-0-of-1"})


def completed_not_killed(lab: Lab, outcome: Outcome) -> None:
    status = read_status(outcome.facts["shard_dir"])
    assert status["state"] == "completed" and status["users_done"] == 10
    assert lab.observe(outcome.facts["shard_dir"]) == 10


def second_process_while_the_first_runs(lab: Lab, command: Callable[..., list[str]], env: dict | None = None) -> Outcome:
    """`command(config, *args)` starts a shard, then the same command resumes its dir while it still runs.

    The first is stopped (SIGSTOP) after its first commit until the second has ended, so it still holds
    its shard dir when the second gets there, however long the second's start takes on a busy machine
    (a stopped process keeps its lock, and on the same host its lease). --cooldown leaves users to do
    after the first commit."""
    config = lab.config()
    run_dir = lab.out / "run"
    shard_dir = run_dir / "shard-0-of-1"
    first = start(lab, command(config, "--shard", "0/1", "--out", str(run_dir), "--cooldown", "0.3"),
                  env={**os.environ, **(env or {})})
    wait_for_commits(first, shard_dir, 1)
    first.send_signal(signal.SIGSTOP)
    committed_before = committed_count(shard_dir)
    try:
        second = run(lab, command(config, "--resume", str(shard_dir)), env=env)
        holder_alive = first.poll() is None
    finally:
        first.send_signal(signal.SIGCONT)
    first_output = output_of(first)
    return Outcome(second.returncode, second.stdout + second.stderr,
                   facts={"run": run_dir, "shard_dir": shard_dir, "holder_pid": first.pid, "holder_alive": holder_alive,
                          "committed_before": committed_before, "first_exit": first.returncode,
                          "first_output": first_output})


def second_process(lab: Lab) -> Outcome:
    return second_process_while_the_first_runs(lab, worker_command)


def first_process_unharmed(lab: Lab, outcome: Outcome) -> None:
    """The holder was running when the second was refused, and went on to complete its shard, every user once."""
    assert outcome.facts["holder_alive"] and outcome.facts["committed_before"] < 10
    assert outcome.facts["first_exit"] == 0, outcome.facts["first_output"]
    assert "Traceback" not in outcome.facts["first_output"]
    status = read_status(outcome.facts["shard_dir"])
    assert status["state"] == "completed" and status["pid"] == outcome.facts["holder_pid"]
    assert lab.observe(outcome.facts["shard_dir"]) == 10


def stale_lock(lab: Lab) -> Outcome:
    config = lab.config()
    run_dir = lab.out / "run"
    shard_dir = run_dir / "shard-0-of-1"
    holder = start(lab, worker_command(config, "--shard", "0/1", "--out", str(run_dir), *SLOWED))
    wait_for_commits(holder, shard_dir, 2)
    holder.send_signal(signal.SIGKILL)
    output_of(holder)
    lock_text = json.loads((shard_dir / "lock").read_text())
    assert lock_text["pid"] == holder.pid  # the dead holder's lock file is still there
    lab.observe(shard_dir)
    result = run(lab, worker_command(config, "--resume", str(shard_dir)))
    return Outcome(result.returncode, result.stdout + result.stderr,
                   facts={"run": run_dir, "shard_dir": shard_dir, "dead_pid": holder.pid})


def resumed_past_the_stale_lock(lab: Lab, outcome: Outcome) -> None:
    """The resume took the lock (its own pid is in the lock file) and completed the shard."""
    shard_dir = outcome.facts["shard_dir"]
    status = read_status(shard_dir)
    assert status["state"] == "completed" and status["resumed_with_done"] >= 2
    assert json.loads((shard_dir / "lock").read_text())["pid"] == status["pid"] != outcome.facts["dead_pid"]
    assert lab.observe(shard_dir) == 10


# --- 7. duplicate and conflicting shard dirs in a merge ------------------------------------------


def copy_of_reference(lab: Lab, name: str) -> Path:
    copy = lab.out / name
    shutil.copytree(lab.small.run, copy, ignore=shutil.ignore_patterns("merged"))
    return copy / "shard-0-of-1"


def merge_duplicates(lab: Lab) -> Outcome:
    copy = copy_of_reference(lab, "copy")
    output = lab.out / "merged-dup"
    result = run(lab, [sys.executable, "-m", "shardrun", "merge", "--shards", str(lab.small.run / "shard-0-of-1"),
                       str(copy), "--output", str(output)])
    reference = lab.small.reference
    return Outcome(result.returncode, result.stdout + result.stderr,
                   facts={"merged": output, "rows": len(reference), "users": reference["user_id"].nunique()},
                   recovered=analysis_values(output) if result.returncode == 0 else None)


def duplicates_dropped(lab: Lab, outcome: Outcome) -> None:
    """Every row came twice and identical: all dropped as duplicates; the set is complete."""
    report = json.loads((outcome.facts["merged"] / "merge_report.json").read_text())
    assert report["complete"] is True and report["conflicts"] == []
    assert report["identical_duplicates"] == report["rows"] == len(lab.small.reference)


def merge_conflict(lab: Lab) -> Outcome:
    copy = copy_of_reference(lab, "edited")
    def raise_ais_k2(record: dict) -> None:
        row = next(r for r in record["rows"] if r["feature_mode"] == "composite")
        row["ais_k2_bits"] = row["ais_k2_bits"] + 0.125

    # the checksum rewritten too: rows that really differ (a non-deterministic computation), not a hand
    # edit, which merge would leave out as untrusted (merge-hand-edited-result-file)
    edit_batch(batch_of(copy, "user-03"), raise_ais_k2, keep_checksum=False)
    output = lab.out / "merged-conflict"
    result = run(lab, [sys.executable, "-m", "shardrun", "merge", "--shards", str(lab.small.run / "shard-0-of-1"),
                       str(copy), "--output", str(output)])
    return Outcome(result.returncode, result.stdout + result.stderr, facts={"merged": output, "copy": copy})


def conflict_reported(lab: Lab, outcome: Outcome) -> None:
    """merge_report.json: incomplete, exactly one conflict: that key, that column, both dirs."""
    report = json.loads((outcome.facts["merged"] / "merge_report.json").read_text())
    assert report["complete"] is False
    [conflict] = report["conflicts"]
    assert conflict["key"] == {"user_id": "user-03", "feature_mode": "composite"}
    assert [d["column"] for d in conflict["differences"]] == ["ais_k2_bits"]
    first, second = conflict["differences"][0]["values"]
    assert abs(abs(second - first) - 0.125) < 1e-12
    assert str(outcome.facts["copy"]) in conflict["dirs"]
    assert report["identical_duplicates"] == report["rows"] - 1


def copy_for_edit(lab: Lab, user: str) -> tuple[Path, Path, Path]:
    """A copy of the reference run, every result file observed but `user`'s (the case changes it)."""
    run_dir = lab.out / "run"
    shutil.copytree(lab.small.run, run_dir, ignore=shutil.ignore_patterns("merged"))
    shard_dir = run_dir / "shard-0-of-1"
    victim = batch_of(shard_dir, user)
    lab.observe(shard_dir, skip=(victim,))
    return run_dir, shard_dir, victim


def merge_after(lab: Lab, run_dir: Path, shard_dir: Path, victim: Path, user: str) -> Outcome:
    output = lab.out / "merged-untrusted"
    result = run(lab, [sys.executable, "-m", "shardrun", "merge", "--run", str(run_dir), "--output", str(output)])
    return Outcome(result.returncode, result.stdout + result.stderr,
                   facts={"run": run_dir, "shard_dir": shard_dir, "victim": victim, "payload": victim.read_bytes(),
                          "user": user, "merged": output, "config": lab.config()})


EDITED_USER = "user-04"
SWAPPED_USER = "user-05"


def hand_edited(lab: Lab) -> Outcome:
    """te_hour_p of one row changed in place in its committed file, as by hand (the checksum not)."""
    run_dir, shard_dir, victim = copy_for_edit(lab, EDITED_USER)
    def change_te_hour_p(record: dict) -> None:
        row = next(r for r in record["rows"] if r["feature_mode"] == "composite")
        row["te_hour_p"] = 0.0123 if row["te_hour_p"] != 0.0123 else 0.0456

    edit_batch(victim, change_te_hour_p)
    return merge_after(lab, run_dir, shard_dir, victim, EDITED_USER)


def swapped_in(lab: Lab) -> Outcome:
    """One user's committed file replaced by the same user's file of a run of another config."""
    other = lab.config(name="other.yaml", edit=lambda raw: raw.update(surrogates=SURROGATES // 2))
    other_run = lab.out / "other"
    result = run(lab, worker_command(other, "--shard", "0/1", "--out", str(other_run), "--commit-interval", "0"))
    assert result.returncode == 0, result.stdout + result.stderr
    run_dir, shard_dir, victim = copy_for_edit(lab, SWAPPED_USER)
    victim.write_bytes((other_run / "shard-0-of-1" / "results" / victim.name).read_bytes())
    return merge_after(lab, run_dir, shard_dir, victim, SWAPPED_USER)


GARBLED_USER = "user-06"


def garbled(lab: Lab) -> Outcome:
    """One user's committed batch file overwritten with bytes that are no batch at all: no user can be read
    from it, so only the file itself can be named."""
    run_dir, shard_dir, victim = copy_for_edit(lab, GARBLED_USER)
    victim.write_bytes(b"\x00\x17 not a batch, nor JSON \xff\n")
    return merge_after(lab, run_dir, shard_dir, victim, GARBLED_USER)


def unreadable_file_reported(lab: Lab, outcome: Outcome) -> None:
    """merge_report.json: incomplete; the file named in untrusted_files with no user (none could be read),
    its user missing; the file left in place byte for byte."""
    report = json.loads((outcome.facts["merged"] / "merge_report.json").read_text())
    assert report["complete"] is False
    [untrusted] = report["untrusted_files"]
    assert (untrusted["file"], untrusted["user_id"]) == (outcome.facts["victim"].name, None)
    assert [m["user_id"] for m in report["missing_users"]] == [outcome.facts["user"]]
    assert outcome.facts["victim"].read_bytes() == outcome.facts["payload"]


def untrusted_reported(lab: Lab, outcome: Outcome) -> None:
    """merge_report.json: incomplete; that file listed as untrusted, its user missing; the file itself is
    left in place, byte for byte (merge reports, the resume decides); no row of that user in the set."""
    report = json.loads((outcome.facts["merged"] / "merge_report.json").read_text())
    assert report["complete"] is False
    [untrusted] = report["untrusted_files"]
    assert (untrusted["file"], untrusted["user_id"]) == (outcome.facts["victim"].name, outcome.facts["user"])
    assert [m["user_id"] for m in report["missing_users"]] == [outcome.facts["user"]]
    assert report["conflicts"] == [] and report["rows"] == len(lab.small.reference) - 2
    assert outcome.facts["victim"].read_bytes() == outcome.facts["payload"]
    merged = pd.read_parquet(outcome.facts["merged"] / "results.parquet")
    assert outcome.facts["user"] not in set(merged["user_id"])


def resume_quarantines_and_recomputes(lab: Lab, outcome: Outcome) -> pd.DataFrame:
    """The documented fix: resume the shard; the untrusted file goes to results/quarantine/ byte for byte
    and its user is computed again (the same numbers as before the edit); the merge equals the reference."""
    shard_dir = outcome.facts["shard_dir"]
    result = resume(lab, outcome.facts["config"], shard_dir)
    assert "cannot be trusted" in result.stdout + result.stderr and "will be recomputed" in result.stdout + result.stderr
    [quarantined] = sorted((shard_dir / "results" / "quarantine").iterdir())
    assert quarantined.read_bytes() == outcome.facts["payload"]
    assert read_status(shard_dir)["resumed_with_done"] == 9
    lab.observe(shard_dir)
    return merged_values(lab, outcome.facts["run"])


# --- 8. hostile user ids in the data -------------------------------------------------------------

HOSTILE = {  # renamed users of the small data: id in the data <- the reference user whose rows it has
    "../escape": "user-00",
    "/abs/path": "user-01",
    "a\x00b": "user-02",
    "sep/ar\\\\ator": "user-03",
    "x" * 5000: "user-04",
    "..": "user-05",
}
# Columns that depend only on a user's series (the surrogates are seeded by the user id, so the null
# means, p-values and the selected k may differ under another id).
SERIES_ONLY = ["n_obs", "base", "entropy_bits"] + [f"ais_k{k}_bits" for k in K_GRID]


def hostile_ids(lab: Lab) -> Outcome:
    raw = pd.read_csv(lab.small.data, dtype=str)
    raw["who"] = raw["who"].map({v: k for k, v in HOSTILE.items()}).fillna(raw["who"])
    data = lab.input("hostile.csv", raw.to_csv(index=False))
    assert set(pd.read_csv(data, dtype=str)["who"]) >= set(HOSTILE)  # the CSV keeps NUL and the rest
    config = lab.config(data)
    result = run(lab, [sys.executable, "-m", "shardrun", "launch", "--config", str(config), "--shards", "2"])
    output = result.stdout + result.stderr
    run_dir = Path(output.split("run dir: ")[1].split()[0]) if "run dir: " in output else None
    return Outcome(result.returncode, output, facts={"run": run_dir})


def hostile_results_under_their_ids(lab: Lab, outcome: Outcome) -> None:
    """Each hostile id has its two rows in results.parquet and results.csv, computed from its own rows."""
    merged_dir = outcome.facts["run"] / "merged"
    merged = analysis_values(merged_dir)
    reference = lab.small.reference.set_index(["user_id", "feature_mode"])
    assert set(merged["user_id"]) == set(HOSTILE) | set(reference.index.get_level_values(0)) - set(HOSTILE.values())
    for hostile, original in HOSTILE.items():
        mine = merged[merged["user_id"] == hostile].set_index("feature_mode")
        assert sorted(mine.index) == sorted(MODES) and set(mine["status"]) == {"ok"}
        for mode in MODES:
            assert mine.loc[mode, SERIES_ONLY].tolist() == reference.loc[(original, mode), SERIES_ONLY].tolist()
    csv = read_result_file(merged_dir / "results.csv", ["user_id", "feature_mode", "status", "reason"])
    assert sorted(csv["user_id"].unique()) == sorted(merged["user_id"].unique())
    for shard_dir in outcome.facts["run"].glob("shard-*"):
        lab.observe(shard_dir)
    assert not Path("/abs").exists()
    for base in (lab.root, lab.out, outcome.facts["run"]):
        assert not (base / "escape").exists()


def empty_user_id(lab: Lab) -> Outcome:
    raw = pd.read_csv(lab.small.data, dtype=str)
    raw.loc[raw["who"] == "user-07", "who"] = ""
    data = lab.root / "in" / "empty-id.parquet"
    data.parent.mkdir(parents=True, exist_ok=True)
    raw.to_parquet(data, index=False)
    lab.own.add(data)
    result = run(lab, worker_command(lab.config(data), "--shard", "0/1"))
    return Outcome(result.returncode, result.stdout + result.stderr, facts={"data": data})


# --- 12. shared filesystems: no hard links, no file locks (docs/SHARED_FILESYSTEMS.md) -------------


LEASE = {"SHARDRUN_LOCK": "lease"}  # the lease forced, on this machine's filesystem (which also locks)
NO_FLOCK = {"STAND_IN_NO_FLOCK": "ENOLCK"}  # tests/stand_in_worker.py: flock as on NFS without lock support


def vfat_output_root(lab: Lab) -> Path:
    """The case's output root is a real vfat filesystem (tests/fs_support.py: no hard links, no
    RENAME_NOREPLACE), unmounted and detached at teardown after every process of the case is stopped."""
    mount = vfat_mount(lab.root / "disk" / "vfat.img", lab.out)
    mount.__enter__()
    lab.cleanups.append(lambda: mount.__exit__(None, None, None))
    lab.writable += [lab.root / "disk", lab.root / "merged"]
    return lab.out


def merged_elsewhere(lab: Lab, outcome: Outcome) -> pd.DataFrame:
    """merge_shard_results --run RUN with its output on the ordinary disk: fusefat loses the contents
    of a renamed dir (a bug of that driver), and the merge swaps its result set in by renaming a dir."""
    output = lab.root / "merged"
    shardrun("merge", "--run", str(outcome.facts["run"]), "--output", str(output), "--overwrite", cwd=lab.root)
    merged = analysis_values(output)
    assert not merged.duplicated(["user_id", "feature_mode"]).any()
    return merged


def no_hard_links(lab: Lab) -> Outcome:
    out = vfat_output_root(lab)
    config = lab.config()
    run_dir = out / "run"
    result = run(lab, worker_command(config, "--shard", "0/1", "--out", str(run_dir)))
    return Outcome(result.returncode, result.stdout + result.stderr,
                   facts={"run": run_dir, "shard_dir": run_dir / "shard-0-of-1", "config": config})


def every_user_once(lab: Lab, outcome: Outcome) -> None:
    """Completed; every user committed once, whole; no scratch file left."""
    shard_dir = outcome.facts["shard_dir"]
    status = read_status(shard_dir)
    assert status["state"] == "completed" and status["users_done"] == 10
    assert lab.observe(shard_dir) == 10
    assert list((shard_dir / ".tmp").iterdir()) == []


def crash_before_rename(lab: Lab) -> Outcome:
    """SIGKILL between the existence check and the rename of the third commit (the instant is aimed at
    by tests/stand_in_worker.py; the kill and the vfat filesystem are real)."""
    out = vfat_output_root(lab)
    config = lab.config()
    run_dir = out / "run"
    result = run(lab, stand_in_worker("--config", str(config), "--full", "--shard", "0/1", "--out", str(run_dir),
                                      "--commit-interval", "0"),  # one user per batch: the third rename is the third user
                 env={"STAND_IN_KILL_BEFORE_RENAME": "3"})
    return Outcome(result.returncode, result.stdout + result.stderr,
                   facts={"run": run_dir, "shard_dir": run_dir / "shard-0-of-1", "config": config})


def checked_but_not_renamed(lab: Lab, outcome: Outcome) -> None:
    """Two users committed; the third's whole file is still in .tmp/, its name in results/ free."""
    shard_dir = outcome.facts["shard_dir"]
    assert lab.observe(shard_dir) == 2
    (orphan,) = (shard_dir / ".tmp").iterdir()
    [record] = decode_batch(orphan.read_bytes()).records
    assert record["user_id"] not in committed_users(shard_dir)
    assert read_status(shard_dir)["state"] != "completed"


# --- group commit: a crash inside a batch's commit, a torn batch of several users ----------------------


def crash_before_batch_fsync(lab: Lab) -> Outcome:
    """SIGKILL when the third batch's bytes are written to its temporary file and its fsync is about to
    happen (the instant is aimed at by tests/stand_in_worker.py; the kill is real). Every batch holds
    three users whatever the machine's load (the stand-in's commit clock counts users, not seconds)."""
    config = lab.config()
    run_dir = lab.out / "run"
    shard_dir = run_dir / "shard-0-of-1"
    result = run(lab, stand_in_worker("--config", str(config), "--full", "--shard", "0/1", "--out", str(run_dir)),
                 env={"STAND_IN_KILL_AT_BATCH_FSYNC": "3", "STAND_IN_COMMIT_EVERY_USERS": str(USERS_PER_BATCH)})
    return Outcome(result.returncode, result.stdout + result.stderr,
                   facts={"run": run_dir, "shard_dir": shard_dir, "config": config})


def written_but_not_committed(lab: Lab, outcome: Outcome) -> None:
    """The first two batches are committed whole, of several users each; the third's bytes are whole in
    .tmp/ but it was never published, so none of its users is committed (nor counted in status.json)."""
    shard_dir = outcome.facts["shard_dir"]
    done = lab.observe(shard_dir)
    committed = batch_files(shard_dir)
    assert [path.name for path in committed] == ["b-000001.jsonl", "b-000002.jsonl"]
    assert [len(decode_batch(path.read_bytes()).records) for path in committed] == [USERS_PER_BATCH] * 2
    assert done == 2 * USERS_PER_BATCH
    (orphan,) = (shard_dir / ".tmp").iterdir()
    pending = [record["user_id"] for record in decode_batch(orphan.read_bytes()).records]
    assert len(pending) == USERS_PER_BATCH and not set(pending) & set(committed_users(shard_dir))
    assert read_status(shard_dir)["users_done"] <= done
    outcome.facts["done"] = done


def torn_batch(lab: Lab) -> Outcome:
    """A run whose users were all committed in batches of several (the stand-in's commit clock counts
    users: batches of 4, 4 and 2, whatever the machine's load); then its last batch is cut in the middle
    of a record, as by a disk that lost the end of a write; then resume."""
    config = lab.config()
    run_dir = lab.out / "run"
    shard_dir = run_dir / "shard-0-of-1"
    made = run(lab, stand_in_worker("--config", str(config), "--full", "--shard", "0/1", "--out", str(run_dir)),
               env={"STAND_IN_COMMIT_EVERY_USERS": "4"})
    assert made.returncode == 0, made.stdout + made.stderr
    *_whole, last = batch_files(shard_dir)
    lab.observe(shard_dir, skip=(last,))
    payload = last.read_bytes()
    users = [record["user_id"] for record in decode_batch(payload).records]
    assert len(users) == 2, "the premise: a last batch of several users"
    torn = payload[: payload.rindex(b'"user_id"')]  # the last record cut short
    last.write_bytes(torn)
    result = run(lab, worker_command(config, "--resume", str(shard_dir)))
    return Outcome(result.returncode, result.stdout + result.stderr,
                   facts={"run": run_dir, "shard_dir": shard_dir, "torn": last, "payload": torn, "users": users})


def torn_batch_quarantined_whole(lab: Lab, outcome: Outcome) -> None:
    """The torn batch is in results/quarantine/ byte for byte, and every one of its users (not only the
    cut one) was computed again."""
    shard_dir = outcome.facts["shard_dir"]
    [quarantined] = (shard_dir / "results" / "quarantine").iterdir()
    assert quarantined.read_bytes() == outcome.facts["payload"] and not outcome.facts["torn"].exists()
    status = read_status(shard_dir)
    assert status["state"] == "completed" and status["resumed_with_done"] == 10 - len(outcome.facts["users"])
    assert lab.observe(shard_dir) == 10


def resume_then_merge_elsewhere(lab: Lab, outcome: Outcome) -> pd.DataFrame:
    resume_every_user_once(lab, outcome)
    return merged_elsewhere(lab, outcome)


def resume_every_user_once_then_merge(lab: Lab, outcome: Outcome) -> pd.DataFrame:
    resume_every_user_once(lab, outcome)
    return merge_run(lab, outcome)


def resume_on_the_lease_then_merge(lab: Lab, outcome: Outcome) -> pd.DataFrame:
    resume_every_user_once(lab, outcome, env=LEASE)
    assert not list(outcome.facts["shard_dir"].glob("lease.taken-*"))  # the leftover of the takeover is gone
    return merge_run(lab, outcome)


def resume_every_user_once(lab: Lab, outcome: Outcome, env: dict | None = None) -> None:
    shard_dir = outcome.facts["shard_dir"]
    result = run(lab, worker_command(outcome.facts["config"], "--resume", str(shard_dir)), env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    status = read_status(shard_dir)
    assert status["state"] == "completed" and status["resumed_with_done"] == outcome.facts.get("done", 2)
    every_user_once(lab, outcome)


def kill_holder_after_two(lab: Lab, env: dict) -> dict:
    """A shard on the lease SIGKILLed after two commits: its lease is left behind."""
    config = lab.config()
    run_dir = lab.out / "run"
    shard_dir = run_dir / "shard-0-of-1"
    holder = start(lab, worker_command(config, "--shard", "0/1", "--out", str(run_dir), *SLOWED),
                   env={**os.environ, **env})
    wait_for_commits(holder, shard_dir, 2)
    holder.send_signal(signal.SIGKILL)
    output_of(holder)
    assert json.loads((shard_dir / "lease").read_text())["pid"] == holder.pid
    done = lab.observe(shard_dir)
    return {"run": run_dir, "shard_dir": shard_dir, "config": config, "dead_pid": holder.pid, "done": done}


def stale_lease(lab: Lab) -> Outcome:
    facts = kill_holder_after_two(lab, LEASE)
    result = run(lab, worker_command(facts["config"], "--resume", str(facts["shard_dir"])), env=LEASE)
    return Outcome(result.returncode, result.stdout + result.stderr, facts=facts)


def resumed_past_the_stale_lease(lab: Lab, outcome: Outcome) -> None:
    """The resume took the dead holder's lease over, completed, and released it."""
    shard_dir = outcome.facts["shard_dir"]
    status = read_status(shard_dir)
    assert status["state"] == "completed" and status["resumed_with_done"] == outcome.facts["done"]
    assert not (shard_dir / "lease").exists() and not list(shard_dir.glob("lease.taken-*"))
    assert lab.observe(shard_dir) == 10


def crash_in_takeover(lab: Lab) -> Outcome:
    """The resume is SIGKILLed right after it moved the dead holder's lease aside (the instant is
    aimed at by tests/stand_in_worker.py; the lease, the kill and the takeover are real)."""
    facts = kill_holder_after_two(lab, LEASE)
    result = run(lab, stand_in_worker("--config", str(facts["config"]), "--full", "--resume", str(facts["shard_dir"])),
                 env={**LEASE, "STAND_IN_KILL_AFTER_LEASE_ASIDE": "1"})
    return Outcome(result.returncode, result.stdout + result.stderr, facts=facts)


def lease_moved_aside(lab: Lab, outcome: Outcome) -> None:
    """No lease, the dead holder's moved aside; the users committed before are untouched."""
    shard_dir = outcome.facts["shard_dir"]
    assert not (shard_dir / "lease").exists()
    (aside,) = shard_dir.glob("lease.taken-*")
    assert json.loads(aside.read_text())["pid"] == outcome.facts["dead_pid"]
    assert lab.observe(shard_dir) == outcome.facts["done"]


def no_flock_second_process(lab: Lab) -> Outcome:
    """Both processes on a filesystem without locks (the stand-in): the first takes the lease, the second
    must be refused by it."""
    return second_process_while_the_first_runs(
        lab, lambda config, *args: stand_in_worker("--config", str(config), "--full", *args), env=NO_FLOCK)


def holder_warned_and_completed(lab: Lab, outcome: Outcome) -> None:
    """The holder said why it uses a lease (naming the filesystem), completed, and released its lease."""
    first_process_unharmed(lab, outcome)
    said = outcome.facts["first_output"]
    assert "file locks are not supported in" in said and "ENOLCK" in said and "using a lease file" in said
    assert " filesystem " in said.split("file locks are not supported in", 1)[1].split("\n", 1)[0]
    assert not (outcome.facts["shard_dir"] / "lease").exists()


def no_flock_forced(lab: Lab) -> Outcome:
    config = lab.config()
    run_dir = lab.out / "run"
    result = run(lab, stand_in_worker("--config", str(config), "--full", "--shard", "0/1", "--out", str(run_dir)),
                 env={**NO_FLOCK, "SHARDRUN_LOCK": "flock"})
    return Outcome(result.returncode, result.stdout + result.stderr,
                   facts={"run": run_dir, "shard_dir": run_dir / "shard-0-of-1", "config": config})


def nothing_computed(lab: Lab, outcome: Outcome) -> None:
    shard_dir = outcome.facts["shard_dir"]
    assert committed_count(shard_dir) == 0 and not (shard_dir / "shard.json").exists()
    assert not (shard_dir / "lease").exists()


def unset_and_run_again(lab: Lab, outcome: Outcome) -> pd.DataFrame:
    """The fix the error names: SHARDRUN_LOCK unset, the same command again (the lease is used)."""
    result = run(lab, stand_in_worker("--config", str(outcome.facts["config"]), "--full", "--shard", "0/1", "--out",
                                      str(outcome.facts["run"])), env=NO_FLOCK)
    assert result.returncode == 0 and "using a lease file" in result.stderr, result.stderr
    every_user_once(lab, outcome)
    return merged_values(lab, outcome.facts["run"])


# --- 13. a failed fsync, and the launcher's own storage failures ----------------------------------


def fsync_fails_once(where: str) -> Callable[[Lab], Outcome]:
    """run_production (one user per batch) whose fsync `where` fails once with EIO (STAND_IN_FSYNC_EIO of
    tests/stand_in_worker.py: a named stand-in for the disk's answer; the process, files and links are real)."""

    def inject(lab: Lab) -> Outcome:
        config = lab.config()
        run_dir = lab.out / "run"
        shard_dir = run_dir / "shard-0-of-1"
        result = run(lab, stand_in_worker("--config", str(config), "--full", "--shard", "0/1", "--out", str(run_dir),
                                          "--commit-interval", "0"), env={"STAND_IN_FSYNC_EIO": where})
        output = result.stdout + result.stderr
        return Outcome(result.returncode, output, facts={"run": run_dir, "shard_dir": shard_dir, "config": config})

    return inject


def stopped_on_the_failed_fsync(lab: Lab, outcome: Outcome) -> None:
    """One fsync failed (the stand-in fails it once: had the shard retried it, the retry would have
    passed and the shard completed); no AlreadyCommitted; the shard failed with the error; every batch
    in results/ is whole, each user in it once; nothing left in .tmp/."""
    shard_dir = outcome.facts["shard_dir"]
    assert outcome.output.count("stand-in: fsync of") == 1
    assert "AlreadyCommitted" not in outcome.output and "exists already" not in outcome.output
    status = read_status(shard_dir)
    assert status["state"] == "failed" and "durable" in status["last_error"]
    done = lab.observe(shard_dir)
    assert 2 <= done < 10 and status["users_done"] == done
    assert list((shard_dir / ".tmp").iterdir()) == []
    outcome.facts["done"] = done


def rewritten_on_the_way_out(lab: Lab, outcome: Outcome) -> None:
    """The third batch, whose temporary file's fsync failed, was never published from that file; the shard's
    way out wrote its user into a new file, whose own fsync passed: committed once, as b-000003."""
    stopped_on_the_failed_fsync(lab, outcome)
    assert [path.name for path in batch_files(outcome.facts["shard_dir"])] == [
        "b-000001.jsonl", "b-000002.jsonl", "b-000003.jsonl"]
    assert outcome.facts["done"] == 3


def batch_in_place_after_the_dir_fsync(lab: Lab, outcome: Outcome) -> None:
    """The third batch was published before its dir fsync failed: it is there, and counted."""
    stopped_on_the_failed_fsync(lab, outcome)
    assert [path.name for path in batch_files(outcome.facts["shard_dir"])][-1] == "b-000003.jsonl"
    assert outcome.facts["done"] == 3


def launch_with_a_fault(lab: Lab, fault: Callable[[subprocess.Popen, Path], dict], run_dir: Path | None = None,
                        wrap: tuple[str, ...] = ()) -> Outcome:
    """launch_shards --shards 2 --out RUN (users slowed by --cooldown 0.3, so that both shards are still
    running); `fault(launcher, run_dir)` strikes once two users are committed."""
    config = lab.config()
    run_dir = run_dir or lab.out / "run"
    command = [sys.executable, "-m", "shardrun", "launch", "--config", str(config), "--shards", "2", "--out",
               str(run_dir)]
    launcher = start(lab, [*wrap, *command, "--cooldown", "0.3"])

    def committed() -> int:
        return sum(committed_count(shard_dir) for shard_dir in run_dir.glob("shard-*-of-2"))

    wait_for(lambda: committed() >= 2, process=launcher, every=0.01)
    shard_pids = [read_status(shard_dir)["pid"] for shard_dir in sorted(run_dir.glob("shard-*-of-2"))]
    for shard_dir in run_dir.glob("shard-*-of-2"):
        lab.observe(shard_dir)
    facts = fault(launcher, run_dir)
    output = output_of(launcher)
    return Outcome(launcher.returncode, output, facts={"run": run_dir, "config": config, "command": command,
                                                       "shard_pids": shard_pids, **facts})


def rename_the_run_dir(lab: Lab) -> Outcome:
    def rename(launcher: subprocess.Popen, run_dir: Path) -> dict:
        moved = run_dir.with_name("run-renamed")
        os.rename(run_dir, moved)
        return {"moved": moved}

    return launch_with_a_fault(lab, rename)


def fill_the_disk_under_the_launcher(lab: Lab) -> Outcome:
    """The output root is a 2 MiB tmpfs; a filler file takes all its free space once two users are committed."""
    needs_root_mounts()
    lab.out.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(lab.out)], check=True)
    lab.cleanups.append(lambda: subprocess.run(["umount", "-l", str(lab.out)], check=True))

    def fill(launcher: subprocess.Popen, run_dir: Path) -> dict:
        return {"filler": fill_to_the_brim(lab.out / "filler")}

    outcome = launch_with_a_fault(lab, fill)
    outcome.facts["filler"].unlink()  # the fix, before universal_checks sees a file shardrun never names
    return outcome


def run_dir_read_only_under_the_launcher(lab: Lab) -> Outcome:
    """The run dir turns read-only for the launcher and its shards (one mount namespace, the launcher's:
    unshare -m, then a read-only bind mount made in it with nsenter), once two users are committed."""
    needs_root_mounts()

    def read_only(launcher: subprocess.Popen, run_dir: Path) -> dict:
        subprocess.run(["nsenter", "-t", str(launcher.pid), "-m", "sh", "-c",
                        'mount --bind "$0" "$0" && for attempt in $(seq 500); do'
                        ' mount -o remount,ro,bind "$0" 2>/dev/null && exit 0; sleep 0.01; done;'
                        ' mount -o remount,ro,bind "$0"', str(run_dir)], check=True)
        return {}

    return launch_with_a_fault(lab, read_only, wrap=("unshare", "-m", "--propagation", "private"))


def launcher_stopped_its_shards(lab: Lab, outcome: Outcome) -> None:
    """The shards were stopped and ended on their own (interrupted, or stopped by the same disk: never
    killed, never a traceback in their logs), and no shard process is left; the committed users are whole."""
    assert "Traceback" not in outcome.output
    for pid in outcome.facts["shard_pids"]:
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE, pid
    summary = [line for line in outcome.output.splitlines() if line.lstrip().startswith("shard ") and "/2:" in line]
    assert len(summary) == 2 and all("interrupted" in line or "cannot be written" in line for line in summary), summary
    for log in lab.logs.glob("shard*.log"):
        assert "Traceback" not in log.read_text(errors="replace"), log
    run_dir = outcome.facts.get("moved", outcome.facts["run"])
    assert sum(lab.observe(shard_dir) for shard_dir in run_dir.glob("shard-*-of-2")) < 10


def continue_the_launch(lab: Lab, outcome: Outcome) -> pd.DataFrame:
    """The documented fix (the dir put back, the space freed, or outside the read-only mount), then the
    command the error names: the run completes, every user once, and merges to the reference."""
    if "moved" in outcome.facts:
        moved, run_dir = outcome.facts["moved"], outcome.facts["run"]
        os.rename(moved, run_dir)
        for path in [path for path in lab.committed if path.is_relative_to(moved)]:  # seen in the renamed dir
            lab.committed[run_dir / path.relative_to(moved)] = lab.committed.pop(path)
    result = run(lab, outcome.facts["command"])
    assert result.returncode == 0 and "Traceback" not in result.stdout + result.stderr, result.stdout + result.stderr
    assert sum(lab.observe(shard_dir) for shard_dir in outcome.facts["run"].glob("shard-*-of-2")) == 10
    merged = analysis_values(outcome.facts["run"] / "merged")
    assert not merged.duplicated(["user_id", "feature_mode"]).any()
    return merged


LAUNCHER_CONTINUES = "then continue the run (its committed users are kept): shardrun launch --config {config}"


# --- 9. config faults, 10. data faults, 11. no Java or jar -------------------------------------


def output_root_absent(lab: Lab, outcome: Outcome) -> None:
    """Nothing was written: the output root and the log dir do not exist."""
    assert not lab.out.exists() and not lab.logs.exists()


def refused(make_config: Callable[[Lab], Path], env: dict | None = None) -> Callable[[Lab], Outcome]:
    def inject(lab: Lab) -> Outcome:
        config = make_config(lab)
        result = run(lab, worker_command(config, "--shard", "0/1"), env=env)
        return Outcome(result.returncode, result.stdout + result.stderr, facts={"config": config})

    return inject


def with_data(name: str, content: Callable[[pd.DataFrame], bytes | str]) -> Callable[[Lab], Path]:
    """A config of the small workload whose data file is `content(the small data)`."""
    return lambda lab: lab.config(lab.input(name, content(pd.read_csv(lab.small.data, dtype=str))))


def malformed_yaml(lab: Lab) -> Path:
    path = lab.config()
    path.write_text(path.read_text().replace("surrogates: 200", "surrogates: [200"))
    return path


def set_key(dotted: str, value) -> Callable[[Lab], Path]:
    def edit(raw: dict) -> None:
        *parents, last = dotted.split(".")
        node = raw
        for key in parents:
            node = node[key]
        node[last] = value

    return lambda lab: lab.config(edit=edit)


def data_variant(name: str, change: Callable[[pd.DataFrame], pd.DataFrame],
                 missing: str | None = None) -> Callable[[Lab], Outcome]:
    """A full run of the small workload on a changed copy of its data (documented data rules), with
    data.missing set when `missing` is given."""

    def inject(lab: Lab) -> Outcome:
        raw = pd.read_csv(lab.small.data, dtype=str)
        changed = change(raw.copy())
        data = lab.input(name, changed.to_csv(index=False))
        run_dir = lab.out / "run"
        edit = None if missing is None else (lambda config: config["data"].update(missing=missing))
        result = run(lab, worker_command(lab.config(data, edit=edit), "--shard", "0/1", "--out", str(run_dir)))
        merged = merged_values(lab, run_dir) if result.returncode == 0 else None
        if run_dir.exists():
            lab.observe(run_dir / "shard-0-of-1")
        repeats = changed.groupby("who", sort=False)["when"].transform(lambda w: w.eq(w.shift()))
        return Outcome(result.returncode, result.stdout + result.stderr,
                       facts={"data": changed, "merged": merged, "run": run_dir,
                              "missing": int(changed["label"].isna().sum()), "repeats": int(repeats.sum())})

    return inject


NAN_USER, NAN_ROWS = "user-03", slice(100, 600, 20)  # every 20th of its rows from the 100th loses its value
DUP_USER = "user-04"


def blank_values(raw: pd.DataFrame) -> pd.DataFrame:
    rows = raw.index[raw["who"] == NAN_USER][NAN_ROWS]
    raw.loc[rows, "label"] = None
    return raw


def shuffled(raw: pd.DataFrame) -> pd.DataFrame:
    return raw.sample(frac=1.0, random_state=3).reset_index(drop=True)


def duplicate_times(raw: pd.DataFrame) -> pd.DataFrame:
    rows = raw.index[raw["who"] == DUP_USER]
    for position in range(10, len(rows), 10):
        raw.loc[rows[position], "when"] = raw.loc[rows[position - 1], "when"]
    return raw


def others_equal_reference(lab: Lab, merged: pd.DataFrame, user: str) -> pd.DataFrame:
    """The other users' rows equal the reference's; their q-values aside, which are over the whole set,
    `user`'s p-values included."""
    reference = lab.small.reference
    others = [c for c in reference.columns if not c.endswith("_q")]
    pd.testing.assert_frame_equal(merged.loc[merged["user_id"] != user, others].reset_index(drop=True),
                                  reference.loc[reference["user_id"] != user, others].reset_index(drop=True),
                                  check_exact=True)
    return merged[merged["user_id"] == user].set_index("feature_mode")


def nan_rows_dropped(lab: Lab, outcome: Outcome) -> None:
    """The user with blank values is analysed on its other rows (n_obs counts them); the rest unchanged."""
    data = outcome.facts["data"]
    mine = others_equal_reference(lab, outcome.facts["merged"], NAN_USER)
    expected = int(((data["who"] == NAN_USER) & data["label"].notna()).sum())
    assert outcome.facts["missing"] > 0 and expected == int((data["who"] == NAN_USER).sum()) - outcome.facts["missing"]
    assert set(mine["status"]) == {"ok"} and set(mine["n_obs"]) == {expected}
    missing = outcome.facts["missing"]
    assert set(mine["n_dropped"]) == {missing} and set(mine["dropped_reason"]) == {f"{missing} missing values"}
    # summed in the merge report, the user counted once whatever its feature modes
    report = json.loads((outcome.facts["run"] / "merged" / "merge_report.json").read_text())
    assert report["task"]["cleaning"]["n_dropped"] == {"total": missing, "users": 1}


def sorted_by_time(lab: Lab, outcome: Outcome) -> None:
    """Shuffled rows give exactly the reference (but the count of rows moved): every user's rows were
    sorted by time, and each user's rows say that some were out of order."""
    merged = outcome.facts["merged"]
    pd.testing.assert_frame_equal(merged.drop(columns="n_out_of_order"),
                                  lab.small.reference.drop(columns="n_out_of_order"), check_exact=True)
    assert (merged["n_out_of_order"] > 0).all() and (lab.small.reference["n_out_of_order"] == 0).all()


def duplicates_kept_in_file_order(lab: Lab, outcome: Outcome) -> None:
    """Rows sharing a timestamp stay separate observations in file order: n_obs unchanged, and the
    activity series (which ignores the hour) gives the reference's numbers."""
    mine = others_equal_reference(lab, outcome.facts["merged"], DUP_USER)
    reference = lab.small.reference.set_index(["user_id", "feature_mode"])
    assert set(mine["n_obs"]) == {int((outcome.facts["data"]["who"] == DUP_USER).sum())}
    columns = [c for c in mine.columns if not c.startswith("te_hour") and c not in ("user_id", "n_duplicate_timestamps")]
    assert mine.loc["activity", columns].tolist() == reference.loc[(DUP_USER, "activity"), columns].tolist()
    assert set(mine["n_duplicate_timestamps"]) == {outcome.facts["repeats"]}


# --- the table ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Fault:
    name: str  # the test id
    injected: str  # how the fault is injected (for docs/RELIABILITY.md)
    inject: Callable[[Lab], Outcome]
    exit_code: int | None  # of the faulted command
    messages: tuple[str, ...] = ()  # fragments of its output; {name} is filled from the outcome's facts
    on_disk: tuple[Callable[[Lab, Outcome], None], ...] = ()
    recover: Callable[[Lab, Outcome], pd.DataFrame] | None = None  # the documented fix -> merged = reference


FAULTS = [
    Fault("sigkill-random-points", f"{KILL_TRIALS} seeded trials of SIGKILL at random delays (start-up or"
          " loop), every third killed again in its resume; each resumed to completion and merged",
          sigkill_trials, -signal.SIGKILL, (), (kills_hit_start_up_and_the_loop,)),
    Fault("sigterm-drain", "SIGTERM to one run_production after two commits", sigterm_drain, 3,
          ("SIGTERM received: finishing the user in flight",), (drained_whole,), resume_run),
    Fault("torn-result-files", "a truncated copy, garbage, an empty file and another user's file under"
          " real users' names in results/, stray .tmp files; then resume", torn_files, 0,
          ("cannot be trusted", "will be recomputed"), (torn_quarantined_and_recomputed,), merge_run),
    Fault("file-size-limit", "prlimit RLIMIT_FSIZE on the running shard below a result file's size",
          file_size_limit, 6, ("error: cannot write the result of user", "{shard_dir}/results", "file size limit"),
          (stopped_failed_with_commits_intact,), resume_run),
    Fault("disk-full", "run dir on a 2 MiB tmpfs, filled by a filler file after three commits", disk_full, 6,
          ("error: cannot write", "{shard_dir}", "No space left on device", "the disk is full"), (commits_intact,),
          free_space_and_resume),
    Fault("read-only-output-root", "output root read-only (bind mount) from the start, run_production",
          read_only_root_worker, 6, ("error: cannot write", "{out}", "{words}"), (output_root_empty,)),
    Fault("read-only-output-root-launcher", "output root read-only (bind mount) from the start, launch_shards",
          read_only_root_launcher, 6, ("error: cannot write", "{out}", "{words}"), (output_root_empty,)),
    Fault("read-only-shard-dir-mid-run", "shard dir turned read-only (bind mount) after three commits",
          read_only_mid_run, 6, ("error: cannot write", "{shard_dir}", "{words}"), (commits_intact,), resume_run),
    Fault("sigterm-during-the-exit-of-a-completed-shard", "SIGTERM while a shard whose users are all committed"
          " exits (the stand-in holds the exit open with the default signal actions back)", sigterm_during_exit, 0, (),
          (completed_not_killed,), merge_run),
    Fault("second-process-on-a-shard", "run_production --resume on a shard dir whose first process is running",
          second_process, 4, ("error: shard dir", "in use by another process", '"pid": {holder_pid}'),
          (first_process_unharmed,), merge_run),
    Fault("stale-lock-after-sigkill", "SIGKILL the lock holder after two commits, then resume", stale_lock, 0,
          (), (resumed_past_the_stale_lock,), merge_run),
    Fault("commit-without-hard-links", "the output root is a real vfat filesystem (mkfs.vfat image on a loop"
          " device, fusefat): link and RENAME_NOREPLACE refused; one run_production", no_hard_links, 0,
          ("hard links are refused in {run}", "EPERM", "rename after checking that the name is free",
           "exactly once because one process writes each shard dir"), (every_user_once,), merged_elsewhere),
    Fault("crash-between-check-and-rename", "on that vfat root, SIGKILL after the third commit's existence check,"
          " before its rename (instant aimed by a stand-in); then resume", crash_before_rename, -signal.SIGKILL, (),
          (checked_but_not_renamed,), resume_then_merge_elsewhere),
    Fault("crash-between-batch-write-and-fsync", "SIGKILL after the third batch file's bytes are written to its"
          " temporary file, before its fsync (instant aimed by a stand-in); then resume", crash_before_batch_fsync,
          -signal.SIGKILL, (), (written_but_not_committed,), resume_every_user_once_then_merge),
    Fault("torn-batch", "a batch of several users cut in the middle of its last record; then resume", torn_batch, 0,
          ("cannot be trusted: its records do not match the checksum", "will be recomputed"),
          (torn_batch_quarantined_whole,), merge_run),
    Fault("stale-lease-after-sigkill", "SHARDRUN_LOCK=lease; SIGKILL the holder after two commits, then resume",
          stale_lease, 0, ("took over the lease", "its process {dead_pid} on this host is gone"),
          (resumed_past_the_stale_lease,), merge_run),
    Fault("crash-during-lease-takeover", "SHARDRUN_LOCK=lease; the resume after a SIGKILLed holder is SIGKILLed"
          " right after moving the stale lease aside (instant aimed by a stand-in); then resume", crash_in_takeover,
          -signal.SIGKILL, (), (lease_moved_aside,), resume_on_the_lease_then_merge),
    Fault("no-file-locks-second-process", "flock fails with ENOLCK (stand-in for NFS without locks) in both"
          " processes; run_production --resume while the first runs", no_flock_second_process, 4,
          ("error: shard dir", "in use by another process", '"pid": {holder_pid}', "heartbeat",
           "SHARDRUN_LEASE_STALE_SECONDS"), (holder_warned_and_completed,), merge_run),
    Fault("no-file-locks-flock-forced", "flock fails with ENOLCK (stand-in) and SHARDRUN_LOCK=flock",
          no_flock_forced, 2, ("error: file locks are not supported in shard dir {shard_dir}", "ENOLCK",
                               "SHARDRUN_LOCK=flock", "Unset SHARDRUN_LOCK"), (nothing_computed,),
          unset_and_run_again),
    Fault("eio-on-dir-fsync-after-publish", "the dir fsync after the third batch was published fails once with EIO"
          " (STAND_IN_FSYNC_EIO=results:3, a stand-in for the disk's answer); then resume",
          fsync_fails_once("results:3"), 6,
          ("error: cannot make the result of user", ", put in place, durable in {shard_dir}/results",
           "Input/output error", "may not survive a crash", "then resume the shard"),
          (batch_in_place_after_the_dir_fsync,), resume_every_user_once_then_merge),
    Fault("eio-on-batch-fsync", "the fsync of the third batch's temporary file fails once with EIO"
          " (STAND_IN_FSYNC_EIO=.tmp:3, a stand-in for the disk's answer); then resume", fsync_fails_once(".tmp:3"), 6,
          ("error: cannot make the result of user", "durable in {shard_dir}/results", "Input/output error",
           "then resume the shard"), (rewritten_on_the_way_out,), resume_every_user_once_then_merge),
    Fault("launcher-run-dir-renamed-mid-run", "launch_shards --shards 2 --out RUN; RUN renamed once two users are"
          " committed; then renamed back and the same command again", rename_the_run_dir, 6,
          ("error: cannot write launcher.json in {run}", "moved, renamed or removed", "put it back where it was",
           LAUNCHER_CONTINUES, "--out {run}"), (launcher_stopped_its_shards,), continue_the_launch),
    Fault("launcher-disk-full", "launch_shards --shards 2 with its output root on a 2 MiB tmpfs, filled by a filler"
          " file once two users are committed; then the filler removed and the same command again",
          fill_the_disk_under_the_launcher, 6,
          ("error: cannot write", "{run}", "No space left on device", "the disk is full", LAUNCHER_CONTINUES),
          (launcher_stopped_its_shards,), continue_the_launch),
    Fault("launcher-read-only-run-dir-mid-run", "launch_shards --shards 2 in a mount namespace of its own; the run dir"
          " turned read-only there (bind mount) once two users are committed; then the same command outside it",
          run_dir_read_only_under_the_launcher, 6,
          ("error: cannot write", "{run}", "Read-only file system", LAUNCHER_CONTINUES),
          (launcher_stopped_its_shards,), continue_the_launch),
    Fault("merge-identical-duplicates", "the same shard dir copied into a second run dir; merge both",
          merge_duplicates, 0, ("merged {rows} rows for {users} users from 2 shard dirs",), (duplicates_dropped,),
          lambda lab, outcome: outcome.recovered),
    Fault("merge-conflicting-duplicates", "that copy with one value changed in one result file (its checksum"
          " rewritten: rows that really differ); merge both",
          merge_conflict, 5, ("conflicting rows for user_id='user-03', feature_mode='composite'", "ais_k2_bits differ"),
          (conflict_reported,)),
    Fault("merge-hand-edited-result-file", f"te_hour_p of {EDITED_USER} (composite) edited in place in its"
          " committed file; merge the run, then resume", hand_edited, 5,
          ("is left out: its records do not match the checksum", "edited after the commit",
           f"user '{EDITED_USER}' has no results"), (untrusted_reported,), resume_quarantines_and_recomputes),
    Fault("merge-swapped-in-file", f"{SWAPPED_USER}'s committed file replaced by its file from a run of another"
          " config (surrogates halved); merge the run, then resume", swapped_in, 5,
          ("is left out: it was committed under config hash", "comes from another config's run",
           f"user '{SWAPPED_USER}' has no results"), (untrusted_reported,), resume_quarantines_and_recomputes),
    Fault("merge-garbage-result-file", f"{GARBLED_USER}'s committed file overwritten with bytes that are no batch;"
          " merge the run, then resume", garbled, 5,
          ("(no user readable in it) is left out", f"user '{GARBLED_USER}' has no results"),
          (unreadable_file_reported,), resume_quarantines_and_recomputes),
    Fault("hostile-user-ids", "user ids ../escape, /abs/path, a<NUL>b, sep/ar\\\\ator, 5000 x, .. in the data"
          " (CSV); launch_shards K=2 with merge and validation", hostile_ids, 0, ("validation passed",),
          (hostile_results_under_their_ids,)),
    Fault("empty-user-id", "one user's id is the empty string (Parquet, where it is not a missing value)",
          empty_user_id, 2, ("error: data file {data}", "rows have no user id (missing or empty)"),
          (output_root_absent,)),
    Fault("config-malformed-yaml", "an unclosed [ in the YAML", refused(malformed_yaml), 2,
          ("error: config file {config} is not valid YAML at line",), (output_root_absent,)),
    Fault("config-unknown-key", "data.colour: blue", refused(set_key("data.colour", "blue")), 2,
          ("error: unknown config key 'data.colour'", "check the spelling"), (output_root_absent,)),
    Fault("config-wrong-type", "surrogates: many", refused(set_key("surrogates", "many")), 2,
          ("error: config key 'surrogates' must be int", "got str 'many'"), (output_root_absent,)),
    Fault("config-wrong-type-nested", "k_selection.k_grid: 3 (not a list)", refused(set_key("k_selection.k_grid", 3)),
          2, ("error: config key 'k_selection.k_grid' must be list",), (output_root_absent,)),
    Fault("data-file-missing", "data.path names a file that does not exist",
          refused(lambda lab: lab.config(lab.root / "in" / "nowhere.csv")), 2,
          ("error: data file", "nowhere.csv does not exist", "fix data.path"), (output_root_absent,)),
    Fault("data-file-empty", "a 0-byte data file", refused(with_data("empty.csv", lambda raw: b"")), 2,
          ("error: data file", "empty.csv is empty (0 bytes, no text)", "Point data.path at the file with your data"),
          (output_root_absent,)),
    Fault("data-header-only", "a data file with the header and no rows",
          refused(with_data("header.csv", lambda raw: raw.head(0).to_csv(index=False))), 2,
          ("error: data file", "header.csv has no rows",), (output_root_absent,)),
    Fault("data-missing-column", "the value column is named 'activity', not 'label'",
          refused(with_data("renamed.csv", lambda raw: raw.rename(columns={"label": "activity"}).to_csv(index=False))),
          2, ("has no column 'label'", "its columns are 'who', 'when', 'activity'", "data.value_column"),
          (output_root_absent,)),
    Fault("data-nan-values", f"{NAN_USER}: every 20th value from row 100 blank", data_variant("nan.csv", blank_values),
          2, ("error: data file", "{missing} rows cannot be analysed as they are", f"of 1 user ({NAN_USER})",
              "data.missing: drop"), (output_root_absent,)),
    Fault("data-nan-values-dropped", f"{NAN_USER}: every 20th value from row 100 blank, data.missing: drop",
          data_variant("nan.csv", blank_values, missing="drop"), 0,
          ("dropped {missing} rows with a missing or infinite value (data.missing: drop)",), (nan_rows_dropped,)),
    Fault("data-unsorted-timestamps", "all rows of the data file shuffled", data_variant("shuffled.csv", shuffled), 0,
          (), (sorted_by_time,)),
    Fault("data-duplicate-timestamps", f"{DUP_USER}: every 10th row repeats the previous row's timestamp",
          data_variant("dups.csv", duplicate_times), 0,
          ("{repeats} rows share a timestamp with the previous row; kept as separate rows",),
          (duplicates_kept_in_file_order,)),
    Fault("no-java", "JAVA_HOME points at a dir without Java",
          refused(lambda lab: lab.config(), env={"JAVA_HOME": "/nonexistent/java"}), 2,
          ("error: JAVA_HOME is /nonexistent/java", "Point JAVA_HOME at a JDK or JRE"), (output_root_absent,)),
    Fault("no-jar", "jvm.classpath names a jar that does not exist",
          refused(set_key("jvm.classpath", "/nonexistent/infodynamics.jar")), 2,
          ("error: jvm.classpath points at /nonexistent/infodynamics.jar", "pip install --no-deps idtxl-uv"),
          (output_root_absent,)),
]

DELIBERATE_ERRORS = (2, 4, 6)


@pytest.mark.parametrize("fault", FAULTS, ids=[fault.name for fault in FAULTS])
def test_fault(fault: Fault, lab: Lab):
    before = snapshot(lab.basetemp, REPO, skip=REPO_SKIP)
    outcome = fault.inject(lab)
    assert outcome.exit_code == fault.exit_code, outcome.output
    for fragment in fault.messages:
        assert fragment.format(**outcome.facts) in outcome.output, (fragment, outcome.output)
    assert "Traceback" not in outcome.output and "Logging error" not in outcome.output, outcome.output
    if fault.exit_code in DELIBERATE_ERRORS:
        errors = [line for line in outcome.output.splitlines() if line.startswith("error: ")]
        assert len(errors) == 1, outcome.output
    for check in fault.on_disk:
        check(lab, outcome)
    if fault.recover is not None:
        pd.testing.assert_frame_equal(fault.recover(lab, outcome), lab.small.reference, check_exact=True)
    universal_checks(lab, before)


def test_reliability_doc_lists_every_case():
    doc = (REPO / "docs" / "RELIABILITY.md").read_text()
    for fault in FAULTS:
        assert f"`test_fault[{fault.name}]`" in doc, fault.name
