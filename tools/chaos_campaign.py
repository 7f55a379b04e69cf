#!/usr/bin/env python3
"""The chaos campaign: random faults against real shardrun runs, and the guarantees checked after each.

    .venv/bin/python tools/chaos_campaign.py --trials N --seed S --work DIR [--keep]

A small workload (12 users, the real JVM and JIDT jar; tests/faulty_task.py's "slow:S" keeps every user
inside one Java call for a while, so that faults land mid-run) is first run once uninterrupted with
`launch_shards --shards 1`: the reference. Then each trial takes a fault kind (every kind once per
round, in an order shuffled by the seeded RNG; the RNG also picks K and the delays, but the timing of
processes is not seeded: the same seed gives the same kinds, K and delays, not the same instants),
injects it at a random delay into real processes, recovers with the documented command (the same
`launch_shards` command again, or the same merge again), and checks:
- the final merged set equals the reference (bookkeeping columns aside): no user lost, no (user, mode)
  twice, no value differing;
- every batch file seen committed during the trial is still there at the end, byte for byte;
- a merge that was killed or stopped left at its --output the previous whole set or a new whole set
  (or nothing where there was none), never a part;
- the commands exited with their documented codes (3 for a stop signal, 4 for the loser of two
  concurrent commands, 6 for a full disk; never 70, which means a crash);
- no process of the trial is left (this script is the subreaper of everything it starts, so orphans
  stay its descendants; and no process names the trial's dir on its command line);
- no 'Traceback' in the output of any command nor in any log.
It prints a table of the trials by fault kind and exits 1 if any guarantee failed (0 otherwise, 2 if
the campaign itself could not start). Trial dirs are removed when the trial passed (kept with --keep,
and always when it failed); DIR/campaign.json holds every trial's facts. docs/RELIABILITY.md
("Chaos campaign") says what each fault is.
"""

from __future__ import annotations

import argparse
import ctypes
import errno
import json
import logging
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pandas as pd
import psutil
import yaml

REPO = Path(__file__).resolve().parents[1]
TESTS = REPO / "tests"
sys.path.insert(0, str(TESTS))

from shardrun.storage.commits import readable_user_ids  # noqa: E402

from e2e_support import analysis_values, write_categorical_data, write_config  # noqa: E402
from store_support import batch_files  # noqa: E402

log = logging.getLogger("chaos")

USERS = 12
ROWS = 600
SURROGATES = 200
K_GRID = (1, 2, 3)
SLOW_USER_SECONDS = 0.25  # every user sleeps this long inside a Java call (tests/faulty_task.py)
KEYS = ["user_id", "feature_mode"]
COMMAND_TIMEOUT = 300.0
DRAIN_TIMEOUT = 60.0  # a process asked to stop (or orphaned by a SIGKILL) must be gone by then
PR_SET_CHILD_SUBREAPER = 36

# What each command may exit with after the fault, by fault kind (docs/GUIDE.md "Exit codes"); None: not signalled.
STOPPED = {0, 3}  # a stop signal that landed, or one that came as the command was ending anyway
MERGED_SET = ("results.csv", "results.parquet", "merge_report.json")


# --- the workload and its reference --------------------------------------------------------------


@dataclass(frozen=True)
class Workload:
    data: Path
    env: dict
    reference: pd.DataFrame
    launch_seconds: float  # wall time of the uninterrupted K=1 launch (start-up, users, merge)
    merge_seconds: float  # wall time of one merge of that run

    def config(self, root: Path) -> Path:
        """The workload's config, writing its logs under `root` (the config hash ignores `output`)."""
        path = write_config(root / "config.yaml", self.data, root, surrogates=SURROGATES, k_grid=K_GRID)
        raw = yaml.safe_load(path.read_text())
        raw["task"] = "faulty_task:task"
        path.write_text(yaml.safe_dump(raw, sort_keys=False))
        return path


