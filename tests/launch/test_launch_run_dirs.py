"""The launcher's run dir (--out: new or the same run continued), its resume hint, and the shard errors
its summary shows, without processes (the fake port of test_supervisor); then, with real processes, the
launches it refuses (more shards than users, a second launcher of a running run)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pandas as pd
import pytest

from shardrun.errors import ConfigError, ResumeMismatch
from shardrun.launch import report
from shardrun.launch.local import given
from shardrun.launch.options import DEFAULT_SHARDS, shards_to_launch
from shardrun.launch.policies import describe_exit, log_excerpt
from shardrun.launch.run_dir import HeldRun, check_same_run, open_run_dir
from shardrun.shard.dirs import run_label
from shardrun.storage.atomic import write_temp_file
from shardrun.storage.paths import RunPaths
from shardrun.task import load_task

from e2e_support import analysis_values, shardrun, wait_for, write_config
from fs_support import needs_root_mounts, read_only
from test_supervisor import FakePort, fake_launcher, summary

SIGKILL = -9


# --- what the summary shows of a shard's log (pure) ----------------------------------------------

EARLIER_START = """
=== 2026-01-01T00:00:00Z python -m shardrun run --shard 0/2
error: an old refusal that a later start must not show
"""


def test_the_error_paragraph_of_the_last_start_is_shown():
    log = EARLIER_START + """
=== 2026-01-01T00:01:00Z python -m shardrun run --shard 0/2 --resume run
2026-01-01 00:01:01,000 INFO shardrun.shard.prepare: loading
error: the configured analysis cannot run as it stands:
  - the tests at k=4 need about 2.0 GiB
  - the tests at k=5 need about 4.0 GiB
"""
    assert log_excerpt(log) == ["error: the configured analysis cannot run as it stands:",
                                "  - the tests at k=4 need about 2.0 GiB", "  - the tests at k=5 need about 4.0 GiB"]


def test_the_end_of_a_traceback_is_shown():
    log = """=== start
2026-01-01 00:01:01,000 ERROR shardrun: unexpected error; please report it with this traceback
Traceback (most recent call last):
  File "a.py", line 1, in <module>
    main()
  File "b.py", line 9, in main
    raise KeyError("shard")
KeyError: 'shard'
"""
    assert log_excerpt(log) == ['  File "b.py", line 9, in main', '    raise KeyError("shard")', "KeyError: 'shard'"]


def test_a_jvm_fatal_error_report_is_shown_and_a_plain_death_shows_nothing():
    jvm = """=== start
#
# A fatal error has been detected by the Java Runtime Environment:
#
#  SIGSEGV (0xb) at pc=0x0000, pid=7, tid=8
#
# Problematic frame:
# C  [libc.so.6+0x1234]
"""
    excerpt = log_excerpt(jvm)
    assert excerpt[0].startswith("# A fatal error") and "SIGSEGV" in excerpt[1] and len(excerpt) == 4
    killed = "=== start\n2026-01-01 00:01:01,000 INFO shardrun.shard.loop: user u1 done\n"
    assert log_excerpt(killed) == []
    # a refusal's paragraph is shown whole, folded, so that its fix (its last words) is never cut off
    refusal = ("error: --resume RUN/shard-0-of-2: the input data differs from the run's (the input file changed"
               " since the run started; restore it or start a new run with a new --out)") * 3
    folded = log_excerpt("=== start\n" + refusal + "\n")
    assert all(len(line) <= 300 for line in folded) and " ".join(line.strip() for line in folded) == refusal


def test_describe_exit_without_the_log_hint():
    assert describe_exit(2) == "refused its input (config, data or environment; see its log)"
    assert describe_exit(2, log_hint=False) == "refused its input (config, data or environment)"
    assert "see its log" not in describe_exit(70, log_hint=False) and "hs_err" in describe_exit(70, log_hint=False)
    assert "see its log" not in describe_exit(6, log_hint=False)


def test_the_summary_shows_a_refused_shards_error_instead_of_see_its_log(tmp_path):
    port = FakePort({0: [2], 1: [0]})
    outputs: list[str] = []
    launcher = fake_launcher(tmp_path, port, outputs, shards=2)
    (tmp_path / "logs").mkdir()
    (tmp_path / "logs" / "shard0.log").write_text(
        "=== start\nerror: cannot resume run/shard-0-of-2: its shard.json is damaged (...)\nshard done\n")
    launcher.wait()
    summary(launcher)
    (line0,) = [o for o in outputs if o.startswith("  shard 0/2")]
    assert "refused its input (config, data or environment);" in line0 and "see its log" not in line0
    assert line0.endswith("\n      error: cannot resume run/shard-0-of-2: its shard.json is damaged (...)")
    (line1,) = [o for o in outputs if o.startswith("  shard 1/2")]
    assert "\n" not in line1


# --- --out: a new run, or the same one continued ------------------------------------------------


def write_run_json(launcher, run_dir, **changes):
    run_dir.mkdir(parents=True, exist_ok=True)
    doc = {"shards": launcher.options.shards, "config_hash": launcher.config.hash, "data_fingerprint": "fp",
           "config_path": "config/other.yaml", **changes}
    (run_dir / "run.json").write_text(json.dumps(doc))


def prepare_run_dir(launcher, fingerprint="fp") -> HeldRun:
    """The run dir as launch() takes it: given_run_dir, the data's check of the plan, then made; launcher.run is set."""
    config, options = launcher.config, launcher.options
    where = given(config, options)
    if where.existing:
        check_same_run(where.run, where.flag, options.shards, config.hash, options.pilot, fingerprint)
    held = open_run_dir(where, config.output.root, run_label(load_task(config.task), config, options.pilot))
    launcher.run = held.run
    return held


