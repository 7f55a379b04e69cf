"""The process that draws summary.png (results/picture_process.py), on its own: what the merge relies on
besides the drawing (tests/test_plots.py draws through merges)."""

from __future__ import annotations

import logging
import os
import sys

import psutil
import pytest

from shardrun.results.picture_process import PictureFailed, PictureProcess
from shardrun.results.summary import ResultCounts, SummaryPicture
from shardrun.results.timeline import UserSpan
from shardrun.task import SummaryPanel
import picture_panels


def a_picture() -> SummaryPicture:
    return SummaryPicture(ResultCounts(rows=2, users=1, statuses={"ok": 2}), [UserSpan("0/1", 0.0, 1.0, "ok")], "run")


def test_a_process_never_handed_a_picture_is_stopped_and_reaped():
    pictures = PictureProcess()
    pid = pictures.pid
    assert psutil.Process(pid).is_running()
    pictures.close()
    assert not psutil.pid_exists(pid)


def test_the_picture_comes_back_as_png_bytes_and_the_process_ends():
    with PictureProcess() as pictures:
        pid = pictures.pid
        pictures.draw(a_picture())
        assert pictures.png().startswith(b"\x89PNG\r\n\x1a\n")
    assert pid != os.getpid() and not psutil.pid_exists(pid)


def test_a_process_killed_before_its_picture_is_named_as_such():
    with PictureProcess() as pictures:
        psutil.Process(pictures.pid).kill()
        pictures.draw(a_picture())
        with pytest.raises(PictureFailed, match="killed by SIGKILL, likely the OOM killer"):
            pictures.png()


def test_a_panel_that_raises_comes_back_with_its_traceback():
    picture = SummaryPicture(ResultCounts(rows=0, users=0), [], panels=(SummaryPanel(draw=picture_panels.no_font),))
    with PictureProcess() as pictures:
        pictures.draw(picture)
        with pytest.raises(PictureFailed, match="ValueError: no font") as failure:
            pictures.png()
    assert "in no_font" in str(failure.value)  # the other process's traceback


def test_where_no_process_can_start_the_picture_is_drawn_in_this_one(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(sys, "executable", str(tmp_path / "no-such-python"))  # Popen fails for real
    with caplog.at_level(logging.INFO, logger="shardrun.results.picture_process"), PictureProcess() as pictures:
        assert pictures.pid is None
        pictures.draw(a_picture())
        assert pictures.png().startswith(b"\x89PNG\r\n\x1a\n")
    assert any("no process could be started" in record.getMessage() for record in caplog.records)