def shardrun_env() -> dict:
    path = os.pathsep.join(p for p in (str(TESTS), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "PYTHONPATH": path, "FAULTY_TASK": f"slow:{SLOW_USER_SECONDS}"}


def shardrun_command(command: str, *args: object) -> list[str]:
    return [sys.executable, "-m", "shardrun", command, *map(str, args)]


class CannotStart(Exception):
    """The campaign cannot run here: its reference run or merge failed (exit 2)."""


def prepare_workload(work: Path) -> Workload:
    """The data, and the reference: one uninterrupted `launch_shards --shards 1`, then one merge timed."""
    root = work / "reference"
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    data = work / "users.csv"
    write_categorical_data(data, n_users=USERS, n_rows=ROWS)
    env = shardrun_env()
    draft = Workload(data, env, pd.DataFrame(), 0.0, 0.0)
    config = draft.config(root)
    run_dir = root / "out" / "run"
    started = time.monotonic()
    launched = subprocess.run(shardrun_command("launch", "--config", config, "--shards", 1, "--out", run_dir),
                              cwd=root, env=env, capture_output=True, text=True, timeout=COMMAND_TIMEOUT)
    launch_seconds = time.monotonic() - started
    if launched.returncode != 0:
        raise CannotStart(f"the reference run failed (exit {launched.returncode}):\n"
                          f"{launched.stdout}\n{launched.stderr}")
    started = time.monotonic()
    merged = subprocess.run(shardrun_command("merge", "--run", run_dir, "--output", root / "timed-merge"),
                            cwd=root, env=env, capture_output=True, text=True, timeout=COMMAND_TIMEOUT)
    merge_seconds = time.monotonic() - started
    if merged.returncode != 0:
        raise CannotStart(f"the reference merge failed (exit {merged.returncode}):\n{merged.stdout}\n{merged.stderr}")
    reference = analysis_values(run_dir / "merged")
    log.info("reference: %d users, %d rows; K=1 launch %.1f s, merge %.1f s", reference["user_id"].nunique(),
             len(reference), launch_seconds, merge_seconds)
    return Workload(data, env, reference, launch_seconds, merge_seconds)


# --- comparing a merged set with the reference -----------------------------------------------------


@dataclass
class SetCheck:
    users_lost: int = 0
    duplicated: int = 0
    values_differing: int = 0
    problems: list[str] = field(default_factory=list)


def compare_with_reference(merged_dir: Path, reference: pd.DataFrame) -> SetCheck:
    """Users of the reference missing from the set, (user, mode) rows twice, and rows whose values differ
    (a row the reference does not have counts as differing)."""
    check = SetCheck()
    missing = [name for name in MERGED_SET if not (merged_dir / name).is_file()]
    if missing:
        check.users_lost = reference["user_id"].nunique()
        check.problems.append(f"no whole merged set at {merged_dir}: {missing} missing")
        return check
    merged = analysis_values(merged_dir)
    lost = sorted(set(reference["user_id"]) - set(merged["user_id"]))
    check.users_lost = len(lost)
    check.duplicated = int(merged.duplicated(KEYS).sum())
    mine = merged.drop_duplicates(KEYS).set_index(KEYS)
    theirs = reference.set_index(KEYS)
    extra = mine.index.difference(theirs.index)
    common = mine.index.intersection(theirs.index)
    if not set(theirs.columns) <= set(mine.columns):
        check.values_differing = len(common) + len(extra)
        check.problems.append(f"columns differ: {sorted(set(theirs.columns) ^ set(mine.columns))}")
    else:
        a, b = theirs.loc[common], mine.loc[common, theirs.columns]
        differs = ~((a == b) | (a.isna() & b.isna())).all(axis=1)
        check.values_differing = int(differs.sum()) + len(extra)
        if check.values_differing == 0 and not lost and check.duplicated == 0:
            try:  # same values, but also the same dtypes and order
                pd.testing.assert_frame_equal(merged, reference, check_exact=True)
            except AssertionError as exc:
                check.values_differing = 1
                check.problems.append(f"the set differs from the reference: {str(exc).splitlines()[0]}")
        elif differs.any():
            check.problems.append(f"values differ for {list(a.index[differs])[:5]}")
    if lost:
        check.problems.append(f"users lost: {lost}")
    if check.duplicated:
        check.problems.append(f"{check.duplicated} (user, mode) rows twice")
    if len(extra):
        check.problems.append(f"rows the reference does not have: {list(extra)[:5]}")
    return check


# --- one trial -------------------------------------------------------------------------------------


@dataclass
class TrialResult:
    index: int
    kind: str
    shards: int
    seconds: float = 0.0
    delivered: dict = field(default_factory=dict)  # target -> signal name, of the faults that landed
    facts: dict = field(default_factory=dict)  # users committed at the fault, the set a merge fault left, ...
    exits: list = field(default_factory=list)  # (command label, exit code, expected codes)
    users_lost: int = 0
    duplicated: int = 0
    values_differing: int = 0
    commits_lost: int = 0
    partial_sets: int = 0
    orphans: int = 0
    tracebacks: int = 0
    unexpected_exits: int = 0
    problems: list = field(default_factory=list)

    @property
    def failed(self) -> bool:
        return bool(self.users_lost or self.duplicated or self.values_differing or self.commits_lost
                    or self.partial_sets or self.orphans or self.tracebacks or self.unexpected_exits)


class Trial:
    """One trial's sandbox: the processes it starts (outputs in files, checked at the end), the batch
    files it saw committed, the processes it saw, and what it found."""

    def __init__(self, index: int, kind: str, root: Path, workload: Workload, rng: random.Random):
        self.rng = rng
        self.root = root
        self.workload = workload
        self.shards = rng.randint(1, 4)
        self.result = TrialResult(index, kind, self.shards)
        self.commands = root / "commands"
        self.commands.mkdir(parents=True)
        self.config = workload.config(root)
        self.run_dir = root / "out" / "run"
        self.final_set = self.run_dir / "merged"
        self.committed: dict[Path, bytes] = {}
        self.seen: dict[int, float] = {}  # pid -> create_time of every descendant seen
        self.popens: list[subprocess.Popen] = []
        self.labels: dict[int, str] = {}  # pid -> the command's label in this trial
        self.cleanups: list[Callable[[], None]] = []

    # -- commands --

    def launch_args(self) -> list[object]:
        return ["--config", self.config, "--shards", self.shards, "--out", self.run_dir]

    def start(self, label: str, module: str, *args: object) -> subprocess.Popen:
        n = len(self.popens)
        with open(self.commands / f"{n:02d}-{label}.out", "w") as out, \
                open(self.commands / f"{n:02d}-{label}.err", "w") as err:
            process = subprocess.Popen(shardrun_command(module, *args), cwd=self.root, env=self.workload.env,
                                       stdout=out, stderr=err, text=True)
        self.labels[process.pid] = label
        self.popens.append(process)
        self.note_descendants()
        return process

    def finish(self, process: subprocess.Popen, expected: set[int]) -> int:
        """Wait for the process (observing commits meanwhile) and check its exit code."""
        deadline = time.monotonic() + COMMAND_TIMEOUT
        while process.poll() is None:
            if time.monotonic() > deadline:
                process.kill()
                process.wait()
                self.result.problems.append(
                    f"{self.labels[process.pid]} did not end in {COMMAND_TIMEOUT:.0f} s; killed")
                break
            self.observe()
            time.sleep(0.05)
        code = process.returncode
        self.result.exits.append((self.labels[process.pid], code, sorted(expected)))
        if code not in expected:
            self.result.unexpected_exits += 1
            self.result.problems.append(f"{self.labels[process.pid]} exited {code}, expected {sorted(expected)}")
        self.observe()
        return code

    def run(self, label: str, module: str, *args: object, expected: set[int] = frozenset({0})) -> int:
        return self.finish(self.start(label, module, *args), expected)

    def launch(self, label: str = "launch", expected: set[int] = frozenset({0})) -> int:
        return self.run(label, "launch", *self.launch_args(), expected=expected)

    def merge(self, label: str, output: Path, *extra: str) -> subprocess.Popen:
        return self.start(label, "merge", "--run", self.run_dir, "--output", output, *extra)

    # -- watching --

    def observe(self) -> None:
        """Remember every batch file committed so far; one seen before must still be there unchanged."""
        for shard_dir in self.run_dir.glob("shard-*-of-*"):
            try:
                paths = batch_files(shard_dir)
            except OSError:
                continue
            for path in paths:
                try:
                    payload = path.read_bytes()
                except OSError:
                    continue  # checked at the end if it was seen before
                known = self.committed.setdefault(path, payload)
                if known != payload:
                    self.result.commits_lost += 1
                    self.result.problems.append(f"committed {path} changed")
                    self.committed[path] = payload
        self.note_descendants()

    def note_descendants(self) -> None:
        for child in psutil.Process().children(recursive=True):
            try:
                self.seen.setdefault(child.pid, child.create_time())
            except psutil.Error:
                pass

    def processes_matching(self, parent: subprocess.Popen, marker: str) -> list[psutil.Process]:
        """Live descendants of `parent` whose command line holds `marker`."""
        try:
            children = psutil.Process(parent.pid).children(recursive=True)
        except psutil.Error:
            return []
        found = []
        for child in children:
            try:
                if child.status() != psutil.STATUS_ZOMBIE and marker in " ".join(child.cmdline()):
                    found.append(child)
            except psutil.Error:
                pass
        return found

    def wait_then_pick(self, parent: subprocess.Popen, not_before: float,
                       candidates: Callable[[], list]) -> object | None:
        """Once `not_before` seconds have passed, one of `candidates()` (chosen with the trial's RNG) as soon
        as there is one; None if `parent` ended first."""
        started = time.monotonic()
        while parent.poll() is None:
            self.observe()
            if time.monotonic() - started >= not_before:
                found = candidates()
                if found:
                    return self.rng.choice(found)
            time.sleep(0.01)
        return None

    def deliver(self, target: str, process, sig: signal.Signals) -> bool:
        """Send `sig` to a process that is still alive; record it as delivered unless the process ignores it
        (a shard that has recorded its end ignores the stop signals, by design)."""
        self.observe()  # what was committed before the fault
        try:
            if isinstance(process, subprocess.Popen):
                if process.poll() is not None:
                    return False
            elif not alive(process):
                return False
            ignored = ignores(process.pid, sig)
            process.send_signal(sig)
        except (psutil.Error, ProcessLookupError):
            return False
        if ignored:
            self.result.facts["ignored"] = f"{target} {sig.name}"
            return False
        self.result.delivered[target] = sig.name
        self.result.facts["committed_at_fault"] = self.committed_user_count()
        return True

    def committed_user_count(self) -> int:
        return sum(len(readable_user_ids(payload)) for payload in self.committed.values())

    def note_overlap(self, first: subprocess.Popen, second: subprocess.Popen, what: str) -> None:
        """Two commands started at once count as a delivered fault if both were running together."""
        if first.poll() is None and second.poll() is None:
            self.result.delivered["concurrent"] = what

    def wait_gone(self, processes: list[psutil.Process]) -> None:
        """Processes that lost their parent (or were asked to stop) end on their own; they are the
        trial's (reaped here as their subreaper)."""
        deadline = time.monotonic() + DRAIN_TIMEOUT
        while time.monotonic() < deadline and any(alive(p) for p in processes):
            reap_orphans(self.popens)
            self.observe()
            time.sleep(0.05)

    # -- the final checks --

    def check_final_set(self) -> None:
        check = compare_with_reference(self.final_set, self.workload.reference)
        self.result.users_lost += check.users_lost
        self.result.duplicated += check.duplicated
        self.result.values_differing += check.values_differing
        self.result.problems += check.problems

    def check_commits_kept(self) -> None:
        self.observe()
        for path, payload in self.committed.items():
            if not path.is_file() or path.read_bytes() != payload:
                self.result.commits_lost += 1
                self.result.problems.append(f"committed {path} lost or changed")

    def check_no_process_left(self) -> None:
        """Every process the trial started has ended (after a drain's grace), none names its dir."""
        def leftovers() -> list[psutil.Process]:
            reap_orphans(self.popens)
            found = {}
            for pid, created in self.seen.items():
                try:
                    process = psutil.Process(pid)
                    if process.create_time() == created and alive(process):
                        found[pid] = process
                except psutil.Error:
                    pass
            for process in psutil.process_iter(["cmdline"]):
                if str(self.root) in " ".join(process.info["cmdline"] or ()) and alive(process):
                    found[process.pid] = process
            return list(found.values())

        deadline = time.monotonic() + DRAIN_TIMEOUT
        left = leftovers()
        while left and time.monotonic() < deadline:
            time.sleep(0.1)
            left = leftovers()
        for process in left:
            self.result.orphans += 1
            try:
                self.result.problems.append(f"process left: {process.pid} {' '.join(process.cmdline())[:200]}")
                process.kill()
            except psutil.Error:
                pass
        psutil.wait_procs(left, timeout=30)
        reap_orphans(self.popens)

    def check_no_traceback(self) -> None:
        logs = [*self.commands.iterdir(), *self.root.rglob("*.log")]
        for path in logs:
            try:
                text = path.read_text(errors="replace")
            except OSError:
                continue
            if "Traceback" in text:
                self.result.tracebacks += 1
                self.result.problems.append(f"a traceback in {path.relative_to(self.root)}")

    def check_set_in_place(self, output: Path, previous: bytes | None) -> None:
        """After a merge was killed or stopped: at `output` the previous whole set, a new whole set, or
        (where there was none) nothing; never a part."""
        if not output.exists():
            self.result.facts["set_after_fault"] = "none"
            if previous is not None:
                self.result.partial_sets += 1
                self.result.problems.append(f"the previous set at {output} is gone")
            return
        check = compare_with_reference(output, self.workload.reference)
        report = output / "merge_report.json"
        kept = previous is not None and report.is_file() and report.read_bytes() == previous
        self.result.facts["set_after_fault"] = "previous" if kept else "new"
        if check.problems:
            self.result.partial_sets += 1
            self.result.problems.append(f"the set at {output} after the fault is not whole: {check.problems}")


def ignores(pid: int, sig: signal.Signals) -> bool:
    """Whether the process ignores `sig` (the SigIgn mask in /proc)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("SigIgn:"):
                return bool(int(line.split()[1], 16) >> (sig - 1) & 1)
    except OSError:
        pass
    return False


def default_stop_signals_for_commands() -> None:
    """Started in the background (nohup, `&` in a script), this script has SIGINT ignored, and its commands
    would inherit that (an ignored signal stays ignored across exec) and ignore the campaign's SIGINT, as
    Python programs in the background do. A handler of its own is reset to the default action in every
    command it starts: they get SIGINT as from a terminal."""
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def alive(process: psutil.Process) -> bool:
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def reap_orphans(popens: list[subprocess.Popen]) -> None:
    """Reap the zombies re-parented to this script (its subreaper role), never a Popen's own child."""
    mine = {p.pid for p in popens}
    for child in psutil.Process().children():
        try:
            if child.pid not in mine and child.status() == psutil.STATUS_ZOMBIE:
                os.waitpid(child.pid, os.WNOHANG)
        except (psutil.Error, ChildProcessError):
            pass


# --- the fault kinds -------------------------------------------------------------------------------


# The faults strike within these fractions of the reference's wall times: from start-up to the end of the
# user loop of a launch (K > 1 ends sooner than the K=1 reference), anywhere in a merge.
LAUNCH_WINDOW = (0.05, 0.75)
MERGE_WINDOW = (0.0, 0.7)


def launch_delay(trial: Trial) -> float:
    return trial.rng.uniform(*LAUNCH_WINDOW) * trial.workload.launch_seconds


def kill_shard(trial: Trial) -> None:
    """SIGKILL one shard of a launch at a random instant, then the same launch_shards command again."""
    launcher = trial.start("launch", "launch", *trial.launch_args())
    victim = trial.wait_then_pick(launcher, launch_delay(trial),
                                  lambda: trial.processes_matching(launcher, "shardrun run"))
    killed = victim is not None and trial.deliver("shard", victim, signal.SIGKILL)
    # a shard killed after its last commit may have been counted complete: 0; else a shard died: 70
    trial.finish(launcher, {0, 70} if killed else {0})
    trial.launch("continue")


def kill_launcher(trial: Trial) -> None:
    """SIGKILL launch_shards at a random instant (its shards get SIGTERM from the kernel and drain), then
    the same command again once they have ended."""
    launcher = trial.start("launch", "launch", *trial.launch_args())
    delay = launch_delay(trial)
    trial.wait_then_pick(launcher, delay, lambda: [launcher])
    shards = trial.processes_matching(launcher, "shardrun run")
    killed = trial.deliver("launcher", launcher, signal.SIGKILL)
    trial.finish(launcher, {-signal.SIGKILL} if killed else {0})
    trial.wait_gone(shards)
    trial.launch("continue")


def merge_fault(trial: Trial, target: str, sig: signal.Signals) -> None:
    """A complete run, then a merge (into its merged set with --overwrite, or into a new output) that
    gets `sig` at a random instant; the set in place must be whole; then the same merge again."""
    trial.launch()
    replace = trial.rng.random() < 0.5
    output = trial.final_set if replace else trial.run_dir / "merged-again"
    extra = ("--overwrite",) if replace else ()
    report = output / "merge_report.json"
    previous = report.read_bytes() if report.is_file() else None
    merge = trial.merge("merge", output, *extra)
    delay = trial.rng.uniform(*MERGE_WINDOW) * trial.workload.merge_seconds
    victim = trial.wait_then_pick(merge, delay, lambda: [merge])
    helpers = trial.processes_matching(merge, "shardrun.")
    delivered = victim is not None and trial.deliver(target, victim, sig)
    if not delivered:
        expected = {0}
    elif sig == signal.SIGKILL:
        expected = {-signal.SIGKILL}
    else:
        expected = STOPPED
    trial.finish(merge, expected)
    trial.wait_gone(helpers)
    trial.check_set_in_place(output, previous)
    trial.run("merge-again", "merge", "--run", trial.run_dir, "--output", output, "--overwrite")
    trial.final_set = output


def stop_signal(trial: Trial) -> signal.Signals:
    return trial.rng.choice([signal.SIGTERM, signal.SIGINT])


def signal_launcher(trial: Trial) -> None:
    """SIGTERM or SIGINT to launch_shards at a random instant: exit 3 (its shards drain), then continue."""
    sig = stop_signal(trial)
    launcher = trial.start("launch", "launch", *trial.launch_args())
    trial.wait_then_pick(launcher, launch_delay(trial), lambda: [launcher])
    shards = trial.processes_matching(launcher, "shardrun run")
    delivered = trial.deliver("launcher", launcher, sig)
    trial.finish(launcher, STOPPED if delivered else {0})
    trial.wait_gone(shards)
    trial.launch("continue")


def signal_shard(trial: Trial) -> None:
    """SIGTERM or SIGINT to one shard at a random instant: it drains (exit 3, the launcher too), then continue."""
    sig = stop_signal(trial)
    launcher = trial.start("launch", "launch", *trial.launch_args())
    victim = trial.wait_then_pick(launcher, launch_delay(trial),
                                  lambda: trial.processes_matching(launcher, "shardrun run"))
    delivered = victim is not None and trial.deliver("shard", victim, sig)
    trial.finish(launcher, STOPPED if delivered else {0})
    trial.launch("continue")


def signal_merge(trial: Trial) -> None:
    merge_fault(trial, "merge", stop_signal(trial))


def two_merges(trial: Trial) -> None:
    """Two merges into one new output at once: exactly one writes it (exit 0), the other is refused
    (4 while the first runs, 2 once its set is there); never both 0."""
    trial.launch("launch", expected={0})
    first = trial.merge("merge-a", trial.final_set.with_name("merged-twice"))
    second = trial.merge("merge-b", trial.final_set.with_name("merged-twice"))
    trial.note_overlap(first, second, "2 merges")
    codes = sorted([trial.finish(first, {0, 2, 4}), trial.finish(second, {0, 2, 4})])
    if codes.count(0) != 1:
        trial.result.unexpected_exits += 1
        trial.result.problems.append(f"two merges into one output exited {codes}: not exactly one 0")
    trial.final_set = trial.final_set.with_name("merged-twice")


def two_launchers(trial: Trial) -> None:
    """Two launch_shards on one new --out at once: one runs (exit 0), the other is refused (exit 4)."""
    first = trial.start("launch-a", "launch", *trial.launch_args())
    second = trial.start("launch-b", "launch", *trial.launch_args())
    trial.note_overlap(first, second, "2 launchers")
    codes = sorted([trial.finish(first, {0, 4}), trial.finish(second, {0, 4})])
    if codes != [0, 4]:
        trial.result.unexpected_exits += 1
        trial.result.problems.append(f"two launchers on one new run exited {codes}, expected one 0 and one 4")
    if 0 not in codes:
        trial.launch("continue")


def fill_the_disk(filler: Path) -> None:
    """A file that takes every free byte of its filesystem: the next write anyone makes there fails."""
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
    try:
        while True:
            os.write(fd, b"\0" * 65536)
    except OSError as exc:
        if exc.errno != errno.ENOSPC:
            raise
        try:
            while True:
                os.write(fd, b"\0" * 512)
        except OSError as small:
            if small.errno != errno.ENOSPC:
                raise
    finally:
        os.close(fd)


def disk_full(trial: Trial) -> None:
    """The output root is an 8 MiB tmpfs that a filler file fills at a random instant: launch_shards
    stops with exit 6 (or had finished); the filler removed, the same command continues the run."""
    out = trial.run_dir.parent
    out.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(out)], check=True)
    trial.cleanups.append(lambda: subprocess.run(["umount", "-l", str(out)], check=False))
    launcher = trial.start("launch", "launch", *trial.launch_args())
    trial.wait_then_pick(launcher, launch_delay(trial), lambda: [launcher])
    filler = out / "filler"
    filled = launcher.poll() is None
    if filled:
        trial.observe()
        fill_the_disk(filler)
        trial.result.delivered["disk"] = "ENOSPC"
        trial.result.facts["committed_at_fault"] = trial.committed_user_count()
    # exit 6; 3 when the launcher's shards, stopped by the same disk, drained; 0 if it was done anyway
    trial.finish(launcher, {0, 3, 6} if filled else {0})
    if filled:
        trial.wait_gone(trial.processes_matching(launcher, "shardrun run"))
        filler.unlink()
    trial.launch("continue")


