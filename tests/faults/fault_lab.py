"""The lab of the fault table: a case's sandbox, how it runs shardrun, and the checks every case passes.

Real processes, real signals, real files, the real JVM and JIDT jar. Where the fault needs the
machine's help (a read-only mount, a tmpfs that fills up, a file-size limit) the test asks the
kernel for it; docs/RELIABILITY.md lists every case, how it is injected and the guarantee it checks.
The table is split by family (tests/faults/test_fault_*.py); each family's `test_fault` runs one case
and then `check_fault`, the checks every case must pass:
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

import os
import re
import signal
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import pytest
import yaml

from shardrun.results.merge import merge_shards
from shardrun.results.read import shard_dirs_of_run
from shardrun.storage.commits import decode_batch

from e2e_support import analysis_values, read_status, shardrun, wait_for, write_config
from store_support import batch_files, committed_user_count

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
MODES = ("activity", "composite")  # the feature modes of write_config: two rows per user


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


# Names shardrun gives, by the kind of dir that holds them. A user id never becomes one of them.
NAME_RULES = {
    "run": (r"run\.json", r"launcher\.json", r"\.launcher\.lock", r"\.merged\.merge-lock", r"\.[^/]+\.tmp"),
    "shard": (r"shard\.json", r"status\.json", r"lock", r"lease", r"shard\.log", r"errors\.jsonl",
              r"hs_err_pid\d+\.log", r"\.[^/]+\.tmp"),
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


def resume_run(lab: Lab, outcome: Outcome) -> pd.DataFrame:
    shard_dir = outcome.facts["shard_dir"]
    resume(lab, outcome.facts["config"], shard_dir)
    lab.observe(shard_dir)
    return merged_values(lab, outcome.facts["run"])


def merge_run(lab: Lab, outcome: Outcome) -> pd.DataFrame:
    return merged_values(lab, outcome.facts["run"])


def second_process_while_the_first_runs(lab: Lab, command: Callable[..., list[str]],
                                        env: dict | None = None) -> Outcome:
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


def first_process_unharmed(lab: Lab, outcome: Outcome) -> None:
    """The holder was running when the second was refused, and went on to complete its shard, every user once."""
    assert outcome.facts["holder_alive"] and outcome.facts["committed_before"] < 10
    assert outcome.facts["first_exit"] == 0, outcome.facts["first_output"]
    assert "Traceback" not in outcome.facts["first_output"]
    status = read_status(outcome.facts["shard_dir"])
    assert status["state"] == "completed" and status["pid"] == outcome.facts["holder_pid"]
    assert lab.observe(outcome.facts["shard_dir"]) == 10


def resume_every_user_once_then_merge(lab: Lab, outcome: Outcome) -> pd.DataFrame:
    resume_every_user_once(lab, outcome)
    return merge_run(lab, outcome)


def resume_every_user_once(lab: Lab, outcome: Outcome, env: dict | None = None) -> None:
    shard_dir = outcome.facts["shard_dir"]
    result = run(lab, worker_command(outcome.facts["config"], "--resume", str(shard_dir)), env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    status = read_status(shard_dir)
    assert status["state"] == "completed" and status["resumed_with_done"] == outcome.facts.get("done", 2)
    every_user_once(lab, outcome)


def every_user_once(lab: Lab, outcome: Outcome) -> None:
    """Completed; every user committed once, whole; no scratch file left."""
    shard_dir = outcome.facts["shard_dir"]
    status = read_status(shard_dir)
    assert status["state"] == "completed" and status["users_done"] == 10
    assert lab.observe(shard_dir) == 10
    assert list((shard_dir / ".tmp").iterdir()) == []


# --- a case of the table, and the checks every case passes -------------------------------------


@dataclass(frozen=True)
class Fault:
    name: str  # the test id
    injected: str  # how the fault is injected (for docs/RELIABILITY.md)
    inject: Callable[[Lab], Outcome]
    exit_code: int | None  # of the faulted command
    messages: tuple[str, ...] = ()  # fragments of its output; {name} is filled from the outcome's facts
    on_disk: tuple[Callable[[Lab, Outcome], None], ...] = ()
    recover: Callable[[Lab, Outcome], pd.DataFrame] | None = None  # the documented fix -> merged = reference


DELIBERATE_ERRORS = (2, 4, 6)


def check_fault(fault: Fault, lab: Lab) -> None:
    """Run one case, then the checks of its row and those every case must pass."""
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


def assert_documented(faults: list[Fault]) -> None:
    doc = (REPO / "docs" / "RELIABILITY.md").read_text()
    for fault in faults:
        assert f"`test_fault[{fault.name}]`" in doc, fault.name
