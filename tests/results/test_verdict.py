"""The run-level verdict, pure: users by outcome, skips by reason, failures by error class, --max-failed."""

from __future__ import annotations

import pandas as pd
import pytest

from shardrun.results.tolerance import NO_FAILED, FailedTolerance
from shardrun.results.validate import Rerun, count_outcomes, outcome_lines, verdict_problems
from shardrun.states import failure_class

MODES = ("activity", "composite")


def rows(user: str, status: str, reason: str = "", modes=MODES) -> list[dict]:
    return [{"user_id": user, "feature_mode": mode, "status": status, "reason": reason} for mode in modes]


def frame(*users: list[dict]) -> pd.DataFrame:
    return pd.DataFrame([row for user in users for row in user])


HEAP = ("HeapTooSmall: Java heap exhausted: this user needs about 3.0 GiB of heap but the JVM has -Xmx2g (k=6)."
        " Raise jvm.xmx in the config, then run the failed users again with --retry-failed.")
JAVA = "java.lang.ArrayIndexOutOfBoundsException: java.lang.ArrayIndexOutOfBoundsException: Index 7 out of bounds"


@pytest.mark.parametrize("reason, expected", [
    (HEAP, "HeapTooSmall"),
    (JAVA, "java.lang.ArrayIndexOutOfBoundsException"),
    ("TypeError: Class org.example.Missing is not found", "TypeError"),
    ("Java heap exhausted (java.lang.OutOfMemoryError: Java heap space); raise jvm.xmx and retry the failed users"
     " (--retry-failed)",
     "Java heap exhausted"),
    ("something odd happened", "something odd happened"),
    ("", "no reason given"),
    (None, "no reason given"),
])
def test_the_error_class_is_read_from_the_reason(reason, expected):
    assert failure_class(reason) == expected


def test_users_are_counted_by_outcome_reason_and_class():
    outcomes = count_outcomes(frame(
        rows("u0", "ok"), rows("u1", "failed", HEAP), rows("u2", "failed", HEAP), rows("u3", "failed", JAVA),
        rows("u4", "skipped", "only 3 observations; needs at least 10"),
        rows("u5", "skipped", "only 0 observations; needs at least 10"),
        rows("u6", "skipped", "too many labels"),
        # one mode skipped, the other analysed: the user is ok
        [{"user_id": "u7", "feature_mode": "activity", "status": "ok", "reason": ""},
         {"user_id": "u7", "feature_mode": "composite", "status": "skipped", "reason": "guard"}],
        # one mode failed: the user failed
        [{"user_id": "u8", "feature_mode": "activity", "status": "ok", "reason": ""},
         {"user_id": "u8", "feature_mode": "composite", "status": "failed", "reason": JAVA}],
    ), "user_id")
    assert (outcomes.users, outcomes.ok, outcomes.skipped_users, outcomes.failed_users) == (9, 2, 3, 4)
    assert [(g.label, g.users) for g in outcomes.failed] == [
        ("HeapTooSmall", 2), ("java.lang.ArrayIndexOutOfBoundsException", 2)]
    assert [(g.label, g.users, g.variants) for g in outcomes.skipped] == [
        ("only 3 observations; needs at least 10", 2, 2), ("too many labels", 1, 1)]
    assert outcomes.to_json() == {
        "total": 9, "ok": 2, "skipped": 3, "failed": 4,
        "skipped_by_reason": {"only 3 observations; needs at least 10": 2, "too many labels": 1},
        "failed_by_class": {"HeapTooSmall": 2, "java.lang.ArrayIndexOutOfBoundsException": 2},
    }


def test_a_row_without_a_known_status_makes_its_user_failed():
    outcomes = count_outcomes(frame(rows("u0", "ok"), rows("u1", "done")), "user_id")
    assert (outcomes.ok, outcomes.failed_users) == (1, 1)
    assert "not one of ok, skipped, failed" in outcomes.failed[0].example_reason