def can_mount() -> bool:
    return os.geteuid() == 0 and subprocess.run(["unshare", "-m", "true"], capture_output=True).returncode == 0


FAULTS: dict[str, Callable[[Trial], None]] = {
    "kill-shard": kill_shard,
    "kill-launcher": kill_launcher,
    "kill-merge": lambda trial: merge_fault(trial, "merge", signal.SIGKILL),
    "signal-launcher": signal_launcher,
    "signal-shard": signal_shard,
    "signal-merge": signal_merge,
    "two-merges": two_merges,
    "two-launchers": two_launchers,
    "disk-full": disk_full,
}


def run_trial(index: int, kind: str, work: Path, workload: Workload, rng: random.Random, keep: bool) -> TrialResult:
    root = work / f"trial-{index:03d}-{kind}"
    shutil.rmtree(root, ignore_errors=True)
    trial = Trial(index, kind, root, workload, rng)
    started = time.monotonic()
    try:
        FAULTS[kind](trial)
        trial.check_final_set()
        trial.check_commits_kept()
    except Exception as exc:  # the campaign's own failure is a finding too, never a silent pass
        log.exception("trial %d (%s) could not be carried out", index, kind)
        trial.result.problems.append(f"the trial could not be carried out: {exc!r}")
        trial.result.unexpected_exits += 1
    finally:
        for process in trial.popens:
            if process.poll() is None:
                process.kill()
                process.wait()
                trial.result.problems.append(f"{trial.labels[process.pid]} still ran at the trial's end; killed")
                trial.result.orphans += 1
        trial.check_no_process_left()
        trial.check_no_traceback()
        for cleanup in reversed(trial.cleanups):
            cleanup()
    trial.result.seconds = round(time.monotonic() - started, 1)
    if not trial.result.failed and not keep:
        shutil.rmtree(root, ignore_errors=True)
    return trial.result


