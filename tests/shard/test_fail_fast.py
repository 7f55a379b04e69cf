"""Fail fast: the pure rule, and a real shard whose every user fails (a class on no classpath, as when a
task's jar is missing) stopping after its first N users, then validated as the failure it is."""

from __future__ import annotations

import json

import pytest

from shardrun.cli.run_production import parser as run_production_parser
from shardrun.shard.dirs import DEFAULT_FAIL_FAST
from shardrun.shard.loop import FailFastStop, fail_fast_message, fail_fast_stop
from shardrun.states import UserStatus

from e2e_support import faulty_task_config, read_status, shardrun
from faulty_task import MISSING_CLASS

FAILED, OK, SKIPPED = UserStatus.FAILED, UserStatus.OK, UserStatus.SKIPPED
HEAP = "HeapTooSmall: Java heap exhausted: this user needs about 3.0 GiB. Raise jvm.xmx in the config."
MISSING = f"TypeError: Class {MISSING_CLASS} is not found"


def ended(*outcomes: tuple[UserStatus, str]) -> list:
    """What the loop asks after each user: the decision with the users ended so far."""
    return [fail_fast_stop(list(outcomes[:n]), 3) for n in range(1, len(outcomes) + 1)]


def test_the_first_n_users_failing_alike_stop_the_shard_at_the_nth():
    decisions = ended((FAILED, MISSING), (FAILED, MISSING), (FAILED, MISSING))
    assert decisions == [None, None, FailFastStop(3, "TypeError", MISSING)]


@pytest.mark.parametrize("first", [
    [(FAILED, MISSING), (OK, ""), (FAILED, MISSING)],  # one user analysed: the cause is not everyone's
    [(FAILED, MISSING), (SKIPPED, "few rows"), (FAILED, MISSING)],
    [(FAILED, MISSING), (FAILED, HEAP), (FAILED, MISSING)],  # two error classes
    [(FAILED, MISSING), (FAILED, MISSING)],  # fewer than N users
])
def test_anything_but_n_alike_failures_goes_on(first):
    assert fail_fast_stop(first, 3) is None


def test_only_the_first_n_users_count_and_zero_turns_it_off():
    assert fail_fast_stop([(OK, "")] + [(FAILED, MISSING)] * 3, 3) is None  # failures after the first users
    assert fail_fast_stop([(FAILED, MISSING)] * 4, 3) is None  # the decision was the third user's
    assert fail_fast_stop([(FAILED, MISSING)] * 10, 0) is None
    assert DEFAULT_FAIL_FAST == 5


def test_the_message_names_the_error_the_fix_and_the_way_on():
    message = fail_fast_message(FailFastStop(3, "TypeError", MISSING), "0/2", "/runs/r/shard-0-of-2")
    assert "its first 3 users all failed with TypeError" in message and MISSING in message
    assert "/runs/r/shard-0-of-2/errors.jsonl" in message
    assert "run_production --resume /runs/r/shard-0-of-2 --retry-failed" in message
    assert "--fail-fast 0 turns this check off" in message


@pytest.mark.e2e
def test_a_shard_whose_every_user_fails_stops_after_the_first_n(workspace, tmp_path):
    root = workspace["root"]
    path, env = faulty_task_config(workspace, tmp_path)
    env["FAULTY_TASK"] = "missing-class"
    run = tmp_path / "run"
    first = shardrun("run", "--config", str(path), "--full", "--shard", "0/1", "--out", str(run),
                     "--fail-fast", "3", cwd=root, check=False, env=env)
    assert first.returncode == 1, first.stderr
    shard_dir = run / "shard-0-of-1"
    status = read_status(shard_dir)
    assert status["state"] == "failed"
    assert (status["users_done"], status["users_failed"], status["users_todo"]) == (3, 3, 11)
    said = f"shard 0/1 stopped (fail fast): its first 3 users all failed with TypeError (e.g. {MISSING})"
    assert status["last_error"].startswith(said), status["last_error"]
    hint = f"run_production --config {path} --full --resume {shard_dir} --retry-failed"
    assert hint in status["last_error"]  # a command run_production takes: --full and the run's config
    run_production_parser().parse_args(hint.split()[1:])  # argparse would exit 2 on a command it refuses
    assert said in (shard_dir / "shard.log").read_text()
    errors = [json.loads(line) for line in (shard_dir / "errors.jsonl").read_text().splitlines()]
    assert [e["user_id"] for e in errors] == ["user-00", "user-01", "user-02"]

    # Without fail fast the shard runs every user, and every one fails: a run with nothing analysed.
    rest = shardrun("run", "--config", str(path), "--full", "--resume", str(shard_dir), "--fail-fast", "0",
                    cwd=root, check=False, env=env)
    assert rest.returncode == 1, rest.stderr
    status = read_status(shard_dir)
    assert (status["state"], status["users_failed"], status["users_todo"]) == ("completed_with_failures", 14, 0)
    shardrun("merge", "--run", str(run), "--output", str(run / "merged"), cwd=root, env=env)
    strict = shardrun("validate", "--dir", str(run / "merged"), cwd=root, check=False, env=env)
    assert strict.returncode == 5, strict.stdout + strict.stderr
    assert (f"14 users of 14 failed (--max-failed 0): 14 TypeError (e.g. user 'user-00': Class {MISSING_CLASS} is"
            f" not found); see {run}/shard-*/errors.jsonl") in strict.stdout, strict.stdout
    assert f"launch_shards --config {path} --shards 1 --out {run} --retry-failed" in strict.stdout
    # nothing analysed is never valid, whatever the tolerance
    tolerant = shardrun("validate", "--dir", str(run / "merged"), "--max-failed", "100%", cwd=root, check=False,
                        env=env)
    assert tolerant.returncode == 5, tolerant.stdout + tolerant.stderr
    assert "14 users of 14 failed" not in tolerant.stdout
    for verdict in (strict, tolerant):
        assert "validation passed" not in verdict.stdout and f"{run / 'merged'}: not valid" in verdict.stdout
        assert "nothing was analysed: of 14 users, 14 failed and 0 skipped" in verdict.stdout
        assert "users: 14 in the result set: 0 ok, 0 skipped, 14 failed" in verdict.stdout
    written = json.loads((run / "merged" / "validation.json").read_text())
    assert written["valid"] is False and written["verdict"] == "failed" and written["max_failed"] == "100%"
    assert written["users"] == {"total": 14, "ok": 0, "skipped": 0, "failed": 14, "skipped_by_reason": {},
                                "failed_by_class": {"TypeError": 14}}
