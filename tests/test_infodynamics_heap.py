"""The heap model and preflight (no JVM), and a real JVM with a tiny heap raising HeapTooSmall."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from shardrun.config import Section, heap_bytes
from shardrun.infodynamics import heap, task

REPO = Path(__file__).resolve().parents[1]
MIB = 1024**2


def settings_for(levels=4, hour_bins=6, k_grid=(1, 2, 3, 4), surrogates=100, path="data/sample_users.csv"):
    top = Section({
        "data": {"path": str(path), "levels": levels}, "hour_bins": hour_bins,
        "feature_modes": ["activity", "composite"], "k_selection": {"k_grid": list(k_grid)},
        "surrogates": surrogates, "seed": 1,
    })
    settings = task.parse_settings(top)
    top.finish()
    return settings


def test_counts_dominate_and_are_held_twice():
    # composite base 24 at k=4: per calculator 24 rows of 24^4 ints plus 24^4 past counts; two
    # calculators; plus the permutation batch bound. Array headers add well under 0.1 %.
    arrays = heap.ais_arrays(24, 4, n_obs=None, surrogates=100)
    expected = 2 * 4 * (24**5 + 24**4) + 16 * MIB
    assert expected <= sum(arrays) <= expected * 1.001


def test_state_space_beyond_a_java_int_is_reported():
    # levels 4 x 24 hour bins = base 96; 96^5 > Integer.MAX_VALUE.
    problems = task.preflight(settings_for(hour_bins=24, k_grid=(1, 5)), heap_bytes("64g"))
    assert len(problems) == 1
    assert "composite at k=5: Base and history combination too large" in problems[0]
    assert "k_selection.k_max to 4" in problems[0]


def test_te_state_space_is_checked_too():
    # levels 2, hour_bins 24: activity AIS (base 2) holds k=7, but te_hour's common base is 24.
    problems = task.preflight(settings_for(levels=2, hour_bins=24, k_grid=(7,)), heap_bytes("64g"))
    assert any("te_hour at k=7 (feature mode activity)" in p and "max(data.levels, hour_bins)" in p for p in problems)


def test_heap_too_small_says_how_much_is_needed():
    settings = settings_for()
    problems = task.preflight(settings, 64 * MIB)
    assert len(problems) == 1 and "composite at k=4 needs about" in problems[0]
    needed = heap.minimum_heap(settings, "composite", 4)
    assert f"raise jvm.xmx to at least {needed // MIB}m" in problems[0]
    assert task.preflight(settings, needed) == []
    assert task.preflight(settings, heap_bytes("256m")) == []  # the shipped proposal heap


def test_preflight_and_import_need_no_jvm():
    script = textwrap.dedent("""
        import sys
        from shardrun.config import Section
        from shardrun.infodynamics import task
        top = Section({"data": {"path": "x.csv"}, "feature_modes": ["composite"],
                       "k_selection": {"k_grid": [1, 5]}, "seed": 1})
        problems = task.preflight(task.parse_settings(top), 256 * 1024**2)
        assert problems and "k=5" in problems[0], problems
        task.describe_versions()
        assert "jpype" not in sys.modules, "the JVM bridge was imported"
    """)
    subprocess.run([sys.executable, "-c", script], check=True, cwd=REPO, timeout=60)


@pytest.mark.jvm
def test_tiny_heap_raises_heap_too_small_with_the_needed_size(tmp_path):
    data = tmp_path / "d.csv"
    rows = ["user_id,timestamp,value"] + [f"u,2025-01-01T{h % 24:02d}:00:00,{(h * 7) % 5}" for h in range(60)]
    data.write_text("\n".join(rows) + "\n")
    script = textwrap.dedent(f"""
        import json
        from shardrun.config import JvmConfig, Section
        from shardrun.errors import HeapTooSmall
        from shardrun.jvm import start_jvm
        from shardrun.infodynamics import task
        top = Section({{"data": {{"path": {str(data)!r}}}, "feature_modes": ["composite"],
                       "k_selection": {{"k_grid": [1, 4]}}, "surrogates": 5, "seed": 1}})
        settings = task.parse_settings(top)
        start_jvm(JvmConfig(xms=None, xmx="16m"))
        # A plain java.lang.OutOfMemoryError is recognised as well as JIDT's wrapped form.
        import jpype
        from shardrun.infodynamics.measures import heap_exhaustion_as_heap_too_small
        try:
            with heap_exhaustion_as_heap_too_small(lambda: 800 * 2**20, "plain allocation"):
                jpype.JInt[200_000_000]
        except HeapTooSmall as exc:
            assert "java.lang.OutOfMemoryError" in str(exc) and exc.needed_bytes == 800 * 2**20, exc
        else:
            raise SystemExit("a 800 MB array fitted in a 16 MB heap")
        try:
            task.analyse(task.load(settings), "u", settings)
        except HeapTooSmall as exc:
            print(json.dumps({{"needed": exc.needed_bytes, "xmx": exc.xmx, "message": str(exc)}}))
        else:
            raise SystemExit("composite k=4 ran in a 16 MB heap")
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    settings = settings_for(k_grid=(1, 4), surrogates=5, path=data)
    assert report["xmx"] == "16m"
    assert report["needed"] == heap.minimum_heap(settings, "composite", 4, n_obs=60)
    assert report["needed"] > 16 * MIB
    assert "k=4" in report["message"] and "Raise jvm.xmx" in report["message"]