# --- the campaign ---------------------------------------------------------------------------------


GUARANTEES = ("users_lost", "duplicated", "values_differing", "commits_lost", "partial_sets", "orphans",
              "tracebacks", "unexpected_exits")
HEADERS = ("lost", "dup", "differ", "commits lost", "part set", "orphans", "tracebacks", "bad exit")


def summary_table(results: list[TrialResult]) -> list[str]:
    kinds = sorted({r.kind for r in results})
    rows = [("fault kind", "trials", "delivered", *HEADERS)]
    for kind in [*kinds, "total"]:
        chosen = [r for r in results if kind in ("total", r.kind)]
        rows.append((kind, str(len(chosen)), str(sum(bool(r.delivered) for r in chosen)),
                     *(str(sum(getattr(r, g) for r in chosen)) for g in GUARANTEES)))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(width) if i == 0 else cell.rjust(width) for i, (cell, width) in
                       enumerate(zip(row, widths))) for row in rows]
    lines.insert(1, "-" * len(lines[0]))
    lines.insert(len(lines) - 1, "-" * len(lines[0]))
    delivered = Counter((target, sig) for r in results for target, sig in r.delivered.items())
    lines.append("faults delivered by target: " + (", ".join(f"{target} {sig} {n}" for (target, sig), n in
                                                             sorted(delivered.items())) or "none"))
    at_fault = [r.facts["committed_at_fault"] for r in results if "committed_at_fault" in r.facts
                and r.kind in ("kill-shard", "kill-launcher", "signal-launcher", "signal-shard", "disk-full")]
    if at_fault:
        lines.append(f"runs struck before their first commit: {at_fault.count(0)}, after some users and before the"
                     f" last: {sum(0 < n < USERS for n in at_fault)}, once every user was committed:"
                     f" {at_fault.count(USERS)}")
    sets = Counter(r.facts["set_after_fault"] for r in results if "set_after_fault" in r.facts)
    if sets:
        lines.append("set in place after a merge's fault: " + ", ".join(f"{k} {n}" for k, n in sorted(sets.items())))
    return lines


