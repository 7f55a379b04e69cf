"""The merge's pictures (summary.png and run.png) drawn by one process of their own while the merge
writes the tables.

Drawing is Python (matplotlib) and holds the GIL, so a thread beside the table writers overlapped little:
the picture stayed on the merge's path, a second of three at 100,000 users. The pictures' process
starts when the merge starts (`python -m shardrun.results.picture_process`: a new interpreter, never
a fork, and never a re-import of the caller's main module as multiprocessing's spawn does), imports
matplotlib while the merge reads the shards, then reads the pickled pictures on stdin (by file name:
summary.png's SummaryPicture, run.png's RunPicture; counts, the span and start tables and the task's
panels, never the frame) and answers on stdout with each picture's PNG bytes or its error, so one
picture that fails costs only itself. It writes no file: the merge puts the bytes into its staging dir
itself, so a merge that fails or is interrupted just stops the process. Pictures that cannot be
pickled (a task's panel that is a lambda), or a machine where no process can be started, are drawn in
the merge's own process (in a thread, while the tables are written) instead.

This module imports nothing heavy, so that merge_shard_results starts the process before its own
imports (pandas, Arrow).
"""

from __future__ import annotations

import io
import logging
import os
import pickle
import signal
import subprocess
import sys
import traceback
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Mapping, Protocol

from shardrun.errors import MergeError

log = logging.getLogger(__name__)


class PictureFailed(MergeError):
    """The pictures' process could not draw a picture (its error, or the process's death)."""


class Picture(Protocol):
    def png(self) -> bytes:
        """The picture as PNG bytes."""


class PictureProcess:
    """The process of one merge's pictures: `draw` hands them over and returns at once, `png(name)`
    waits for one's bytes; `close` (or the with block's end) stops the process if it still runs."""

    def __init__(self) -> None:
        self._process: subprocess.Popen | None = None
        try:
            self._process = subprocess.Popen([sys.executable or "python3", "-m", __name__], stdin=subprocess.PIPE,
                                             stdout=subprocess.PIPE)
        except OSError as exc:  # no process can be started here: the picture is drawn in this one
            log.info("the pictures are drawn in the merge's own process: no process could be started for them (%s)",
                     exc)
        # the exchange runs in a thread: the process reads the pictures only once its imports are done
        self._exchanger = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pictures")
        self._answer: Future[dict[str, bytes | BaseException]] | None = None

    @property
    def pid(self) -> int | None:
        return None if self._process is None else self._process.pid

    def __enter__(self) -> "PictureProcess":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop the process if it still runs (after its answer it is only exiting), and reap it."""
        process = self._process
        if process is not None:
            if process.poll() is None:
                process.kill()
            process.wait()  # before the exchange's thread is joined: a killed process unblocks it
        self._exchanger.shutdown(wait=True)
        if process is not None:
            process.stdin.close()
            process.stdout.close()

    def draw(self, pictures: Mapping[str, Picture]) -> None:
        """Start drawing `pictures` (by file name; once per process); `png(name)` gives each result."""
        pictures = dict(pictures)
        if self._process is None:
            self._answer = self._exchanger.submit(draw_each, pictures)
            return
        try:
            # the search path first: the panels' functions are imported from it as the pictures are read
            # each picture pickled on its own: one that cannot be read there fails alone
            payload = pickle.dumps(list(sys.path)) + pickle.dumps({name: pickle.dumps(picture)
                                                                   for name, picture in pictures.items()})
        except (pickle.PicklingError, TypeError, AttributeError) as exc:
            log.info("the pictures are drawn in the merge's own process: a panel cannot be handed to another (%s)",
                     exc)
            self._answer = self._exchanger.submit(draw_each, pictures)
            return
        self._answer = self._exchanger.submit(self._exchange, payload, self._process)

    def png(self, name: str) -> bytes:
        """The PNG bytes of the picture handed over as `name`, once drawn; PictureFailed with the other
        process's error and traceback, or with how it died (or the error itself, drawn in this process)."""
        if self._answer is None:
            raise RuntimeError("PictureProcess.png() before draw()")
        answer = self._answer.result()[name]
        if isinstance(answer, BaseException):
            raise answer
        return answer

    @staticmethod
    def _exchange(payload: bytes, process: subprocess.Popen) -> dict[str, bytes | BaseException]:
        try:
            with process.stdin:
                process.stdin.write(payload)
            # the answer as soon as it is written: the process's own exit is not waited for here
            answers = pickle.load(process.stdout)
        except (EOFError, BrokenPipeError, pickle.UnpicklingError):
            raise PictureFailed(f"the pictures' process ended without an answer ({_death(process.wait())})") from None
        return {name: PictureFailed(value) if kind == "error" else value for name, (kind, value) in answers.items()}


def draw_each(pictures: Mapping[str, Picture]) -> dict[str, bytes | BaseException]:
    """Each picture's PNG bytes, or the error that stopped it: one picture's failure costs only itself."""
    drawn: dict[str, bytes | BaseException] = {}
    for name, picture in pictures.items():
        try:
            drawn[name] = picture.png()
        except Exception as exc:  # noqa: BLE001 - handed to the merge, which logs it with its traceback
            drawn[name] = exc
    return drawn


def _death(code: int) -> str:
    if code >= 0:
        return f"exit status {code}"
    name = signal.Signals(-code).name if -code in signal.valid_signals() else f"signal {-code}"
    likely = ", likely the OOM killer: merge again with more memory free" if -code == signal.SIGKILL else ""
    return f"killed by {name}{likely}"


def _serve() -> int:
    """The process: import the drawing, read the pictures, answer {name: ("png", bytes) | ("error", text)}."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the merge's to handle; it stops this process
    # while the merge reads: the imports are most of a small picture's time
    import matplotlib.backends.backend_agg  # noqa: F401
    import matplotlib.figure  # noqa: F401

    import shardrun.results.run_picture  # noqa: F401
    import shardrun.results.summary  # noqa: F401

    payload = io.BytesIO(sys.stdin.buffer.read())
    if not payload.getbuffer().nbytes:
        return 0  # the merge ended before its pictures
    sys.path[:] = pickle.load(payload)
    answers = {}
    for name, picture in pickle.load(payload).items():
        try:
            answers[name] = ("png", pickle.loads(picture).png())
        except Exception as exc:  # noqa: BLE001 - the answer: the merge logs it with this traceback
            answers[name] = ("error", f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}")
    try:
        sys.stdout.buffer.write(pickle.dumps(answers))
        sys.stdout.buffer.flush()
    except BrokenPipeError:
        return 0  # the merge is gone (killed, interrupted): nobody is left to answer, nor to tell
    return 0


if __name__ == "__main__":
    code = _serve()
    # the answer is out: the teardown of an interpreter holding matplotlib and pandas is skipped, a
    # tenth of a second nobody waits for
    os._exit(code)
