"""Two processes on one shard: the shard lock (flock) and the lease where file locks do not work.

One family of the fault table (tests/faults/fault_lab.py holds the lab and the checks every case passes;
docs/RELIABILITY.md lists every case).
"""

from __future__ import annotations

import json
import os
import signal

import pandas as pd
import pytest
from fault_lab import (
    SLOWED,
    Fault,
    Lab,
    Outcome,
    assert_documented,
    check_fault,
    committed_count,
    every_user_once,
    first_process_unharmed,
    merge_run,
    merged_values,
    output_of,
    resume_every_user_once,
    run,
    second_process_while_the_first_runs,
    start,
    wait_for_commits,
    worker_command,
)

from e2e_support import read_status
from fs_support import stand_in_worker

pytestmark = pytest.mark.e2e

pytestmark = pytest.mark.e2e

def second_process(lab: Lab) -> Outcome:
    return second_process_while_the_first_runs(lab, worker_command)


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


# --- 12. shared filesystems: no hard links, no file locks (docs/SHARED_FILESYSTEMS.md) -------------


LEASE = {"SHARDRUN_LOCK": "lease"}  # the lease forced, on this machine's filesystem (which also locks)
NO_FLOCK = {"STAND_IN_NO_FLOCK": "ENOLCK"}  # tests/stand_in_worker.py: flock as on NFS without lock support


def resume_on_the_lease_then_merge(lab: Lab, outcome: Outcome) -> pd.DataFrame:
    resume_every_user_once(lab, outcome, env=LEASE)
    assert not list(outcome.facts["shard_dir"].glob("lease.taken-*"))  # the leftover of the takeover is gone
    return merge_run(lab, outcome)


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


# --- the table ----------------------------------------------------------------------------------


FAULTS = [
    Fault("second-process-on-a-shard", "run_production --resume on a shard dir whose first process is running",
          second_process, 4, ("error: shard dir", "in use by another process", '"pid": {holder_pid}'),
          (first_process_unharmed,), merge_run),
    Fault("stale-lock-after-sigkill", "SIGKILL the lock holder after two commits, then resume", stale_lock, 0,
          (), (resumed_past_the_stale_lock,), merge_run),
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
]


@pytest.mark.parametrize("fault", FAULTS, ids=[fault.name for fault in FAULTS])
def test_fault(fault: Fault, lab: Lab):
    check_fault(fault, lab)


def test_reliability_doc_lists_every_case():
    assert_documented(FAULTS)