def kinds_in_order(kinds: list[str], trials: int, rng: random.Random) -> list[str]:
    """The fault kind of each trial: every kind once in a shuffled round, round after round, so that a
    short campaign meets every kind."""
    order: list[str] = []
    while len(order) < trials:
        round_ = list(kinds)
        rng.shuffle(round_)
        order += round_
    return order[:trials]


def become_subreaper() -> None:
    """Orphans of the trials' processes (a killed launcher's shards)
    become this script's children, so that a process left behind is seen."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        log.warning("cannot become the subreaper (errno %d): orphans are found by their command line only",
                    ctypes.get_errno())


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=20, help="how many trials (default 20)")
    parser.add_argument("--seed", type=int, default=20261207, help="the RNG's seed (default 20261207)")
    parser.add_argument("--work", type=Path, required=True, help="a dir for the reference and the trials")
    parser.add_argument("--kinds", nargs="+", choices=sorted(FAULTS), help="only these fault kinds")
    parser.add_argument("--keep", action="store_true", help="keep the dirs of trials that passed")
    args = parser.parse_args(argv)
    if args.trials < 1:
        parser.error("--trials must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    args = parse(argv)
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    become_subreaper()
    default_stop_signals_for_commands()
    kinds = list(args.kinds or FAULTS)
    if "disk-full" in kinds and not can_mount():
        kinds.remove("disk-full")
        log.warning("disk-full left out: it needs root with mount rights (a tmpfs as the output root)")
    if not kinds:
        log.error("no fault kind left to run")
        return 2
    rng = random.Random(args.seed)
    try:
        workload = prepare_workload(work)
    except CannotStart as exc:
        log.error("the campaign cannot start: %s", exc)
        return 2
    results = []
    for index, kind in enumerate(kinds_in_order(kinds, args.trials, rng)):
        trial_rng = random.Random(rng.getrandbits(64))
        result = run_trial(index, kind, work, workload, trial_rng, args.keep)
        results.append(result)
        verdict = "FAILED: " + "; ".join(result.problems) if result.failed else "ok"
        log.info("trial %3d %-15s K=%d %5.1f s delivered %-28s exits %s: %s", index, kind, result.shards,
                 result.seconds, ",".join(f"{t} {s}" for t, s in result.delivered.items()) or "-",
                 " ".join(f"{label}={code}" for label, code, _ in result.exits), verdict)
    (work / "campaign.json").write_text(json.dumps({"seed": args.seed, "trials": [asdict(r) for r in results]},
                                                   indent=1))
    for line in summary_table(results):
        log.info("%s", line)
    failed = [r.index for r in results if r.failed]
    if failed:
        log.info("guarantees FAILED in trials %s (their dirs are kept under %s)", failed, work)
        return 1
    log.info("every guarantee held in %d trials", len(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
