"""The process that draws summary.png (results/picture_process.py), on its own: what the merge relies on
besides the drawing (tests/test_plots.py draws through merges)."""

from __future__ import annotations

import os

import psutil
import pytest

from shardrun.results.picture_process import PictureFailed, PictureProcess
from shardrun.results.summary import ResultCounts, SummaryPicture
from shardrun.results.timeline import UserSpan


def a_picture() -> SummaryPicture:
    return SummaryPicture(ResultCounts(rows=2, users=1, statuses={"ok": 2}), [UserSpan("0/1", 0.0, 1.0, "ok")], "run")


def test_a_process_never_handed_a_picture_is_stopped_and_reaped():
    pictures = PictureProcess()
    pid = pictures.pid
    assert psutil.Process(pid).is_running()
    pictures.close()
    assert not psutil.pid_exists(pid)


def test_the_picture_is_written_by_the_other_process_and_the_process_ends(tmp_path):
    path = tmp_path / "summary.png"
    with PictureProcess() as pictures:
        pid = pictures.pid
        pictures.write(a_picture(), path)
        assert path.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    assert pid != os.getpid() and not psutil.pid_exists(pid)


def test_a_process_killed_before_its_picture_is_named_as_such(tmp_path):
    with PictureProcess() as pictures:
        psutil.Process(pictures.pid).kill()
        with pytest.raises(PictureFailed, match="killed by SIGKILL, likely the OOM killer"):
            pictures.write(a_picture(), tmp_path / "summary.png")
    assert not (tmp_path / "summary.png").exists()
