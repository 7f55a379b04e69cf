"""summary.png: the data preparation on small frames with known answers (the core's timeline and the
default task's panels), then merge writing a real PNG with and without the task's picture hook."""

from __future__ import annotations

import functools
import logging
import math
import os
from datetime import datetime, timezone

import numpy as np
import pandas as pd
import pytest

from shardrun.infodynamics import plots as task_plots
from shardrun.infodynamics import task as default_task
from shardrun.results import summary, timeline
from shardrun.results.merge import merge_shards
from shardrun.results.read import read_shard, shard_dirs_of_run
from shardrun.results.timeline import UserSpan, commit_spans
from shardrun.states import user_outcome
from shardrun.task import SummaryPanel
from shardrun.storage.paths import MergedPaths, ShardPaths
from shardrun.storage.commits import commit_user, scan_committed
import picture_panels
from task_double import (  # noqa: F401  (task_double: the autouse fixture that makes the double loadable)
    COLUMNS,
    USERS,
    make_run,
    raw_config,
    read_both,
    read_report,
    task_double,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PIXELS = (summary.FIGURE_INCHES[1] * summary.DPI, summary.FIGURE_INCHES[0] * summary.DPI)  # rows, columns


def result_frame(ais_by_k: dict[int, list[float]], null_by_k: dict[int, list[float]], status: list[str],
                 mode: str = "activity", k_selected: list | None = None) -> pd.DataFrame:
    frame = pd.DataFrame({"user_id": [f"u{i}" for i in range(len(status))], "feature_mode": mode, "status": status})
    for k, values in ais_by_k.items():
        frame[f"ais_k{k}_bits"] = values
        frame[f"ais_k{k}_null_mean_bits"] = null_by_k[k]
        frame[f"ais_k{k}_p"] = 0.0
    if k_selected is not None:
        frame["k_selected"] = pd.array(k_selected, dtype="Int64")
    return frame


# --- AIS against k ---------------------------------------------------------------------------


def test_ais_quantiles_over_ok_rows_with_bias_correction():
    frame = result_frame(
        {1: [1.0, 2.0, 3.0, 4.0, 5.0, 99.0], 2: [2.0, 4.0, math.nan, 6.0, 8.0, 99.0]},
        {1: [0.5] * 6, 2: [1.0] * 6},
        status=["ok"] * 5 + ["failed"],  # the failed row's 99 must not count
    )

    table = task_plots.ais_quantiles(frame).set_index(["feature_mode", "measure", "k"])

    ais_k1 = table.loc[("activity", "ais", 1)]
    assert ais_k1["n"] == 5
    assert (ais_k1["q10"], ais_k1["q25"], ais_k1["median"], ais_k1["q75"], ais_k1["q90"]) == pytest.approx(
        (1.4, 2.0, 3.0, 4.0, 4.6)
    )
    assert table.loc[("activity", "bias_corrected", 1), "median"] == pytest.approx(2.5)
    ais_k2 = table.loc[("activity", "ais", 2)]  # the NaN (a k left out by the guard) is left out
    assert ais_k2["n"] == 4 and ais_k2["median"] == pytest.approx(5.0)
    assert table.loc[("activity", "bias_corrected", 2), "median"] == pytest.approx(4.0)


def test_ais_quantiles_per_mode_and_numeric_k_order():
    frame = pd.concat(
        [
            result_frame({2: [1.0], 10: [3.0]}, {2: [0.0], 10: [0.0]}, ["ok"], mode="composite"),
            result_frame({2: [0.5], 10: [0.7]}, {2: [0.0], 10: [0.0]}, ["ok"], mode="activity"),
        ],
        ignore_index=True,
    )

    assert task_plots.grid_ks(frame) == [2, 10]  # 10 after 2, not before it as text would sort
    table = task_plots.ais_quantiles(frame)
    ais = table[table.measure == "ais"]
    assert list(zip(ais.feature_mode, ais.k, ais["median"])) == [
        ("activity", 2, 0.5), ("activity", 10, 0.7), ("composite", 2, 1.0), ("composite", 10, 3.0),
    ]


def test_ais_quantiles_empty_without_ok_rows_or_columns():
    no_ok = result_frame({1: [1.0, 2.0]}, {1: [0.0, 0.0]}, ["failed", "skipped"])
    assert task_plots.ais_quantiles(no_ok).empty
    assert task_plots.ais_quantiles(pd.DataFrame({"status": ["ok"], "ais_bits": [1.0]})).empty
    assert task_plots.ais_quantiles(pd.DataFrame()).empty


# --- selected k ------------------------------------------------------------------------------


def test_selected_k_counts_include_zero_counts_of_the_grid_and_only_ok_rows():
    frame = result_frame(
        {1: [0.1] * 5, 2: [0.1] * 5, 3: [0.1] * 5},
        {1: [0.0] * 5, 2: [0.0] * 5, 3: [0.0] * 5},
        status=["ok", "ok", "ok", "failed", "ok"],
        k_selected=[1, 3, 3, 2, None],  # the failed row's 2 and the missing k do not count
    )

    counts = task_plots.selected_k_counts(frame)

    assert list(zip(counts.feature_mode, counts.k, counts.users)) == [("activity", 1, 1), ("activity", 2, 0), ("activity", 3, 2)]
    assert task_plots.selected_k_counts(frame.drop(columns="k_selected")).empty


# --- the timeline ----------------------------------------------------------------------------


def test_user_span_ends_at_the_commit_and_lasts_the_rows_seconds():
    rows = [{"status": "ok", "seconds": 2.5}, {"status": "failed", "seconds": 2.5}]
    span = timeline.user_span("1/4", "2026-01-01T00:00:10.250+00:00", rows)
    end = datetime(2026, 1, 1, 0, 0, 10, 250000, tzinfo=timezone.utc).timestamp()
    assert span == UserSpan("1/4", end - 2.5, end, "failed")
    assert timeline.user_span("1/4", None, rows) is None
    assert timeline.user_span("1/4", "not a time", rows) is None
    assert timeline.user_span("0/1", "2026-01-01T00:00:10+00:00", [{"status": "skipped", "seconds": None}]).start == \
        datetime(2026, 1, 1, 0, 0, 10, tzinfo=timezone.utc).timestamp()
    # a span's status is the user's outcome as shardrun.states defines it, the one definition
    assert user_outcome([{"status": "skipped"}, {"status": "ok"}]) == "ok"
    assert user_outcome([{"status": "skipped"}]) == "skipped"
    assert span_status([{"status": "skipped"}, {"status": "ok"}]) == "ok"
    assert span_status([{"status": "skipped"}]) == "skipped"
    assert span_status([]) == "failed"  # no rows: cannot be trusted
    assert span_status([{"status": ""}, {"status": "ok"}]) == "failed"  # an unknown status too
    assert span_status([{"status": None}]) == "failed"


def span_status(rows) -> str:
    """The status the timeline gives a user with these rows."""
    return timeline.user_span("0/1", "2026-01-01T00:00:10+00:00", rows).status


def test_timeline_table_is_relative_to_the_run_start_and_ordered_by_shard():
    spans = [
        UserSpan("10/16", 1005.0, 1007.0, "ok"),
        UserSpan("2/16", 1003.0, 1004.0, "failed"),
        UserSpan("2/16", 1000.0, 1003.0, "ok"),
    ]

    table = timeline.timeline_table(spans)

    assert table.attrs["run_start"] == 1000.0
    assert list(table.shard) == ["2/16", "2/16", "10/16"]
    assert list(table.start_s) == [0.0, 3.0, 5.0] and list(table.seconds) == [3.0, 1.0, 2.0]
    assert timeline.timeline_table([]).empty


def test_shard_summary_lists_the_straggler_shard_first():
    spans = [
        UserSpan("0/3", 0.0, 10.0, "ok"),
        UserSpan("0/3", 10.0, 12.0, "failed"),
        UserSpan("1/3", 0.0, 30.0, "ok"),  # the straggler: finishes 18 s after the first shard
        UserSpan("2/3", 1.0, 20.0, "skipped"),
    ]

    per_shard = timeline.shard_summary(timeline.timeline_table(spans))

    assert list(per_shard.shard) == ["1/3", "2/3", "0/3"]
    assert list(per_shard.lag_s) == [18.0, 8.0, 0.0]
    first = per_shard.set_index("shard").loc["0/3"]
    assert (first.users, first.ok, first.failed, first.skipped, first.busy_s) == (2, 1, 1, 0, 12.0)


def test_slow_users_are_the_slowest_first_and_only_when_they_stand_out():
    spans = [UserSpan("0/2", i, i + 1.0, "ok") for i in range(10)]
    spans += [UserSpan("1/2", 0.0, 5.0, "ok"), UserSpan("1/2", 5.0, 13.0, "ok"), UserSpan("0/2", 10.0, 14.0, "ok")]

    slow = timeline.slow_users(timeline.timeline_table(spans), factor=3.0, per_shard=3)

    assert list(zip(slow.shard, slow.seconds)) == [("1/2", 8.0), ("1/2", 5.0), ("0/2", 4.0)]
    uniform = [UserSpan("0/1", i, i + 1.0, "ok") for i in range(5)]
    assert timeline.slow_users(timeline.timeline_table(uniform)).empty


def test_timeline_bars_cap_per_shard_and_keep_idle_gaps():
    # 1,000 users in shard 0/2 (one of them failed), then an idle hour, then 10 more; 3 in shard 1/2
    spans = [UserSpan("0/2", float(i), i + 1.0, "failed" if i == 5 else "ok") for i in range(1000)]
    spans += [UserSpan("0/2", 4600.0 + i, 4601.0 + i, "ok") for i in range(10)]
    spans += [UserSpan("1/2", float(i), i + 1.0, "skipped") for i in range(3)]

    bars = timeline.timeline_bars(timeline.timeline_table(spans), max_bars_per_shard=100)

    shard0 = bars[bars.shard == "0/2"]
    assert len(shard0) <= 100 + 1  # the cap, plus one bar started by the idle gap
    assert shard0.users.sum() == 1010 and shard0.users.max() == math.ceil(1010 / 100)
    assert not ((shard0.start_s < 1000) & (shard0.end_s > 4600)).any()  # no bar across the idle hour
    assert set(shard0.status) == {"ok"}  # a lone failure in a bar of 11 users: the bar shows "ok"
    shard1 = bars[bars.shard == "1/2"]
    assert list(shard1.users) == [1, 1, 1] and set(shard1.status) == {"skipped"}


def test_timeline_bars_show_the_most_common_status():
    spans = [UserSpan("0/1", float(i), i + 1.0, status) for i, status in enumerate(["ok", "failed", "failed", "ok"])]
    bars = timeline.timeline_bars(timeline.timeline_table(spans), max_bars_per_shard=1)
    assert list(bars.status) == ["failed"] and list(bars.users) == [4]  # a 2-2 tie goes to the more severe


def test_timeline_bars_of_hundreds_of_thousands_stay_few():
    users = 300_000
    starts = np.arange(users, dtype=float)
    spans = list(zip([f"{i % 8}/8" for i in range(users)], starts, starts + 0.9, ["ok"] * users))
    bars = timeline.timeline_bars(timeline.timeline_table(spans))
    assert bars.groupby("shard").size().max() <= timeline.MAX_BARS_PER_SHARD
    assert bars.users.sum() == users


# --- the PNG through merge -------------------------------------------------------------------

KS = (1, 2, 3)
AIS_COLUMNS = ["k_selected"] + [f"ais_k{k}_{what}" for k in KS for what in ("bits", "null_mean_bits", "p")]


@pytest.fixture
def with_ais_columns(task_double, monkeypatch):
    """The double's schema with the AIS columns of the real analysis, so merge keeps them, and the
    default task's picture hook, so merge draws the AIS panels."""
    monkeypatch.setattr(task_double, "result_columns", lambda settings: COLUMNS + AIS_COLUMNS)
    monkeypatch.setattr(task_double, "summary_panels", default_task.summary_panels, raising=False)


@pytest.fixture
def drawn_panels(monkeypatch):
    """The panels each merge takes from its task to draw (it still draws them)."""
    seen = []

    def spy(task, frame, settings):
        panels = summary.task_panels(task, frame, settings)
        seen.append(panels)
        return panels

    monkeypatch.setattr("shardrun.results.merge.task_panels", spy)
    return seen


def ais_override(i: int, ks=KS) -> dict:
    values = {f"ais_k{k}_bits": 0.2 * k + 0.05 * i for k in ks}
    values.update({f"ais_k{k}_null_mean_bits": 0.01 * k * k for k in ks})
    values.update({f"ais_k{k}_p": 0.0 for k in ks})
    values["k_selected"] = ks[i % len(ks)]
    return values


def assert_valid_png(path):
    import matplotlib.image

    payload = path.read_bytes()
    assert payload[:8] == PNG_SIGNATURE
    assert len(payload) > 20_000  # three drawn panels, not an empty canvas
    assert matplotlib.image.imread(path).shape[:2] == PIXELS


def failed_override() -> dict:
    return {"status": "failed", "reason": "java.lang.OutOfMemoryError", "ais_bits": None, "k_selected": None}


CASES = {
    "normal": dict(users=USERS, overrides={u: ais_override(i) for i, u in enumerate(USERS)}),
    "failed_and_skipped": dict(
        users=USERS,
        overrides={
            **{u: ais_override(i) for i, u in enumerate(USERS)},
            USERS[1]: failed_override(),
            USERS[2]: {"status": "skipped", "reason": "only 3 observations", "k_selected": None},
        },
    ),
    "no_ok_rows": dict(users=USERS, overrides={u: failed_override() for u in USERS}),
    "single_user": dict(users=["solo"], overrides={"solo": ais_override(0)}),
    "single_k": dict(users=USERS, overrides={u: ais_override(i, ks=(2,)) for i, u in enumerate(USERS)}),
}


@pytest.mark.parametrize("case", list(CASES))
def test_merge_writes_a_readable_png(tmp_path, with_ais_columns, case):
    users, overrides = CASES[case]["users"], CASES[case]["overrides"]
    run = make_run(tmp_path / "run", count=min(2, len(users)), raw=raw_config(users=users), overrides=overrides)
    out = tmp_path / "merged"

    merge_shards(shard_dirs_of_run(run), out)

    assert_valid_png(MergedPaths(out).summary_png)


def test_merge_draws_the_default_tasks_panels_through_its_hook(tmp_path, with_ais_columns, drawn_panels):
    run = make_run(tmp_path / "run", count=2, overrides={u: ais_override(i) for i, u in enumerate(USERS)})
    merge_shards(shard_dirs_of_run(run), tmp_path / "merged")
    [panels] = drawn_panels
    assert [p.width for p in panels] == [2.6, 1.6, 1.8]  # AIS against k, significant shares, the selected k
    assert_valid_png(MergedPaths(tmp_path / "merged").summary_png)


def test_merge_writes_the_timeline_for_a_task_without_the_picture_hook(tmp_path, task_double, drawn_panels):
    assert not hasattr(task_double, "summary_panels")
    run = make_run(tmp_path / "run", count=3)
    out = tmp_path / "merged"
    merge_shards(shard_dirs_of_run(run), out)
    assert drawn_panels == [[]]  # no panels of the task: the core's own picture only
    assert_valid_png(MergedPaths(out).summary_png)


def picture_frame_and_spans():
    frame = result_frame({1: [0.3, 0.4], 2: [0.5, 0.7]}, {1: [0.0, 0.0], 2: [0.1, 0.1]}, ["ok", "failed"],
                         k_selected=[2, None])
    return frame, [UserSpan("0/2", 0.0, 2.0, "ok"), UserSpan("1/2", 0.0, 3.0, "failed")]


def test_the_core_picture_is_the_status_panel_above_the_timeline():
    frame, spans = picture_frame_and_spans()
    figure = summary.draw_summary(summary.ResultCounts.of(frame), spans,
                                  panels=summary.task_panels(object(), frame, None))
    assert summary.panel_titles(figure) == [summary.STATUS_PANEL_TITLE, summary.TIMELINE_TITLE]
    assert summary.status_counts(frame) == {"ok": 1, "failed": 1}


def test_the_default_tasks_picture_holds_the_ais_panels_above_the_timeline():
    frame, spans = picture_frame_and_spans()
    panels = summary.task_panels(default_task, frame, None)
    figure = summary.draw_summary(summary.ResultCounts.of(frame), spans, panels=panels)
    assert summary.panel_titles(figure) == [
        task_plots.AIS_PANEL_TITLE, task_plots.SIGNIFICANCE_PANEL_TITLE, task_plots.SELECTED_K_PANEL_TITLE,
        summary.TIMELINE_TITLE,
    ]
    # the title in plain words: the core's part (users, shards), then what the task's panels show
    assert figure.get_suptitle().startswith(f"2 users, 2 shards: {task_plots.PLAIN_TITLE}\n")


def test_the_core_title_says_users_and_shards_and_names_no_analysis():
    frame, spans = picture_frame_and_spans()
    figure = summary.draw_summary(summary.ResultCounts.of(frame), spans,
                                  panels=summary.task_panels(object(), frame, None), title="run1")
    first, second = figure.get_suptitle().split("\n")
    assert first == "2 users, 2 shards: results by status and the time each shard took"
    assert second == "run1: 2 result rows, ok 1 / failed 1"


def test_the_ais_axis_fits_the_data_not_a_fixed_range():
    frame = result_frame({1: [2.0, 2.1, 2.2], 2: [2.4, 2.5, 2.6]}, {1: [0.1] * 3, 2: [0.1] * 3}, ["ok"] * 3)
    spans = [UserSpan("0/1", 0.0, 1.0, "ok")]
    figure = summary.draw_summary(summary.ResultCounts.of(frame), spans,
                                  panels=summary.task_panels(default_task, frame, None))
    low, high = figure.axes[0].get_ylim()
    values = task_plots.ais_quantiles(frame)[["q10", "q90", "median"]].to_numpy()
    assert values.min() - 0.5 < low < values.min() and values.max() < high < values.max() + 0.5


# --- significance ------------------------------------------------------------------------------


def test_significant_shares_count_ok_rows_with_a_p_value_below_alpha_per_mode_and_k():
    frame = pd.concat([
        result_frame({1: [0.1] * 4, 2: [0.1] * 4}, {1: [0.0] * 4, 2: [0.0] * 4}, ["ok", "ok", "ok", "failed"]),
        result_frame({1: [0.1] * 2, 2: [0.1] * 2}, {1: [0.0] * 2, 2: [0.0] * 2}, ["ok", "ok"], mode="composite"),
    ], ignore_index=True)
    frame["ais_k1_p"] = [0.01, 0.2, 0.05, 0.0, 0.04, 0.049]
    frame["ais_k2_p"] = [0.01, np.nan, 0.5, 0.0, 0.9, 0.5]
    table = task_plots.significant_shares(frame)
    rows = {(r.feature_mode, r.k): (r.n, r.significant, r.share) for r in table.itertuples()}
    assert rows[("activity", 1)] == (3, 1, 1 / 3)  # 0.05 is not below 0.05; the failed row does not count
    assert rows[("activity", 2)] == (2, 1, 0.5)  # a missing p-value does not count
    assert rows[("composite", 1)] == (2, 2, 1.0) and rows[("composite", 2)] == (2, 0, 0.0)


def test_significant_shares_are_empty_without_p_columns_or_ok_rows():
    frame = result_frame({1: [0.1]}, {1: [0.0]}, ["failed"])
    assert task_plots.significant_shares(frame).empty
    assert task_plots.significant_shares(frame.drop(columns=["ais_k1_p"]).assign(status="ok")).empty


def test_fitted_limits_surround_the_data_with_a_margin():
    assert task_plots.fitted_limits(1.0, 2.0) == pytest.approx((0.94, 2.06))
    low, high = task_plots.fitted_limits(3.0, 3.0)
    assert low < 3.0 < high


def test_a_failing_picture_hook_keeps_the_merged_results(tmp_path, task_double, monkeypatch, caplog):
    def broken(frame, settings):
        raise KeyError("ais_k1_bits")

    monkeypatch.setattr(task_double, "summary_panels", broken, raising=False)
    run = make_run(tmp_path / "run", count=2)
    out = tmp_path / "merged"
    with caplog.at_level(logging.ERROR, logger="shardrun.results.merge"):
        report = merge_shards(shard_dirs_of_run(run), out)
    assert report.complete and len(read_both(out)[0]) == 16
    assert not MergedPaths(out).summary_png.exists()
    assert any("KeyError" in r.getMessage() for r in caplog.records if r.levelno == logging.ERROR)


def test_commit_times_have_milliseconds_and_become_spans(tmp_path):
    run = make_run(tmp_path / "run", count=2, seconds=0.25)
    for shard_dir in shard_dirs_of_run(run):
        for user in scan_committed(ShardPaths(shard_dir)).values():
            stamp = datetime.fromisoformat(user.record["ended_at"])
            assert len(user.record["ended_at"].split("T")[1].split("+")[0]) == len("00:00:00.000")
            assert stamp.tzinfo is not None
    spans = commit_spans([read_shard(d) for d in shard_dirs_of_run(run)])
    assert len(spans) == len(USERS)
    assert {s.shard for s in spans} == {"0/2", "1/2"}
    assert all(s.end - s.start == pytest.approx(0.25) and s.status == "ok" for s in spans)


def panels_of(*draws):
    return lambda frame, settings: [SummaryPanel(draw=draw) for draw in draws]


def hook_that_raises(frame, settings):
    raise ValueError("no font")


@pytest.mark.parametrize("hook, said", [
    (panels_of(picture_panels.no_font), ["ValueError: no font", "in no_font"]),  # raised in the picture's process
    (panels_of(picture_panels.killed), ["killed by SIGKILL, likely the OOM killer"]),
    (hook_that_raises, ["ValueError: no font"]),  # the task's hook, in the merge's own process
], ids=["panel-raises", "picture-process-killed", "panels-hook-raises"])
def test_a_plot_failure_keeps_the_merged_results(tmp_path, task_double, monkeypatch, caplog, hook, said):
    run = make_run(tmp_path / "run", count=2)
    out = tmp_path / "merged"
    merge_shards(shard_dirs_of_run(run), out)  # a first merge leaves a picture behind
    assert MergedPaths(out).summary_png.is_file()

    monkeypatch.setattr(task_double, "summary_panels", hook, raising=False)
    with caplog.at_level(logging.ERROR, logger="shardrun.results.merge"):
        report = merge_shards(shard_dirs_of_run(run), out, overwrite=True)

    assert report.complete and read_report(out)["complete"] is True
    assert len(read_both(out)[0]) == 16
    assert not MergedPaths(out).summary_png.exists()  # the old picture does not pass for this merge's
    [record] = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert "summary.png" in record.getMessage() and all(words in record.getMessage() for words in said)
    assert record.exc_info is not None  # the traceback is in the log


def test_a_panel_that_cannot_be_pickled_is_drawn_in_the_merges_own_process(tmp_path, task_double, monkeypatch,
                                                                          caplog):
    marker = tmp_path / "drawn-by"
    monkeypatch.setattr(task_double, "summary_panels",
                        lambda frame, settings: [SummaryPanel(draw=lambda axes: picture_panels.slow(axes, marker, 0))],
                        raising=False)
    run = make_run(tmp_path / "run", count=2)
    with caplog.at_level(logging.INFO, logger="shardrun.results.picture_process"):
        merge_shards(shard_dirs_of_run(run), tmp_path / "merged")
    assert_valid_png(MergedPaths(tmp_path / "merged").summary_png)
    assert marker.read_text() == str(os.getpid())
    assert any("drawn in the merge's own process" in r.getMessage() for r in caplog.records)


def test_the_picture_is_drawn_by_another_process(tmp_path, task_double, monkeypatch):
    marker = tmp_path / "drawn-by"
    monkeypatch.setattr(task_double, "summary_panels", panels_of(functools.partial(picture_panels.slow, marker=marker,
                                                                                   seconds=0)), raising=False)
    run = make_run(tmp_path / "run", count=2)
    merge_shards(shard_dirs_of_run(run), tmp_path / "merged")
    assert_valid_png(MergedPaths(tmp_path / "merged").summary_png)
    assert int(marker.read_text()) != os.getpid()


def test_hundreds_of_thousands_of_users_still_draw(tmp_path):
    users = 200_000
    rng = np.random.default_rng(1)
    frame = pd.DataFrame(
        {
            "user_id": np.repeat([f"u{i}" for i in range(users)], 2),
            "feature_mode": np.tile(["activity", "composite"], users),
            "status": np.where(rng.random(2 * users) < 0.97, "ok", "failed"),
            "k_selected": rng.integers(1, 5, 2 * users),
        }
    )
    for k in range(1, 5):
        frame[f"ais_k{k}_bits"] = rng.normal(1.0 + 0.1 * k, 0.2, 2 * users)
        frame[f"ais_k{k}_null_mean_bits"] = 0.01 * k
    durations = rng.gamma(4, 0.3, users)
    shard_of = np.arange(users) % 16
    ends = pd.Series(durations).groupby(shard_of).cumsum().to_numpy()
    spans = list(zip([f"{s}/16" for s in shard_of], ends - durations, ends, frame.status.iloc[::2]))
    path = tmp_path / "summary.png"

    picture = summary.SummaryPicture(summary.ResultCounts.of(frame), spans,
                                     panels=tuple(task_plots.summary_panels(frame, None)))
    path.write_bytes(picture.png())

    assert_valid_png(path)


def test_spans_read_in_columns_equal_spans_read_row_by_row(tmp_path):
    statuses = {"u01": {"status": "failed", "reason": "boom"}, "u02": {"status": "skipped", "reason": "short"},
                "u03": {"status": "no such status"}}
    runs = [make_run(tmp_path / f"run{seconds}", count=2, overrides=statuses, seconds=seconds)
            for seconds in (1.5, None, -1.0)]
    for shard_dir in [d for run in runs for d in shard_dirs_of_run(run)]:
        columnar, by_rows = read_shard(shard_dir), read_shard(shard_dir, columnar=False)
        assert columnar.columnar and not by_rows.columnar
        assert commit_spans([columnar]) == commit_spans([by_rows]) != []


def test_the_timeline_of_a_span_table_equals_the_timeline_of_spans_one_by_one(tmp_path):
    """merge draws from span_table's columns; a timeline of UserSpans built user by user (read row by
    row, user_span) is the independent answer it must equal, value for value and in order."""
    statuses = {"u01": {"status": "failed", "reason": "boom"}, "u02": {"status": "skipped", "reason": "short"}}
    # users whose rows differ in status and seconds: the user's outcome and its largest usable seconds
    mixed = {"u03": [("skipped", 2.0), ("ok", 3.5)], "u04": [("skipped", 1.0), ("skipped", None)],
             "u05": [("ok", -1.0), ("failed", 0.5)], "u06": [("ok", None), ("no such status", 4.0)], "u07": []}
    runs = [make_run(tmp_path / f"run{seconds}", count=2, overrides=statuses, seconds=seconds, skip_users=list(mixed))
            for seconds in (1.5, 0.25)]
    for run in runs:
        for user_id, rows in mixed.items():
            commit_user(ShardPaths(shard_dirs_of_run(run)[0]), user_id,
                        [{"user_id": user_id, "feature_mode": mode, "status": status, "seconds": seconds}
                         for mode, (status, seconds) in zip(["activity", "composite"], rows)])
    dirs = [d for run in runs for d in shard_dirs_of_run(run)]
    columnar = [read_shard(d) for d in dirs]
    by_rows = [read_shard(d, columnar=False) for d in dirs]
    one_by_one = [timeline.user_span(f"{shard.spec} {shard.dir.parent.name}", shard.ended_at.get(user_id), rows)
                  for shard in by_rows for user_id, rows in shard.committed.items()]

    from_table = timeline.timeline_table(timeline.span_table(columnar))

    assert all(shard.columnar for shard in columnar) and len(from_table) == len(one_by_one) == 2 * len(USERS)
    pd.testing.assert_frame_equal(from_table, timeline.timeline_table(one_by_one))
    assert from_table.attrs == timeline.timeline_table(one_by_one).attrs
    assert set(from_table["status"]) == {"ok", "failed", "skipped"}