def resume_hint(launcher, config_source, interrupted=True) -> str:
    return report.resume_hint(launcher.run, launcher.options, config_source, interrupted)


def out_launcher(tmp_path, out, **options):
    base = tmp_path / f"launcher{len(list(tmp_path.glob('launcher*')))}"  # fake_launcher makes base/run
    base.mkdir()
    return fake_launcher(base, FakePort({}), [], shards=2, out=out, **options)


def test_out_starts_a_new_run_in_a_missing_or_empty_dir(tmp_path):
    for out in (tmp_path / "new" / "run", tmp_path / "empty"):
        if out.name == "empty":
            out.mkdir()
        launcher = out_launcher(tmp_path, out)
        held = prepare_run_dir(launcher)
        assert held.run.dir == out and out.is_dir() and not held.existing


def test_out_starts_a_new_run_where_a_launcher_was_killed_before_any_shard_wrote_run_json(tmp_path):
    """What a launcher SIGKILLed while it wrote launcher.json leaves, before a shard wrote run.json (found by
    the chaos campaign: the continuation refused the dir for the scratch file): its own files and a
    scratch file of the atomic writer. The same command starts the run there."""
    out = tmp_path / "run"
    out.mkdir()
    (out / "launcher.json").write_text("{}")
    (out / ".launcher.lock").write_text("")
    write_temp_file(out, b"")
    launcher = out_launcher(tmp_path, out)
    held = prepare_run_dir(launcher)
    assert held.run.dir == out and not held.existing
    (out / "notes.txt").write_text("a user's file")
    with pytest.raises(ConfigError, match="notes.txt"):
        prepare_run_dir(out_launcher(tmp_path, out))


def test_out_continues_the_same_run(tmp_path):
    out = tmp_path / "run1"
    launcher = out_launcher(tmp_path, out)
    write_run_json(launcher, out)
    held = prepare_run_dir(launcher)
    assert held.run.dir == out and held.existing


@pytest.mark.parametrize("changes, error, words", [
    ({"shards": 3}, ResumeMismatch, ["started with 3 shards", "--shards 3"]),
    ({"config_hash": "0123"}, ResumeMismatch, ["another config", "'0123'", "config/other.yaml"]),
    ({"data_fingerprint": "old"}, ResumeMismatch, ["other input data", "'old'", "'fp'"]),
])
def test_out_refuses_another_run_naming_the_difference(tmp_path, changes, error, words):
    out = tmp_path / "run1"
    launcher = out_launcher(tmp_path, out)
    write_run_json(launcher, out, **changes)
    before = sorted(out.rglob("*"))
    with pytest.raises(error) as refused:
        prepare_run_dir(launcher)
    for word in words:
        assert word in str(refused.value)
    assert sorted(out.rglob("*")) == before


def test_out_refuses_another_pilot_and_a_dir_that_is_no_run(tmp_path):
    out = tmp_path / "run1"
    launcher = out_launcher(tmp_path, out, pilot=3)
    write_run_json(launcher, out)
    (out / "shard-0-of-2").mkdir()
    (out / "shard-0-of-2" / "shard.json").write_text(json.dumps({"shard": "0/2", "pilot": None}))
    with pytest.raises(ResumeMismatch, match="started with --full") as refused:
        prepare_run_dir(launcher)
    assert "drop --pilot to continue it" in str(refused.value)  # launch_shards has no --full to pass
    full = out_launcher(tmp_path, out)
    (out / "shard-0-of-2" / "shard.json").write_text(json.dumps({"shard": "0/2", "pilot": 3}))
    with pytest.raises(ResumeMismatch, match="started with --pilot 3") as refused:
        prepare_run_dir(full)
    assert "pass --pilot 3 to continue it" in str(refused.value)
    stranger = tmp_path / "stranger"
    stranger.mkdir()
    (stranger / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="not empty"):
        prepare_run_dir(out_launcher(tmp_path, stranger))


