"""The process that draws the merge's pictures (results/picture_process.py), on its own: what the merge
relies on besides the drawing (tests/test_plots.py draws through merges)."""

from __future__ import annotations

import logging
import os
import sys

import psutil
import pytest

from shardrun.results.merge import drawn_pictures
from shardrun.results.picture_process import PictureFailed, PictureProcess
from shardrun.results.run_picture import RunPicture
from shardrun.results.summary import ResultCounts, SummaryPicture
from shardrun.results.timeline import UserSpan
from shardrun.task import SummaryPanel
import picture_panels


PNG = b"\x89PNG\r\n\x1a\n"


def pictures() -> dict:
    return {"summary.png": SummaryPicture(ResultCounts(rows=2, users=1, statuses={"ok": 2}), "run"),
            "run.png": RunPicture([UserSpan("0/1", 0.0, 1.0, "ok")], title="run")}


def test_a_process_never_handed_a_picture_is_stopped_and_reaped():
    pictures = PictureProcess()
    pid = pictures.pid
    assert psutil.Process(pid).is_running()
    pictures.close()
    assert not psutil.pid_exists(pid)


def test_both_pictures_come_back_as_png_bytes_from_one_process_that_then_ends():
    with PictureProcess() as drawing:
        pid = drawing.pid
        drawing.draw(pictures())
        assert drawing.png("summary.png").startswith(PNG) and drawing.png("run.png").startswith(PNG)
        assert drawing.png("summary.png") != drawing.png("run.png")
    assert pid != os.getpid() and not psutil.pid_exists(pid)


def test_a_process_killed_before_its_pictures_is_named_as_such():
    with PictureProcess() as drawing:
        psutil.Process(drawing.pid).kill()
        drawing.draw(pictures())
        for name in ("summary.png", "run.png"):
            with pytest.raises(PictureFailed, match="killed by SIGKILL, likely the OOM killer"):
                drawing.png(name)


def test_a_merge_whose_picture_process_was_killed_says_so_in_one_line_without_a_traceback(caplog):
    """The chaos campaign's finding: a SIGKILL to the pictures' process made the merge log its own stack,
    twice (a traceback in the output of a merge that then exited 0)."""
    with caplog.at_level(logging.ERROR, logger="shardrun.results.merge"), PictureProcess() as drawing:
        psutil.Process(drawing.pid).kill()
        drawing.draw(pictures())
        assert drawn_pictures(drawing, ["summary.png", "run.png"]) == {}
    assert [record.getMessage().split(" (")[0] for record in caplog.records] == ["could not draw summary.png",
                                                                                 "could not draw run.png"]
    assert all("killed by SIGKILL" in record.getMessage() and not record.exc_info for record in caplog.records)
    assert "Traceback" not in caplog.text


def test_a_panel_that_raises_comes_back_with_its_traceback_and_costs_only_its_picture():
    failing = SummaryPicture(ResultCounts(rows=0, users=0), panels=(SummaryPanel(draw=picture_panels.no_font),))
    with PictureProcess() as drawing:
        drawing.draw({**pictures(), "summary.png": failing})
        with pytest.raises(PictureFailed, match="ValueError: no font") as failure:
            drawing.png("summary.png")
        assert drawing.png("run.png").startswith(PNG)
    assert "in no_font" in str(failure.value)  # the other process's traceback


def test_where_no_process_can_start_the_picture_is_drawn_in_this_one(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(sys, "executable", str(tmp_path / "no-such-python"))  # Popen fails for real
    with caplog.at_level(logging.INFO, logger="shardrun.results.picture_process"), PictureProcess() as drawing:
        assert drawing.pid is None
        drawing.draw(pictures())
        assert drawing.png("summary.png").startswith(PNG) and drawing.png("run.png").startswith(PNG)
    assert any("no process could be started" in record.getMessage() for record in caplog.records)
