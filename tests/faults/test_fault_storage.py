"""Storage faults: torn files, a full disk, read-only dirs, no hard links (vfat), a failed fsync, and the
launcher's own writes failing.

One family of the fault table (tests/faults/fault_lab.py holds the lab and the checks every case passes;
docs/RELIABILITY.md lists every case).
"""

from __future__ import annotations

import errno
import os
import resource
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import psutil
import pytest
from fault_lab import (
    SLOWED,
    USERS_PER_BATCH,
    Fault,
    Lab,
    Outcome,
    assert_documented,
    check_fault,
    committed_count,
    every_user_once,
    merge_run,
    output_of,
    resume_every_user_once,
    resume_every_user_once_then_merge,
    resume_run,
    run,
    start,
    wait_for_commits,
    worker_command,
)

from shardrun.storage.commits import decode_batch

from e2e_support import analysis_values, read_status, shardrun, wait_for
from fs_support import needs_root_mounts, stand_in_worker, vfat_mount
from store_support import batch_files, batch_of, committed_users

pytestmark = pytest.mark.e2e

pytestmark = pytest.mark.e2e

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



def crash_before_rename(lab: Lab) -> Outcome:
    """SIGKILL between the existence check and the rename of the third commit (the instant is aimed at
    by tests/stand_in_worker.py; the kill and the vfat filesystem are real)."""
    out = vfat_output_root(lab)
    config = lab.config()
    run_dir = out / "run"
    # --commit-interval 0: one user per batch, so the third rename is the third user
    result = run(lab, stand_in_worker("--config", str(config), "--full", "--shard", "0/1", "--out", str(run_dir),
                                      "--commit-interval", "0"),
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


# --- the table ----------------------------------------------------------------------------------


FAULTS = [
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
]


@pytest.mark.parametrize("fault", FAULTS, ids=[fault.name for fault in FAULTS])
def test_fault(fault: Fault, lab: Lab):
    check_fault(fault, lab)


def test_reliability_doc_lists_every_case():
    assert_documented(FAULTS)