def test_the_resume_hint_never_names_a_dir_without_run_json(tmp_path):
    out = tmp_path / "run1"
    launcher = out_launcher(tmp_path, out, pilot=4)
    held = prepare_run_dir(launcher)
    hint = resume_hint(launcher, tmp_path / "c.yaml")
    assert hint.startswith("nothing was written") and hint.endswith(f"--shards 2 --out {out} --pilot 4")
    held.forget_if_empty()
    assert not out.exists()  # made by this launcher, nothing in it
    write_run_json(launcher, out)
    assert resume_hint(launcher, tmp_path / "c.yaml") == (
        f"the run is incomplete. Continue it with: launch_shards --config {tmp_path / 'c.yaml'} --shards 2"
        f" --out {out} --pilot 4")
    # refused shards (bad data, a full disk): the same command is refused again until that is fixed
    assert resume_hint(launcher, tmp_path / "c.yaml", interrupted=False).startswith(
        "the run is incomplete. Once the errors above are fixed, continue it with: launch_shards --config")
    # a new run dir under output.root, made and left empty: removed, and the hint is the same command
    (tmp_path / "fresh").mkdir()
    fresh = fake_launcher(tmp_path / "fresh", FakePort({}), [], shards=2)
    fresh_held = prepare_run_dir(fresh)
    assert fresh.run.dir.parent == tmp_path / "fresh" / "out" and fresh.run.dir.name.startswith("proposal_full_")
    assert resume_hint(fresh, tmp_path / "c.yaml").endswith(f"--config {tmp_path / 'c.yaml'} --shards 2")
    fresh.write_state()
    fresh_held.forget_if_empty()
    assert not fresh.run.dir.exists()


def test_with_nothing_written_after_refusals_the_hint_says_to_fix_them_first(tmp_path):
    launcher = out_launcher(tmp_path, tmp_path / "run1")
    prepare_run_dir(launcher)
    hint = resume_hint(launcher, tmp_path / "c.yaml", interrupted=False)
    assert hint.startswith("nothing was written") and "Once the errors above are fixed, the same command" in hint


@pytest.mark.jvm
def test_more_shards_than_users_is_refused_with_the_count_that_fits_and_nothing_written(workspace, tmp_path):
    """14 users, 20 shards: six processes and JVMs would run for nothing. Refused before anything starts,
    locally and on SLURM (dry run: the refusal comes before any scheduler command)."""
    for scheduler in ("local", "slurm"):
        result = shardrun("launch", "--config", str(workspace["config"]), "--shards", "20", "--out",
                          str(tmp_path / scheduler), "--scheduler", scheduler, *(["--dry-run"] if scheduler == "slurm"
                                                                                   else []),
                          cwd=workspace["root"], check=False)
        assert result.returncode == 2, result.stdout + result.stderr
        assert "20 shards for 14 users" in result.stderr and "Pass --shards 14 or fewer" in result.stderr
        assert not (tmp_path / scheduler).exists()


@pytest.mark.jvm
def test_a_refused_out_is_the_only_thing_said_before_the_data_are_read(workspace, tmp_path):
    """--out a file, a dir of other files, or a run of another K: refused (exit 2) with nothing on stdout
    (no plan shown before the refusal) and before the data are read; the existing run is left as it was."""
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    reference_run = workspace["root"] / "reference"
    before = {p: p.read_bytes() for p in reference_run.rglob("*") if p.is_file()}
    for out, says in ((a_file, f"--out {a_file} is a file, not a dir"),
                      (foreign, f"--out {foreign} is not empty (notes.txt)"),
                      (reference_run, "pass --shards 1 to continue it")):
        for dry_run in ([], ["--dry-run"]):
            result = shardrun("launch", "--config", str(workspace["config"]), "--shards", "2", "--out", str(out),
                              *dry_run, cwd=workspace["root"], check=False)
            assert result.returncode == 2, result.stdout + result.stderr
            assert result.stdout == "" and says in result.stderr and "Traceback" not in result.stderr
            assert "indexed" not in result.stderr  # refused before the data were read
    assert {p: p.read_bytes() for p in reference_run.rglob("*") if p.is_file()} == before
    assert [p.name for p in foreign.iterdir()] == ["notes.txt"]

    # A run whose input changed since it started: known only once the data are read, and still refused
    # before the plan is shown.
    data = tmp_path / "users.csv"
    data.write_bytes(workspace["data"].read_bytes())
    config = write_config(tmp_path / "config.yaml", data, tmp_path)
    run = tmp_path / "run"
    shardrun("run", "--config", str(config), "--pilot", "1", "--shard", "0/1", "--out", str(run), cwd=tmp_path)
    with data.open("a") as more:
        more.write(data.read_text().splitlines()[-1] + "\n")
    committed = {p: p.read_bytes() for p in run.rglob("*") if p.is_file() and p.name != "shard.log"}
    changed = shardrun("launch", "--config", str(config), "--shards", "1", "--pilot", "1", "--out", str(run),
                       cwd=tmp_path, check=False)
    assert changed.returncode == 2, changed.stdout + changed.stderr
    assert changed.stdout == "" and "the input file changed since the run started" in changed.stderr
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file() and p.name != "shard.log"} == committed


