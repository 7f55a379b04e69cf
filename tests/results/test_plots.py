"""The merge's pictures: summary.png (the science: the default task's panels) and run.png (the run: the
core's per-shard timeline). The data preparation on small frames with known answers, what the drawn
figures hold (titles, the ceiling line, the reason an empty panel gives), then merge writing real PNGs
with and without the task's picture hook."""

from __future__ import annotations

import logging
import math
import os
from datetime import UTC, datetime

import numpy as np
import pandas as pd
import pytest

from shardrun.infodynamics import plots as task_plots
from shardrun.infodynamics import task as default_task
from shardrun.panel_style import why_nothing_is_drawn
from shardrun.results import pictures, timeline
from shardrun.results.merge import merge_shards
from shardrun.results.read import read_shard, shard_dirs_of_run
from shardrun.results.timeline import UserSpan
from shardrun.states import user_outcome
from shardrun.storage.commits import scan_committed
from shardrun.storage.paths import MergedPaths, ShardPaths
from shardrun.task import SummaryPanel

from store_support import commit_user
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
PIXELS = (pictures.SUMMARY_INCHES[1] * pictures.DPI, pictures.SUMMARY_INCHES[0] * pictures.DPI)  # rows, columns
RUN_PIXELS = (pictures.RUN_INCHES[1] * pictures.DPI, pictures.RUN_INCHES[0] * pictures.DPI)


def panel_titles(figure) -> list[str]:
    """The titles of a drawn figure's panels, top row first (what a reader sees above each panel)."""
    return [axes.get_title(loc="left") for axes in figure.axes]


