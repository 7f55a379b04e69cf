"""The default analysis task: information dynamics (entropy, AIS, TE) per user with JIDT.

Found by the core through `task: shardrun.infodynamics:task`. One module per job: settings (config
keys), audit (the whole input's cells checked at start), data (loading), cleaning (what loading did
to each user's rows, counted in the result rows), symbols (symbolisation), states (observed pasts),
surrogates (the seeded permutations), jarrays (numpy to Java arrays), jclasses (the Java classes,
looked up once), measures (the JIDT calls), heap (memory model and preflight), analysis (one user's
rows), fdr (q-values over the merged set's users), checks (value ranges of a result set), jidt (the
JVM hooks: the jar from idtxl-uv, JIDT's wrapped heap exhaustion, the heap advice, the jar's sha256),
versions (provenance), reference (JIDT's dense calculators, for tests and benchmarks only).
"""

from __future__ import annotations

import dataclasses

from shardrun.infodynamics.analysis import analyse_user, failed_rows, result_columns
from shardrun.infodynamics.checks import check_rows
from shardrun.infodynamics.cleaning import cleaning_summary
from shardrun.infodynamics.cost import result_seconds, user_seconds
from shardrun.infodynamics.data import load, user_index
from shardrun.infodynamics.fdr import q_value_report, set_columns
from shardrun.infodynamics.heap import index_heap_needs, preflight, user_heap_needs
from shardrun.infodynamics.jidt import heap_advice, is_jidt_heap_exhaustion, jvm_classpath, jvm_provenance
from shardrun.infodynamics.plots import summary_panels
from shardrun.infodynamics.settings import parse_settings
from shardrun.infodynamics.versions import describe_versions
from shardrun.task import Task


class InfodynamicsTask(Task):
    """The Task of shardrun.task, bound to this package's functions (every optional hook defined)."""

    key_columns = ("user_id", "feature_mode")
    parse_settings = staticmethod(parse_settings)
    preflight = staticmethod(preflight)
    user_heap_needs = staticmethod(user_heap_needs)
    index_heap_needs = staticmethod(index_heap_needs)  # the bound from the user index (jvm.xmx auto)
    user_seconds = staticmethod(user_seconds)  # time estimates for --time
    result_seconds = staticmethod(result_seconds)  # and from merged rows, for run.png's slow users
    load = staticmethod(load)  # load(settings, users=None): with user_index, each shard reads its users only
    user_index = staticmethod(user_index)
    result_columns = staticmethod(result_columns)
    failed_rows = staticmethod(failed_rows)
    analyse = staticmethod(analyse_user)
    check_rows = staticmethod(check_rows)
    describe_versions = staticmethod(describe_versions)
    summary_panels = staticmethod(summary_panels)
    set_columns = staticmethod(set_columns)  # BH q-values over the set's users
    # The JVM hooks: JIDT's jar, its wrapped OutOfMemoryError, the advice, the jar's sha256.
    jvm_classpath = staticmethod(jvm_classpath)
    is_heap_exhaustion = staticmethod(is_jidt_heap_exhaustion)
    heap_advice = staticmethod(heap_advice)
    jvm_provenance = staticmethod(jvm_provenance)

    @staticmethod
    def set_report(frame, settings) -> dict:
        """Task.set_report: the users tested and significant per q column, and what loading did
        to the rows (data.missing: drop, the sort, duplicate timestamps, bins) summed over the users."""
        return {**q_value_report(frame, settings), "cleaning": cleaning_summary(frame)}

    @staticmethod
    def with_threads(settings, threads: int):
        """Task.with_threads: each long user's permutation tests then run on up to `threads` threads."""
        return dataclasses.replace(settings, threads=threads)

    @staticmethod
    def run_label(settings) -> str:
        """Part of the run dir's name: `full_bins6_<time>` as in the original workflow."""
        return f"bins{settings.hour_bins}"


task = InfodynamicsTask()

__all__ = ["InfodynamicsTask", "task"]