@pytest.mark.jvm
def test_an_out_on_a_read_only_filesystem_is_exit_6_before_the_data_are_read(workspace, tmp_path):
    """--out in a read-only place (a new run, or output.root without --out): the storage error (exit 6)
    with its fix, and nothing on stdout: no plan shown for a run that cannot be written."""
    needs_root_mounts()
    place = tmp_path / "ro"
    place.mkdir()
    config = write_config(tmp_path / "config.yaml", workspace["data"], place)  # output.root: ro/out
    for out in (["--out", str(place / "run")], []):
        result = subprocess.run([*read_only(place), sys.executable, "-m", "shardrun", "launch", "--config", str(config),
                                 "--shards", "2", *out], cwd=workspace["root"], capture_output=True, text=True,
                                timeout=300)
        assert result.returncode == 6, result.stdout + result.stderr
        assert result.stdout == "" and "Traceback" not in result.stderr and "indexed" not in result.stderr
        assert "Read-only file system" in result.stderr and "then run the same command again" in result.stderr
    assert list(place.iterdir()) == []


@pytest.mark.e2e
def test_a_second_launcher_on_a_running_run_is_refused_naming_the_first(workspace, tmp_path):
    """One launcher per run: a second launch_shards on the same --out while the first runs is refused at
    once (exit 4) naming it and how to follow it; the first runs the whole run. The first is paused
    (SIGSTOP; its shards run on) while the second tries, so they overlap whatever the load."""
    run = tmp_path / "run"
    command = [sys.executable, "-m", "shardrun", "launch", "--config", str(workspace["config"]), "--shards", "2",
               "--out", str(run)]
    first = subprocess.Popen(command, cwd=workspace["root"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             text=True)
    lock = RunPaths(run).launcher_lock
    # run.json too: a run that exists is refused before its data are read, with nothing on stdout
    wait_for(lambda: lock.is_file() and f'"pid": {first.pid}' in lock.read_text() and RunPaths(run).run_json.is_file(),
             process=first)
    os.kill(first.pid, signal.SIGSTOP)
    try:
        second = subprocess.run(command, cwd=workspace["root"], capture_output=True, text=True, timeout=300)
    finally:
        os.kill(first.pid, signal.SIGCONT)
    assert second.returncode == 4, second.stdout + second.stderr
    assert f'"pid": {first.pid}' in second.stderr and f"monitor_progress {run} --watch" in second.stderr
    assert second.stdout == "" and "indexed" not in second.stderr  # refused at once: no plan, no data read
    output, _ = first.communicate(timeout=600)
    assert first.returncode == 0, output
    pd.testing.assert_frame_equal(analysis_values(run / "merged"), workspace["reference"], check_exact=True)


@pytest.mark.e2e
def test_continuing_a_run_takes_its_k_when_shards_is_not_given(workspace, tmp_path):
    """`--out RUN` of an existing run without --shards continues it at the run's K, not at the default 4
    (which that run would refuse); a new dir without --shards gets the default."""
    run = tmp_path / "run"
    assert shards_to_launch(None, run) == DEFAULT_SHARDS
    launch = ("launch", "--config", str(workspace["config"]), "--pilot", "1", "--no-merge", "--out", str(run))
    shardrun(*launch, "--shards", "2", cwd=workspace["root"])
    assert shards_to_launch(None, run) == 2 and shards_to_launch(3, run) == 3
    again = shardrun(*launch, cwd=workspace["root"])
    assert "shard 1/2" in again.stdout and "shard-0-of-4" not in again.stdout + again.stderr, again.stdout
    assert sorted(p.name for p in run.glob("shard-*")) == ["shard-0-of-2", "shard-1-of-2"]