def test_failed_users_fail_the_verdict_with_counts_by_class_and_the_fix():
    outcomes = count_outcomes(frame(*[rows(f"u{i}", "ok") for i in range(5)],
                                    *[rows(f"h{i}", "failed", HEAP) for i in range(10)],
                                    *[rows(f"j{i}", "failed", JAVA) for i in range(2)]), "user_id")
    rerun = Rerun(errors="RUN/shard-*/errors.jsonl", command="launch_shards --out RUN --retry-failed")
    (problem,) = verdict_problems(outcomes, NO_FAILED, rerun)
    assert problem.startswith("12 users of 17 failed (--max-failed 0): 10 HeapTooSmall (raise jvm.xmx in the config,"
                              " or --xmx), 2 java.lang.ArrayIndexOutOfBoundsException (e.g. user 'j0': Index 7 out of"
                              " bounds);"), problem
    assert "see RUN/shard-*/errors.jsonl" in problem and problem.endswith("launch_shards --out RUN --retry-failed")
    assert verdict_problems(outcomes, FailedTolerance(12)) == []
    assert verdict_problems(outcomes, FailedTolerance(11)) != []
    assert verdict_problems(outcomes, FailedTolerance(percent=12 / 17 * 100 + 0.01)) == []
    assert verdict_problems(outcomes, FailedTolerance.parse("70%")) != []
    lines = outcome_lines(outcomes, FailedTolerance(12))
    assert lines[0] == "users: 17 in the result set: 5 ok, 0 skipped, 12 failed (within --max-failed 12)"
    assert lines[1].startswith("  failed by error class: 10 HeapTooSmall (raise jvm.xmx")


def test_an_all_skipped_set_is_not_valid_and_says_why():
    skipped = [rows(f"u{i}", "skipped", "only 0 observations; needs at least 6") for i in range(60)]
    outcomes = count_outcomes(frame(*skipped), "user_id")
    (problem,) = verdict_problems(outcomes)
    assert problem.startswith("nothing was analysed: every one of the 60 users was skipped"
                              " (60 'only 0 observations; needs at least 6')"), problem
    assert outcome_lines(outcomes) == [
        "users: 60 in the result set: 0 ok, 60 skipped, 0 failed",
        "  skipped by reason: 60 'only 0 observations; needs at least 6'",
    ]


def test_nothing_analysed_fails_even_when_the_failures_are_tolerated():
    outcomes = count_outcomes(frame(rows("u0", "failed", JAVA), rows("u1", "skipped", "few")), "user_id")
    assert verdict_problems(outcomes, FailedTolerance(percent=100)) == [
        "nothing was analysed: of 2 users, 1 failed and 1 skipped; no user has a result"]
    assert verdict_problems(count_outcomes(frame(), "user_id")) == ["the result set has no users: nothing was analysed"]


def test_every_user_ok_passes_and_many_reasons_are_capped():
    assert verdict_problems(count_outcomes(frame(rows("u0", "ok")), "user_id")) == []
    outcomes = count_outcomes(frame(rows("ok", "ok"), *[rows(f"u{i}", "skipped", f"rule {chr(97 + i)}")
                                                        for i in range(8)]), "user_id")
    assert outcome_lines(outcomes)[1].endswith(", and 3 more reasons")


@pytest.mark.parametrize("text, count, percent", [("0", 0, None), ("5", 5, None), ("2%", 0, 2.0),
                                                   (" 2.5% ", 0, 2.5), ("100%", 0, 100.0)])
def test_max_failed_parses_a_count_or_a_share(text, count, percent):
    tolerance = FailedTolerance.parse(text)
    assert (tolerance.count, tolerance.percent) == (count, percent)


@pytest.mark.parametrize("text", ["-1", "five", "2.5", "101%", "-1%", "%", "nan%", ""])
def test_max_failed_refuses_other_values(text):
    with pytest.raises(ValueError, match="--max-failed takes a number of users"):
        FailedTolerance.parse(text)
