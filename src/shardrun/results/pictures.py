"""The merge's two pictures, summary.png and run.png, drawn in the merge's own process (docs/dev/MERGE.md).

A plotting failure is logged and the merge goes on without that picture; each picture fails alone.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import pandas as pd

from shardrun.results.read import ShardInput
from shardrun.results.run_picture import RunPicture
from shardrun.results.summary import ResultCounts, SummaryPicture, run_title, task_panels
from shardrun.results.timeline import PREDICTED, span_table, start_table
from shardrun.storage.paths import MergedPaths
from shardrun.task import Task

log = logging.getLogger(__name__)


def draw_pictures(frame: pd.DataFrame, shards: Sequence[ShardInput], task: Task, settings: Any | None
                  ) -> dict[str, bytes]:
    """summary.png (the task's panels) and run.png (the shards' timeline) by file name; one that fails is
    logged and left out."""
    title = run_title([shard.dir for shard in shards])
    pictures: dict[str, Callable[[], SummaryPicture | RunPicture]] = {
        MergedPaths.SUMMARY_PNG: lambda: SummaryPicture(ResultCounts.of(frame), title,
                                                        tuple(task_panels(task, frame, settings))),
        MergedPaths.RUN_PNG: lambda: RunPicture(predicted_spans(span_table(shards), task, frame, settings),
                                                start_table(shards), title),
    }
    drawn = {}
    for name, picture in pictures.items():
        try:
            drawn[name] = picture().png()
        except Exception as exc:  # documented guard: the picture must not cost the results
            # the error in the line itself too: the one line a reader of the merge's output sees
            log.exception("could not draw %s (%s: %s); the merged results are complete without it",
                          name, type(exc).__name__, exc)
            continue
        log.info("drew %s", name)
    return drawn


def predicted_spans(spans: pd.DataFrame, task: Task, frame: pd.DataFrame, settings: Any | None) -> pd.DataFrame:
    """The span table with the task's estimate of each user's seconds (Task.result_seconds),
    NaN where it makes none."""
    estimates = None if settings is None else task.result_seconds(frame, settings)
    predicted = (pd.Series(estimates, dtype="float64") if estimates is not None and len(estimates)
                 else pd.Series(dtype="float64"))
    ids = spans["user_id"].astype(object) if "user_id" in spans.columns else pd.Series(index=spans.index, dtype=object)
    return spans.assign(**{PREDICTED: ids.map(predicted).astype("float64").to_numpy()})
