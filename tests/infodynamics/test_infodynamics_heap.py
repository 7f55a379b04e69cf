"""The heap model and preflight (no JVM), and real JVMs: at the predicted heap, and too small a heap."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from shardrun.infodynamics import heap, task
from shardrun.section import Section
from shardrun.units import heap_bytes

REPO = Path(__file__).resolve().parents[2]
MIB = 1024**2


def settings_for(levels=4, hour_bins=6, k_grid=(1, 2, 3, 4, 5, 6), surrogates=100, path="data/sample_users.csv"):
    top = Section({
        "data": {"path": str(path), "levels": levels}, "hour_bins": hour_bins,
        "feature_modes": ["activity", "composite"], "k_selection": {"k_grid": list(k_grid)},
        "surrogates": surrogates, "seed": 1,
    })
    settings = task.parse_settings(top)
    top.finish()
    return settings


def test_past_ids_are_bounded_by_the_windows_and_by_base_to_the_k():
    n_obs = np.array([0, 10, 1000, 10**6])
    assert heap.past_ids_bound(n_obs, 24, 1).tolist() == [1, 10, 24, 24]
    assert heap.past_ids_bound(n_obs, 24, 3).tolist() == [1, 8, 998, 24**3]
    assert heap.past_ids_bound(n_obs, 24, 16).tolist() == [1, 1, 985, 10**6 - 15]  # 24^16 overflows int64


def test_the_need_grows_with_the_observations_not_with_base_to_the_k():
    settings = settings_for(k_grid=(1, 4, 6, 16))
    at = {k: heap.minimum_heap(settings, k, 61_000) for k in (1, 4, 6, 16)}
    # composite base 24 at k=6 was 24^7 counts (4.6e9) for the dense calculators; now it is bounded by
    # 61,000 pasts, and so is k = 16 (4^16 value pasts for te_hour, 24^16 composite ones)
    assert at[1] <= at[4] <= at[6] <= at[16] <= 64 * MIB
    million = heap.minimum_heap(settings, 6, 10**6)
    assert 128 * MIB < million <= 512 * MIB


def test_the_default_analysis_needs_a_small_heap_under_auto():
    settings = settings_for()
    needs = heap.heap_needs(settings, np.array([1400, 61_000]))
    assert (needs <= 256 * MIB / 1.25).all()  # so jvm.xmx auto (need + 25%, in 64 MiB steps) stays <= 256m


def test_preflight_refuses_only_a_heap_too_small_for_the_smallest_user():
    settings = settings_for()
    assert task.preflight(settings, heap_bytes("256m")) == []  # composite k=6 is no longer refused
    problems = task.preflight(settings, heap_bytes("4m"))
    assert problems and all("raise jvm.xmx to at least" in p for p in problems)
    assert "the tests at k=1 need about" in problems[0]
    smallest = max(settings.data.min_observations, 8)
    needed = heap.minimum_heap(settings, 6, smallest)
    assert any(f"at least {needed // MIB}m" in p for p in problems)


def test_preflight_and_import_need_no_jvm():
    script = textwrap.dedent("""
        import sys
        from shardrun.section import Section
        from shardrun.infodynamics import task
        top = Section({"data": {"path": "x.csv"}, "feature_modes": ["composite"],
                       "k_selection": {"k_grid": [1, 6]}, "seed": 1})
        problems = task.preflight(task.parse_settings(top), 2 * 1024**2)
        assert problems and "k=1" in problems[0], problems
        task.describe_versions()
        assert "jpype" not in sys.modules, "the JVM bridge was imported"
    """)
    subprocess.run([sys.executable, "-c", script], check=True, cwd=REPO, timeout=60)


def write_random_user(path: Path, n: int, seed: int = 4) -> Path:
    """An hourly series of independent values: nearly every past of length >= 4 is new (the most
    pasts, so the largest tables, a series of n observations can have)."""
    values = np.random.default_rng(seed).integers(0, 50, n)
    times = np.datetime64("2020-01-01T00:00") + np.arange(n).astype("timedelta64[h]")
    rows = [f"u,{stamp},{value}" for stamp, value in zip(np.datetime_as_string(times, unit="s"), values)]
    path.write_text("user_id,timestamp,value\n" + "\n".join(rows) + "\n")
    return path


def run_user(data: Path, xmx: str, k_grid=(1, 2, 3, 4, 5, 6), surrogates=100, threads=1) -> dict:
    script = textwrap.dedent(f"""
        import json
        from shardrun.config import JvmConfig
        from shardrun.section import Section
        from shardrun.errors import HeapTooSmall
        from shardrun.shard.jvm import start_jvm
        from shardrun.infodynamics import task
        from shardrun.infodynamics.jidt import find_jidt_jar
        top = Section({{"data": {{"path": {str(data)!r}}}, "feature_modes": ["activity", "composite"],
                       "k_selection": {{"k_grid": {list(k_grid)}}}, "surrogates": {surrogates}, "seed": 1}})
        settings = task.with_threads(task.parse_settings(top), {threads})
        dataset = task.load(settings)
        start_jvm(JvmConfig(xms=None, xmx={xmx!r}), [str(find_jidt_jar())])
        try:
            rows = task.analyse(dataset, "u", settings)
        except HeapTooSmall as exc:
            print(json.dumps({{"ok": False, "needed": exc.needed_bytes, "xmx": exc.xmx, "message": str(exc)}}))
        else:
            print(json.dumps({{"ok": True, "k_selected": [row["k_selected"] for row in rows]}}))
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.jvm
def test_a_user_runs_at_the_predicted_heap_and_fails_clearly_below_it(tmp_path):
    data = write_random_user(tmp_path / "u.csv", 20_000)
    settings = settings_for(path=data)
    need = task.user_heap_needs(settings, task.load(settings))["u"]
    assert run_user(data, f"{need // MIB}m")["ok"]  # the model never promises a heap that is too small
    need_of_two = heap.heap_needs(settings, np.array([20_000]), threads=2)[0]
    assert heap.threads_that_fit(task.with_threads(settings, 2), 20_000, need_of_two) == 2
    assert run_user(data, f"{need_of_two // MIB}m", threads=2)["ok"]  # nor with two threads at their heap
    # Clearly below the need: with 200 surrogates a batch of permutations alone (16 MB) fills -Xmx16m.
    # (The model's 23 MiB for 100 surrogates has a margin the real run does not use up at 16m.)
    more = settings_for(path=data, surrogates=200)
    need_of_more = task.user_heap_needs(more, task.load(more))["u"]
    report = run_user(data, "16m", surrogates=200)
    assert need_of_more > 16 * MIB and not report["ok"] and report["xmx"] == "16m"
    assert 16 * MIB < report["needed"] <= need_of_more and "Raise jvm.xmx" in report["message"]


