"""Faults by signal: SIGKILL at random points, a SIGTERM drain, a SIGTERM while a completed shard exits.

One family of the fault table (tests/faults/fault_lab.py holds the lab and the checks every case passes;
docs/RELIABILITY.md lists every case).
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest
from fault_lab import (
    SLOWED,
    Fault,
    Lab,
    Outcome,
    Small,
    assert_documented,
    check_fault,
    committed_count,
    merge_run,
    merged_values,
    output_of,
    resume_run,
    run,
    start,
    worker_command,
)

from e2e_support import read_status, wait_for
from fs_support import stand_in_worker
from store_support import committed_users

pytestmark = pytest.mark.e2e

pytestmark = pytest.mark.e2e

KILL_TRIALS = 12
KILL_SEED = 20260301


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


# --- the table ----------------------------------------------------------------------------------


FAULTS = [
    Fault("sigkill-random-points", f"{KILL_TRIALS} seeded trials of SIGKILL at random delays (start-up or"
          " loop), every third killed again in its resume; each resumed to completion and merged",
          sigkill_trials, -signal.SIGKILL, (), (kills_hit_start_up_and_the_loop,)),
    Fault("sigterm-drain", "SIGTERM to one run_production after two commits", sigterm_drain, 3,
          ("SIGTERM received: finishing the user in flight",), (drained_whole,), resume_run),
    Fault("sigterm-during-the-exit-of-a-completed-shard", "SIGTERM while a shard whose users are all committed"
          " exits (the stand-in holds the exit open with the default signal actions back)", sigterm_during_exit, 0, (),
          (completed_not_killed,), merge_run),
]


@pytest.mark.parametrize("fault", FAULTS, ids=[fault.name for fault in FAULTS])
def test_fault(fault: Fault, lab: Lab):
    check_fault(fault, lab)


def test_reliability_doc_lists_every_case():
    assert_documented(FAULTS)