def user_span(shard: str, ended_at, rows, user_id: str | None = None) -> UserSpan | None:
    """The span of one committed user, worked out user by user: the independent answer the merge's
    span table (over whole columns) must equal. None without a readable commit time."""
    try:
        moment = datetime.fromisoformat(ended_at) if isinstance(ended_at, str) else None
    except ValueError:
        return None
    if moment is None:
        return None
    end = (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()
    durations = [row.get("seconds") for row in rows]
    seconds = max((float(d) for d in durations if isinstance(d, (int, float)) and not isinstance(d, bool)
                   and math.isfinite(d) and d >= 0), default=0.0)
    return UserSpan(shard=shard, start=end - seconds, end=end, status=user_outcome(rows).value, user_id=user_id)


def commit_spans(shards) -> list[UserSpan]:
    """span_table's spans one by one."""
    return [UserSpan(*span) for span in timeline.span_table(shards).itertuples(index=False, name=None)]


def result_frame(ais_by_k: dict[int, list[float]], null_by_k: dict[int, list[float]], status: list[str],
                 mode: str = "activity", k_selected: list | None = None, q: float | None = 0.01) -> pd.DataFrame:
    """Rows of one mode; every AIS p-value 0.0 and, unless `q` is None, every q-value `q`."""
    frame = pd.DataFrame({"user_id": [f"u{i}" for i in range(len(status))], "feature_mode": mode, "status": status})
    for k, values in ais_by_k.items():
        frame[f"ais_k{k}_bits"] = values
        frame[f"ais_k{k}_null_mean_bits"] = null_by_k[k]
        frame[f"ais_k{k}_p"] = 0.0
        if q is not None:
            frame[f"ais_k{k}_q"] = q
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

    assert list(zip(counts.feature_mode, counts.k, counts.users)) == [("activity", 1, 1), ("activity", 2, 0),
                                                                      ("activity", 3, 2)]
    assert task_plots.selected_k_counts(frame.drop(columns="k_selected")).empty


# --- the ceiling, the FDR share, te_hour ----------------------------------------------------------


def two_modes(q: float | None = 0.01) -> pd.DataFrame:
    """Three ok users in activity (base 4) and composite (base 24)."""
    frames = [result_frame({1: [0.5, 0.6, 0.7], 2: [0.8, 0.9, 1.0]}, {1: [0.1] * 3, 2: [0.2] * 3}, ["ok"] * 3,
                           mode=mode, k_selected=[1, 2, 2], q=q).assign(base=base)
              for mode, base in (("activity", 4), ("composite", 24))]
    frame = pd.concat(frames, ignore_index=True)
    frame["te_hour_bits"] = [0.1, 0.2, 0.3, 0.05, 0.06, 0.07]
    if q is not None:
        frame["te_hour_q"] = [0.01, 0.2, 0.04, 0.5, 0.5, 0.01]
    return frame


def draw(frame: pd.DataFrame):
    return pictures.draw_summary(frame, default_task.summary_panels(frame, None))


def axes_titled(figure, start: str):
    [axes] = [a for a in figure.axes if a.get_title(loc="left").startswith(start)]
    return axes


def texts_of(axes) -> list[str]:
    return [text.get_text() for text in axes.texts]


def horizontal_lines(axes) -> list[float]:
    """The heights of the panel's horizontal lines across the whole panel (axhline)."""
    return [float(line.get_ydata()[0]) for line in axes.lines
            if len(set(line.get_ydata())) == 1 and list(line.get_xdata()) == [0, 1]]


def test_each_modes_ais_panel_draws_the_ceiling_at_log2_of_its_base():
    figure = draw(two_modes())
    for mode, base in (("activity", 4), ("composite", 24)):
        axes = axes_titled(figure, task_plots.AIS_PANEL_TITLE.format(mode=mode))
        assert math.log2(base) in [pytest.approx(y) for y in horizontal_lines(axes)]
        _low, high = axes.get_ylim()
        assert high > math.log2(base)  # the ceiling is in view, however low the values are
        labels = [t.get_text() for t in axes.get_legend().get_texts()]
        assert f"ceiling log2(base) = log2({base}) = {math.log2(base):.2f} bits" in labels
        assert "bias-corrected: AIS − permutation null mean" in labels  # drawn apart from the raw AIS
        assert axes.get_title(loc="left").endswith("n = 3 users")


def test_users_of_different_bases_get_a_ceiling_band():
    frame = two_modes()
    frame.loc[frame.index[0], "base"] = 3  # one activity user with another alphabet
    assert task_plots.ceilings(frame)["activity"] == pytest.approx((math.log2(3), 2.0))
    axes = axes_titled(draw(frame), task_plots.AIS_PANEL_TITLE.format(mode="activity"))
    assert any("bases differ" in t.get_text() for t in axes.get_legend().get_texts())


def test_the_fdr_share_is_the_count_of_q_below_the_level_over_n():
    frame = pd.concat([
        result_frame({1: [0.1] * 4, 2: [0.1] * 4}, {1: [0.0] * 4, 2: [0.0] * 4}, ["ok", "ok", "ok", "failed"]),
        result_frame({1: [0.1] * 2, 2: [0.1] * 2}, {1: [0.0] * 2, 2: [0.0] * 2}, ["ok", "ok"], mode="composite"),
    ], ignore_index=True)
    frame["ais_k1_q"] = [0.01, 0.2, 0.05, 0.0, 0.04, 0.049]
    frame["ais_k2_q"] = [0.01, np.nan, 0.5, 0.0, 0.9, 0.5]
    frame["ais_k1_p"] = frame["ais_k2_p"] = 0.001  # every uncorrected p is small: it must not count

    rows = {(r.feature_mode, r.k): (r.n, r.significant, r.share) for r in task_plots.fdr_shares(frame).itertuples()}

    ok = frame["status"] == "ok"
    for (mode, k), (n, significant, share) in rows.items():
        q = frame.loc[ok & (frame["feature_mode"] == mode), f"ais_k{k}_q"].dropna()
        assert (n, significant, share) == (len(q), int((q < 0.05).sum()), (q < 0.05).sum() / len(q))
    assert rows[("activity", 1)] == (3, 1, 1 / 3)  # 0.05 is not below 0.05; the failed row does not count
    assert rows[("activity", 2)] == (2, 1, 0.5)  # a missing q-value does not count
    assert rows[("composite", 1)] == (2, 2, 1.0) and rows[("composite", 2)] == (2, 0, 0.0)


def test_without_q_columns_the_panels_say_so_and_never_fall_back_to_p():
    frame = two_modes(q=None)
    assert task_plots.fdr_shares(frame).empty and not task_plots.has_q_values(frame)
    figure = draw(frame)
    assert task_plots.NO_Q_VALUES in unwrapped(axes_titled(figure, task_plots.FDR_PANEL_TITLE))
    te = axes_titled(figure, task_plots.TE_PANEL_TITLE)
    assert texts_of(te).count(task_plots.NO_Q_VALUES) == 2  # one per mode, above its te_hour
    assert not task_plots.te_hour_table(frame)["share"].notna().any()


def test_te_hour_per_mode_with_its_fdr_share():
    table = task_plots.te_hour_table(two_modes()).set_index("feature_mode")
    assert table.loc["activity", "n"] == 3 and table.loc["activity", "median"] == pytest.approx(0.2)
    assert (table.loc["activity", "significant"], table.loc["activity", "share"]) == (2, pytest.approx(2 / 3))
    assert (table.loc["composite", "significant"], table.loc["composite", "n_q"]) == (1, 3)
    te = axes_titled(draw(two_modes()), task_plots.TE_PANEL_TITLE)
    assert "q < 0.05: 67%\n(2 of 3)" in texts_of(te)
    assert [label.get_text() for label in te.get_xticklabels()] == ["activity\nn = 3", "composite\nn = 3"]


def test_every_panel_of_summary_png_says_how_many_users_it_is_drawn_from():
    figure = draw(two_modes())
    titles = panel_titles(figure)
    assert len(titles) == 5  # two modes' AIS, the FDR share, te_hour, the selected k
    assert all("n = 3" in title for title in titles), titles


def test_an_all_skipped_set_says_why_in_each_panel():
    frame = result_frame({1: [np.nan] * 3}, {1: [np.nan] * 3}, ["skipped"] * 3, k_selected=[None] * 3)
    frame["reason"] = [f"only {n} observations; needs at least 14 (data.min_observations 20, largest k + 2 = 8)"
                       for n in (0, 3, 12)]
    frame = pd.concat([frame, frame.assign(feature_mode="composite")], ignore_index=True)  # two rows per user
    figure = draw(frame)
    expected = "every user skipped: too few observations (3 of 3)"  # users, not rows
    for mode in ("activity", "composite"):
        assert expected in unwrapped(axes_titled(figure, task_plots.AIS_PANEL_TITLE.format(mode=mode)))
    for title in (task_plots.FDR_PANEL_TITLE, task_plots.TE_PANEL_TITLE, task_plots.SELECTED_K_PANEL_TITLE):
        assert expected in unwrapped(axes_titled(figure, title)), title


def unwrapped(axes) -> list[str]:
    """The panel's texts with the empty panel's line wrapping undone."""
    return [text.replace("\n", " ") for text in texts_of(axes)]


def test_an_all_failed_set_names_the_most_common_reason():
    frame = result_frame({1: [np.nan] * 3}, {1: [np.nan] * 3}, ["failed"] * 3)
    frame["reason"] = ["HeapTooSmall: user u1 needs 512 MiB; raise jvm.xmx", "HeapTooSmall: user u2 needs 640 MiB",
                       "RuntimeError: boom"]
    text = why_nothing_is_drawn(frame["status"], frame["reason"], plain=task_plots.plain_reason)
    assert text == "every user failed: most often HeapTooSmall: user uN needs N MiB (2) (3 of 3)"
    # numbers are masked so the same cause counts once, not once per user
    counted = why_nothing_is_drawn(pd.Series(["failed"] * 2), pd.Series(["Java heap exhausted (need 512 MiB)",
                                                                          "Java heap exhausted (need 640 MiB)"]),
                                   plain=task_plots.plain_reason)
    assert counted == "every user failed: Java heap exhausted (2 of 2)"
    mixed = why_nothing_is_drawn(pd.Series(["skipped", "failed"]), pd.Series(["only 3 observations", "boom"]),
                                 plain=task_plots.plain_reason)
    assert mixed == "no user with status ok:\n1 skipped: too few observations\n1 failed: boom"


def test_the_core_picture_without_task_panels_says_why_no_row_is_ok():
    frame = pd.DataFrame({"user_id": ["a", "b"], "status": ["skipped", "skipped"],
                          "reason": ["only 0 observations", "only 1 observations"]})
    figure = pictures.draw_summary(frame, [])
    assert panel_titles(figure) == [pictures.STATUS_PANEL_TITLE, pictures.REASONS_PANEL_TITLE]
    assert "every row skipped: only N observations (2 of 2)" in texts_of(figure.axes[0])  # the core's words
    reasons = figure.axes[1]
    assert [label.get_text() for label in reasons.get_yticklabels()] == ["skipped: only N observations"]
    assert [bar.get_width() for bar in reasons.patches] == [2]


def test_the_core_counts_reasons_by_kind_most_common_first():
    frame = pd.DataFrame({"status": ["skipped", "skipped", "failed", "ok", "failed", "failed"],
                          "reason": ["only 3 observations", "only 4 observations", "RuntimeError: boom", "",
                                     "RuntimeError: boom", "OutOfMemoryError (need 1 GiB)"]})
    assert pictures.reason_counts(frame) == (("failed", "RuntimeError: boom", 2), ("skipped", "only N observations", 2),
                                            ("failed", "OutOfMemoryError", 1))


# --- the timeline ----------------------------------------------------------------------------


def test_user_span_ends_at_the_commit_and_lasts_the_rows_seconds():
    rows = [{"status": "ok", "seconds": 2.5}, {"status": "failed", "seconds": 2.5}]
    span = user_span("1/4", "2026-01-01T00:00:10.250+00:00", rows, "u1")
    end = datetime(2026, 1, 1, 0, 0, 10, 250000, tzinfo=UTC).timestamp()
    assert span == UserSpan("1/4", end - 2.5, end, "failed", "u1")
    assert user_span("1/4", None, rows) is None
    assert user_span("1/4", "not a time", rows) is None
    assert user_span("0/1", "2026-01-01T00:00:10+00:00", [{"status": "skipped", "seconds": None}]).start == \
        datetime(2026, 1, 1, 0, 0, 10, tzinfo=UTC).timestamp()
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
    return user_span("0/1", "2026-01-01T00:00:10+00:00", rows).status


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
    # a process that started before every user is the run's start
    starts = pd.DataFrame({"shard": ["2/16"], "started": [998.0]})
    assert timeline.timeline_table(spans, starts).attrs["run_start"] == 998.0


def two_waves():
    """Shards 0/3 and 1/3 start at once; 2/3 waits until 0/3 is done (at most two at once)."""
    spans = [UserSpan("0/3", 2.0, 5.0, "ok", "a"), UserSpan("0/3", 5.0, 6.0, "ok", "b"),
             UserSpan("1/3", 1.5, 9.0, "ok", "c"),
             UserSpan("2/3", 8.0, 10.0, "ok", "d"), UserSpan("2/3", 10.0, 11.0, "failed", "e")]
    starts = pd.DataFrame({"shard": ["0/3", "1/3", "2/3"], "started": [0.0, 0.1, 6.5]})
    table = timeline.timeline_table(spans, starts)
    return table, timeline.relative_starts(starts, table)


def test_phases_are_waiting_for_a_core_then_start_up_until_the_first_user():
    table, starts = two_waves()
    phases, _ = timeline.process_phases(table, starts)
    assert list(phases.itertuples(index=False, name=None)) == [
        ("0/3", "start-up", 0.0, 2.0),
        ("1/3", "start-up", 0.1, 1.5),  # started 0.1 s after the first: the launcher's turn, not a wait
        ("2/3", "waiting", 0.0, 6.5), ("2/3", "start-up", 6.5, 8.0),
    ]
    per_shard = timeline.shard_summary(table, phases).set_index("shard")
    assert (per_shard.loc["2/3", "waited_s"], per_shard.loc["2/3", "startup_s"]) == (6.5, 1.5)
    assert per_shard.loc["0/3", "waited_s"] == 0.0


def test_a_restarted_shard_gets_a_start_up_per_process():
    spans = [UserSpan("0/1", 1.0, 2.0, "ok"), UserSpan("0/1", 2.0, 3.0, "ok"), UserSpan("0/1", 10.0, 11.0, "ok")]
    starts = pd.DataFrame({"shard": ["0/1", "0/1"], "started": [0.0, 8.0]})
    table = timeline.timeline_table(spans, starts)
    relative = timeline.relative_starts(starts, table)
    phases, first = timeline.process_phases(table, relative)
    assert list(zip(phases.phase, phases.start_s, phases.end_s)) == [("start-up", 0.0, 1.0), ("start-up", 8.0, 10.0)]
    assert list(first) == [True, False, True]  # each process's first user


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


def with_estimates(spans, predicted):
    table = pd.DataFrame(spans, columns=list(timeline.SPAN_COLUMNS))
    return table.assign(predicted_s=predicted)


def test_a_slow_user_is_marked_against_its_estimate_never_for_being_first():
    # shard 0/2: its first user (the JVM's warm-up) took 5 s for an estimate of 1; then users that took
    # what their estimates say (a big user's 10 s included), and one that took 4 s for an estimate of 1
    spans = [UserSpan("0/2", 0.0, 5.0, "ok", "first"), UserSpan("0/2", 5.0, 15.0, "ok", "big"),
             *[UserSpan("0/2", 15.0 + i, 16.0 + i, "ok", f"u{i}") for i in range(6)],
             UserSpan("0/2", 21.0, 25.0, "ok", "slow"), UserSpan("1/2", 0.0, 1.0, "ok", "v")]
    predicted = [1.0, 10.0, *[1.0] * 6, 1.0, 1.0]
    table = timeline.timeline_table(with_estimates(spans, predicted))
    _, first = timeline.process_phases(table, timeline.relative_starts(None, table))

    slow = timeline.slow_users(table, first)

    assert list(slow.user_id) == ["slow"]  # not "first" (5x, a warm-up), not "big" (10 s, as estimated)
    assert slow.attrs["basis"] == "estimate" and slow.attrs["scale"] == pytest.approx(1.0)
    # by seconds alone (the old rule) the first and the big user would stand out
    plain = timeline.slow_users(table.assign(predicted_s=np.nan))
    assert plain.attrs["basis"] == "median" and set(plain.user_id) == {"big", "first", "slow"}


def test_the_estimate_is_scaled_to_the_machine():
    """A machine four times slower than the estimate's: no user is slow for that alone."""
    spans = [UserSpan("0/1", float(i), i + 4.0, "ok", f"u{i}") for i in range(10)]
    table = timeline.timeline_table(with_estimates(spans, [1.0] * 10))
    _, first = timeline.process_phases(table, timeline.relative_starts(None, table))
    assert timeline.slow_users(table, first).empty


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


def test_run_png_draws_the_phases_and_names_what_it_lacks():
    _table, _ = two_waves()
    spans = [UserSpan(*row) for row in [("0/3", 2.0, 5.0, "ok", "a"), ("1/3", 1.5, 9.0, "ok", "c"),
                                        ("2/3", 8.0, 10.0, "ok", "d")]]
    starts = pd.DataFrame({"shard": ["0/3", "1/3", "2/3"], "started": [0.0, 0.1, 6.5]})
    figure = pictures.draw_run(spans, starts, "run1")
    [line] = [a for a in figure.axes if a.get_title(loc="left") == pictures.TIMELINE_TITLE]
    labels = [t.get_text() for t in line.get_legend().get_texts()]
    assert labels[:2] == ["waiting to start: no free core yet (on a cluster: in the queue)",
                          "start-up: process start to first user (data, JVM)"]
    assert " 1 user · waited 6.5 s · start-up 1.5 s" in texts_of(line)
    assert figure.get_suptitle().startswith("3 users, 3 shards: where the run's time went\nrun1")
    without = pictures.draw_run(spans, None)
    [line] = [a for a in without.axes if a.get_title(loc="left") == pictures.TIMELINE_TITLE]
    assert "no process start times in this run" in line.get_legend().get_title().get_text()


# --- the PNGs through merge -------------------------------------------------------------------

KS = (1, 2, 3)
AIS_COLUMNS = ["k_selected", "base"] + [f"ais_k{k}_{what}" for k in KS for what in ("bits", "null_mean_bits", "p", "q")]
AIS_COLUMNS += ["te_hour_bits", "te_hour_q"]


@pytest.fixture
def with_ais_columns(task_double, monkeypatch):
    """The double's schema with the AIS columns of the real analysis (and the q-values of the set-level
    step), so merge keeps them, and the default task's picture hook, so merge draws the AIS panels."""
    monkeypatch.setattr(task_double, "result_columns", lambda settings: COLUMNS + AIS_COLUMNS)
    monkeypatch.setattr(task_double, "summary_panels", default_task.summary_panels, raising=False)


@pytest.fixture
def drawn_panels(monkeypatch):
    """The panels each merge takes from its task to draw (it still draws them)."""
    seen = []
    draw_summary = pictures.draw_summary

    def spy(frame, panels, title=None):
        seen.append(list(panels))
        return draw_summary(frame, seen[-1], title)

    monkeypatch.setattr(pictures, "draw_summary", spy)
    return seen


def ais_override(i: int, ks=KS) -> dict:
    values = {f"ais_k{k}_bits": 0.2 * k + 0.05 * i for k in ks}
    values.update({f"ais_k{k}_null_mean_bits": 0.01 * k * k for k in ks})
    values.update({f"ais_k{k}_p": 0.01 for k in ks})
    values.update({f"ais_k{k}_q": 0.02 * i for k in ks})
    values.update(k_selected=ks[i % len(ks)], base=4, te_hour_bits=0.1 * i, te_hour_q=0.03 * i)
    return values


def assert_valid_png(path, pixels=PIXELS):
    import matplotlib.image

    payload = path.read_bytes()
    assert payload[:8] == PNG_SIGNATURE
    assert len(payload) > 20_000  # drawn panels, not an empty canvas
    assert matplotlib.image.imread(path).shape[:2] == pixels


def assert_both_pictures(out):
    assert_valid_png(MergedPaths(out).summary_png)
    assert_valid_png(MergedPaths(out).run_png, RUN_PIXELS)


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
def test_merge_writes_both_pictures(tmp_path, with_ais_columns, case):
    users, overrides = CASES[case]["users"], CASES[case]["overrides"]
    run = make_run(tmp_path / "run", count=min(2, len(users)), raw=raw_config(users=users), overrides=overrides)
    out = tmp_path / "merged"

    merge_shards(shard_dirs_of_run(run), out)

    assert_both_pictures(out)
    assert MergedPaths(out).run_png.parent == MergedPaths(out).summary_png.parent


def test_merge_draws_the_default_tasks_panels_through_its_hook(tmp_path, with_ais_columns, drawn_panels):
    run = make_run(tmp_path / "run", count=2, overrides={u: ais_override(i) for i, u in enumerate(USERS)})
    merge_shards(shard_dirs_of_run(run), tmp_path / "merged")
    [panels] = drawn_panels
    # one AIS panel per mode in the top row; the FDR share, te_hour and the selected k below
    assert [(p.row, p.width) for p in panels] == [(0, 1.0), (0, 1.0), (1, 1.3), (1, 1.0), (1, 1.2)]
    assert_both_pictures(tmp_path / "merged")


def test_merge_writes_the_status_panel_for_a_task_without_the_picture_hook(tmp_path, task_double, drawn_panels):
    assert task_double.summary_panels(None, None) == []  # the default: no panels of its own
    run = make_run(tmp_path / "run", count=3)
    out = tmp_path / "merged"
    merge_shards(shard_dirs_of_run(run), out)
    assert drawn_panels == [[]]  # no panels of the task: the core's own picture only
    assert_both_pictures(out)


def picture_frame():
    return result_frame({1: [0.3, 0.4], 2: [0.5, 0.7]}, {1: [0.0, 0.0], 2: [0.1, 0.1]}, ["ok", "failed"],
                        k_selected=[2, None])


def test_the_core_picture_is_the_status_panel():
    frame = picture_frame()
    figure = pictures.draw_summary(frame, [])
    assert panel_titles(figure) == [pictures.STATUS_PANEL_TITLE, pictures.REASONS_PANEL_TITLE]
    assert pictures.status_counts(frame) == {"ok": 1, "failed": 1}


def test_the_default_tasks_picture_is_the_science_only():
    frame = picture_frame()
    figure = draw(frame)
    titles = panel_titles(figure)
    expected = [task_plots.AIS_PANEL_TITLE.format(mode="activity"), task_plots.FDR_PANEL_TITLE,
                task_plots.TE_PANEL_TITLE, task_plots.SELECTED_K_PANEL_TITLE]
    assert len(titles) == len(expected) and all(title.startswith(start) for title, start in zip(titles, expected))
    assert not any("shard" in title or "timeline" in title for title in titles)
    # the title in plain words: the core's part (users), then what the task's panels show
    assert figure.get_suptitle().startswith(f"2 users: {task_plots.PLAIN_TITLE}\n")


def test_the_core_title_says_users_and_names_no_analysis():
    frame = picture_frame()
    figure = pictures.draw_summary(frame, [], title="run1")
    first, second = figure.get_suptitle().split("\n")
    assert first == "2 users: result rows by status"
    assert second == "run1: 2 result rows, ok 1 / failed 1"


def test_the_ais_axis_fits_the_data_and_the_ceiling():
    frame = result_frame({1: [2.0, 2.1, 2.2], 2: [2.4, 2.5, 2.6]}, {1: [0.1] * 3, 2: [0.1] * 3}, ["ok"] * 3)
    figure = draw(frame.assign(base=8))  # ceiling 3 bits
    low, high = figure.axes[0].get_ylim()
    values = task_plots.ais_quantiles(frame)[["q10", "q90", "median"]].to_numpy()
    assert -0.5 < low <= 0.0 and 3.0 < high < 3.0 + 0.5  # from zero (the bias-corrected values) to the ceiling
    assert low < values.min() and values.max() < high


def test_fitted_limits_surround_the_data_with_a_margin():
    assert task_plots.fitted_limits(1.0, 2.0) == pytest.approx((0.94, 2.06))
    low, high = task_plots.fitted_limits(3.0, 3.0)
    assert low < 3.0 < high


def test_the_tasks_estimate_from_rows_equals_its_estimate_from_the_input():
    """run.png judges users by Task.result_seconds (from the merged rows); it must be the same
    estimate as user_seconds (from the input), which --time plans with."""
    from shardrun.config import load_config

    config = load_config("config/proposal.yaml")
    dataset = default_task.load(config.settings)
    from_input = default_task.user_seconds(config.settings, dataset)
    users = list(dataset.user_ids)[:5]
    n_obs = [dataset.series(u).n_obs for u in users]
    frame = pd.DataFrame({"user_id": np.repeat(users, 2), "feature_mode": ["activity", "composite"] * 5,
                          "status": ["ok", "skipped"] * 4 + ["skipped", "skipped"], "n_obs": np.repeat(n_obs, 2)})
    from_rows = default_task.result_seconds(frame, config.settings)
    assert [from_rows[u] for u in users[:4]] == pytest.approx([from_input[u] for u in users[:4]])
    assert from_rows[users[4]] == pytest.approx(1.0)  # every row skipped: no tests ran, the fixed part only
    failed = frame.assign(n_obs=np.nan)
    assert len(default_task.result_seconds(failed, config.settings)) == 0


def test_a_failing_picture_hook_keeps_the_merged_results_and_run_png(tmp_path, task_double, monkeypatch, caplog):
    def broken(frame, settings):
        raise KeyError("ais_k1_bits")

    monkeypatch.setattr(task_double, "summary_panels", broken, raising=False)
    run = make_run(tmp_path / "run", count=2)
    out = tmp_path / "merged"
    with caplog.at_level(logging.ERROR, logger="shardrun.results.pictures"):
        report = merge_shards(shard_dirs_of_run(run), out)
    assert report.complete and len(read_both(out)[0]) == 16
    assert not MergedPaths(out).summary_png.exists()
    assert_valid_png(MergedPaths(out).run_png, RUN_PIXELS)  # one picture's failure costs only itself
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
    assert {s.shard for s in spans} == {"0/2", "1/2"} and {s.user_id for s in spans} == set(USERS)
    assert all(s.end - s.start == pytest.approx(0.25) and s.status == "ok" for s in spans)


def test_process_starts_in_status_json_become_the_start_table(tmp_path):
    run = make_run(tmp_path / "run", count=2)
    [first, second] = shard_dirs_of_run(run)
    ShardPaths(first).status.write_text('{"state": "completed", "process_starts": ["2026-01-01T00:00:01.500+00:00",'
                                        ' "2026-01-01T00:01:00.000+00:00", "not a time", 7, {"a": 1}]}')
    ShardPaths(second).status.write_text('{"state": "completed"}')  # a run from before starts were recorded
    starts = timeline.start_table([read_shard(d) for d in (first, second)])
    base = datetime(2026, 1, 1, tzinfo=UTC).timestamp()
    assert list(starts.itertuples(index=False, name=None)) == [("0/2", base + 1.5), ("0/2", base + 60.0)]


def panels_of(*draws):
    return lambda frame, settings: [SummaryPanel(draw=draw) for draw in draws]


def no_font(axes) -> None:
    raise ValueError("no font")


def hook_that_raises(frame, settings):
    raise ValueError("no font")


@pytest.mark.parametrize("hook", [panels_of(no_font), hook_that_raises], ids=["panel-raises", "panels-hook-raises"])
def test_a_plot_failure_keeps_the_merged_results(tmp_path, task_double, monkeypatch, caplog, hook):
    run = make_run(tmp_path / "run", count=2)
    out = tmp_path / "merged"
    merge_shards(shard_dirs_of_run(run), out)  # a first merge leaves pictures behind
    assert MergedPaths(out).summary_png.is_file() and MergedPaths(out).run_png.is_file()

    monkeypatch.setattr(task_double, "summary_panels", hook, raising=False)
    with caplog.at_level(logging.ERROR, logger="shardrun.results.pictures"):
        report = merge_shards(shard_dirs_of_run(run), out, overwrite=True)

    assert report.complete and read_report(out)["complete"] is True
    assert len(read_both(out)[0]) == 16
    assert not MergedPaths(out).summary_png.exists()  # the old picture does not pass for this merge's
    [error] = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert "summary.png" in error.getMessage() and "ValueError: no font" in error.getMessage() and error.exc_info
    assert_valid_png(MergedPaths(out).run_png, RUN_PIXELS)  # a failure of summary.png costs summary.png only


def test_the_pictures_are_drawn_in_the_merges_own_process_after_the_tables(tmp_path, task_double, monkeypatch):
    drawn_by: list[tuple[int, bool]] = []
    out = tmp_path / "merged"

    def panel(axes) -> None:
        staging = [p for p in tmp_path.iterdir() if p.name.startswith(".merged.merging-")]
        drawn_by.append((os.getpid(), all((p / "results.parquet").is_file() for p in staging) and bool(staging)))

    monkeypatch.setattr(task_double, "summary_panels", panels_of(panel), raising=False)
    merge_shards(shard_dirs_of_run(make_run(tmp_path / "run", count=2)), out)
    assert_both_pictures(out)
    assert drawn_by == [(os.getpid(), True)]


def test_hundreds_of_thousands_of_users_still_draw(tmp_path):
    users = 200_000
    rng = np.random.default_rng(1)
    frame = pd.DataFrame(
        {
            "user_id": np.repeat([f"u{i}" for i in range(users)], 2),
            "feature_mode": np.tile(["activity", "composite"], users),
            "status": np.where(rng.random(2 * users) < 0.97, "ok", "failed"),
            "k_selected": rng.integers(1, 5, 2 * users),
            "base": np.tile([4, 24], users),
            "te_hour_bits": rng.gamma(2, 0.05, 2 * users),
            "te_hour_q": rng.random(2 * users),
        }
    )
    for k in range(1, 5):
        frame[f"ais_k{k}_bits"] = rng.normal(1.0 + 0.1 * k, 0.2, 2 * users)
        frame[f"ais_k{k}_null_mean_bits"] = 0.01 * k
        frame[f"ais_k{k}_q"] = rng.random(2 * users)
    durations = rng.gamma(4, 0.3, users)
    shard_of = np.arange(users) % 16
    ends = pd.Series(durations).groupby(shard_of).cumsum().to_numpy()
    spans = pd.DataFrame({"shard": [f"{s}/16" for s in shard_of], "start": ends - durations, "end": ends,
                          "status": frame.status.iloc[::2].to_numpy(), "user_id": frame.user_id.iloc[::2].to_numpy(),
                          "predicted_s": durations * rng.uniform(0.8, 1.2, users)})
    starts = pd.DataFrame({"shard": [f"{s}/16" for s in range(16)], "started": -2.0})

    summary_path, run_path = tmp_path / "summary.png", tmp_path / "run.png"
    summary_path.write_bytes(pictures.png(pictures.draw_summary(frame, task_plots.summary_panels(frame, None))))
    run_path.write_bytes(pictures.png(pictures.draw_run(spans, starts)))

    assert_valid_png(summary_path)
    assert_valid_png(run_path, RUN_PIXELS)


def test_the_timeline_of_a_span_table_equals_the_timeline_of_spans_one_by_one(tmp_path):
    """merge draws from span_table's columns; a timeline of UserSpans built user by user (read by the
    resume scan, user_span) is the independent answer it must equal, value for value and in order."""
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
    shards = [read_shard(d) for d in dirs]
    one_by_one = [user_span(f"{shard.spec} {shard.dir.parent.name}", user.record["ended_at"], user.rows, user_id)
                  for shard in shards for user_id, user in scan_committed(ShardPaths(shard.dir)).items()]

    from_table = timeline.timeline_table(timeline.span_table(shards))

    assert len(from_table) == len(one_by_one) == 2 * len(USERS)
    pd.testing.assert_frame_equal(from_table, timeline.timeline_table(one_by_one))
    assert from_table.attrs == timeline.timeline_table(one_by_one).attrs
    assert set(from_table["status"]) == {"ok", "failed", "skipped"}


def test_where_each_shards_time_went_adds_up_to_its_finish():
    from matplotlib.figure import Figure

    table, starts = two_waves()
    per_shard = timeline.shard_summary(table, timeline.process_phases(table, starts)[0])
    axes = Figure().add_subplot()
    pictures.draw_breakdown_panel(axes, per_shard)
    widths: dict[float, float] = {}
    for bar in axes.patches:
        widths[round(bar.get_y() + bar.get_height() / 2)] = widths.get(round(bar.get_y() + bar.get_height() / 2), 0.0) \
            + bar.get_width()
    finish = per_shard.set_index("shard")["finish_s"]
    assert widths == {0: pytest.approx(finish["0/3"]), 1: pytest.approx(finish["1/3"]), 2: pytest.approx(finish["2/3"])}


def test_durations_read_in_the_unit_a_person_would_use():
    assert [pictures.duration(s) for s in (2.5, 180.0, 910.8, 3 * 3600.0)] == ["2.5 s", "180.0 s", "15.2 min",
                                                                                 "3.0 h"]
    assert pictures.time_unit(100.0) == (1.0, "seconds") and pictures.time_unit(5000.0) == (60.0, "minutes")