@pytest.mark.jvm
def test_both_forms_of_heap_exhaustion_are_recognised():
    script = textwrap.dedent("""
        import jpype
        from shardrun.config import JvmConfig
        from shardrun.errors import HeapTooSmall
        from shardrun.shard.jvm import start_jvm
        from shardrun.infodynamics.measures import heap_exhaustion_as_heap_too_small
        from shardrun.infodynamics.jidt import find_jidt_jar
        start_jvm(JvmConfig(xms=None, xmx="16m"), [str(find_jidt_jar())])
        calculator = jpype.JClass("infodynamics.measures.discrete.MutualInformationCalculatorDiscrete")
        for what, allocate in (("plain allocation", lambda: jpype.JInt[200_000_000]),
                               ("JIDT's table", lambda: calculator(24, 50_000_000, 0).initialise())):
            try:
                with heap_exhaustion_as_heap_too_small(lambda: 800 * 2**20, what):
                    allocate()
            except HeapTooSmall as exc:
                assert exc.needed_bytes == 800 * 2**20 and what in str(exc), exc
                print(what, "->", type(exc.__cause__).__name__, exc.__cause__.getMessage())
            else:
                raise SystemExit(f"{what} fitted in a 16 MB heap")
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "Requested memory for the MI bases" in done.stdout  # JIDT's wrapped form was the one seen
