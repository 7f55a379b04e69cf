"""The analysis engine side by side: JIDT's dense calculators, shardrun's observed pasts, pyinform, numpy.

    .venv/bin/pip install -e ".[bench]"          # pyinform (the Inform C library), for the AIS column
    .venv/bin/python bench/engine.py [--surrogates 100] [--dense-budget 120] [--sections tests,draws,users,runs]

In one process with one JVM (-Xmx4g, so the dense calculators get as far as they can), on three
series of the composite mode (4 levels x 6 hour bins = base 24): a sample user (data/sample_users.csv,
u021), a synthetic series of 61,000 hourly observations and one of 10^6 (a Markov chain with weak
memory and a daily rhythm, tools/make_sample_data.py's generator, so that many pasts occur: about
33,000 distinct pasts of length 6 at 61,000 observations). Sections:

- tests: per k = 1..6, AIS(k) with --surrogates permutations: the dense calculator
  (ActiveInformationCalculatorDiscrete; skipped where its predicted time exceeds --dense-budget
  seconds or its counts cannot be allocated), the observed pasts (shardrun's measures.ais_test, its
  permutations drawn in the JVM included), pyinform's active_info (the value alone) and a plain
  numpy implementation (value and surrogates). Seconds, and the heap: measured peak (the sum of the
  G1 pools' peak usage after a full collection, an upper bound) for the JVM columns.
- draws: the permutations of one user reaching the JVM, drawn by numpy and copied in, or drawn in
  the JVM by java.util.Random (what shardrun does).
- users: one whole user of config/proposal.yaml's analysis (both modes, k = 1..6, te_hour) through
  task.analyse on one thread and on two, against the plain numpy implementation of the same work
  on one core.
- runs: a whole run of K = 1 (`run_production --shard 0/1` as a process, with jvm.threads auto and
  with --threads 1: JVM start, commits, and `merge_shard_results`) against the numpy
  implementation over the same users on one core, on the sample data and on 21 synthetic users of
  61,000 observations.

Figures and the machine they came from: docs/dev/PERFORMANCE.md.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tools"))
sys.path.insert(0, str(REPO / "tests"))  # jidt_reference: the dense calculators

from shardrun.config import JvmConfig  # noqa: E402
from shardrun.infodynamics import heap, task  # noqa: E402
from shardrun.infodynamics.jidt import find_jidt_jar  # noqa: E402
from shardrun.infodynamics.states import observed_pasts  # noqa: E402
from shardrun.infodynamics.surrogates import UserSurrogates  # noqa: E402
from shardrun.infodynamics.symbols import hour_symbols, mode_symbols, value_symbols  # noqa: E402
from shardrun.section import Section  # noqa: E402
from shardrun.shard.jvm import start_jvm  # noqa: E402

from jidt_reference import ais_test, dense_ais_test  # noqa: E402
from make_sample_data import simulate, transition_table  # noqa: E402
from plain_numpy import BASE, HOUR_BINS, LEVELS, analyse_symbols, numpy_ais  # noqa: E402

MIB = 1024**2
DENSE_SECONDS_PER_CELL = 1.2e-9  # measured: the dense calculator sweeps base^(k+1) cells per surrogate


# --- data ---------------------------------------------------------------------------------------


def synthetic_counts(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(hourly counts 0..5, hour of day) of a weak-memory Markov chain with a daily rhythm."""
    hours = np.arange(n) % 24
    return simulate(np.random.default_rng(seed), transition_table(0.1, 0.0, 1.0), hours), hours


def symbols_of(counts: np.ndarray, hours: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return value_symbols(counts.astype(float), "quantile", LEVELS), hour_symbols(hours, HOUR_BINS)


def sample_user(user: str = "u021") -> tuple[np.ndarray, np.ndarray]:
    frame = pd.read_csv(REPO / "data" / "sample_users.csv", dtype={"user_id": str})
    frame = frame[frame.user_id == user]
    return frame.value.to_numpy(), pd.to_datetime(frame.timestamp).dt.hour.to_numpy()


# --- a plain numpy implementation of the same work (bench/plain_numpy.py) -----------------------


def numpy_user(counts: np.ndarray, hours: np.ndarray, ks, surrogates: int, seed: int) -> list[tuple]:
    """Both modes' entropy, AIS(k) with nulls, k selection and te_hour with its null, like task.analyse,
    from the symbols shardrun makes of the same values."""
    return analyse_symbols(*symbols_of(counts, hours), ks, surrogates, np.random.default_rng(seed))


# --- measuring ----------------------------------------------------------------------------------


def timed(run) -> tuple[float, object]:
    started = time.perf_counter()
    result = run()
    return time.perf_counter() - started, result


def peak_heap(run) -> tuple[float, int, object]:
    """(seconds, the sum of the heap pools' peak usage during `run`, its result)."""
    from jpype import JClass

    management = JClass("java.lang.management.ManagementFactory")
    JClass("java.lang.System").gc()
    pools = [p for p in management.getMemoryPoolMXBeans() if str(p.getType()) == "Heap memory"]
    for pool in pools:
        pool.resetPeakUsage()
    seconds, result = timed(run)
    return seconds, sum(int(p.getPeakUsage().getUsed()) for p in pools), result


def table(rows: list[list[str]]) -> None:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for index, row in enumerate(rows):
        print("| " + " | ".join(cell.ljust(width) for cell, width in zip(row, widths)) + " |")
        if index == 0:
            print("|" + "|".join("-" * (width + 2) for width in widths) + "|")


def pyinform_ais(symbols: np.ndarray, k: int, workdir: Path) -> tuple[float | None, object]:
    """(seconds, AIS) from pyinform in a child process: Inform's dense arrays of base^(k+1) counts make it
    crash (SIGSEGV) where that overflows, which must not take this process and its JVM down."""
    series = workdir / "series.npy"
    np.save(series, symbols.astype(np.int32))
    script = (
        "import json, sys, time, numpy as np\n"
        "from pyinform import activeinfo\n"
        f"s = np.load({str(series)!r})\n"
        "t = time.perf_counter(); v = activeinfo.active_info(s, int(sys.argv[1]))\n"
        "print(json.dumps([time.perf_counter() - t, float(v)]))\n"
    )
    done = subprocess.run([sys.executable, "-c", script, str(k)], capture_output=True, text=True)
    if done.returncode == 0:
        return tuple(json.loads(done.stdout))
    if "No module named 'pyinform'" in done.stderr:
        return None, "not installed"
    return None, f"crashes ({BASE}^{k + 1} states; exit {done.returncode})"


# --- sections -----------------------------------------------------------------------------------


def tests_section(series: dict[str, np.ndarray], surrogates: int, dense_budget: float, workdir: Path) -> None:
    print(f"\n## AIS(k) of composite (base 24) with {surrogates} surrogates, seconds; the user's permutations are"
          " drawn once beforehand (next table)\n")
    rows = [["series", "N", "k", "pasts M", "dense JIDT (peak heap)", "observed pasts (heap model)",
             "dense / observed", "pyinform (value only)", "numpy (value + surrogates)", "numpy / observed"]]
    settings = proposal_settings(Path("unused.csv"), surrogates)
    for name, symbols in series.items():
        n = len(symbols)
        user = UserSurrogates(1, name, surrogates, n)
        user.base()
        for k in range(1, 7):
            pasts = observed_pasts(symbols, BASE, (k,))[k]
            ours_s, ours = timed(lambda: ais_test(symbols, BASE, pasts, user.batches))
            model = heap.minimum_heap(settings, k, n)
            cells = BASE ** (k + 1)
            dense_cell, ratio = "not run", ""
            if 8 * cells > 3.5 * 1024**3:
                dense_cell = f"cannot run ({BASE}^{k + 1} counts)"
            elif cells * DENSE_SECONDS_PER_CELL * surrogates > dense_budget:
                dense_cell = f"skipped (~{cells * DENSE_SECONDS_PER_CELL * surrogates:.0f} s predicted)"
            else:
                rows_ = user.rows(n - k)
                dense_s, dense_heap, dense = peak_heap(lambda: dense_ais_test(symbols, BASE, k, rows_))
                assert dense.value == ours.value and np.array_equal(dense.null, ours.null)
                dense_cell, ratio = f"{dense_s:.3f} s ({dense_heap / MIB:.0f} MiB)", f"{dense_s / ours_s:.0f}x"
            inform_s, inform = pyinform_ais(symbols, k, workdir)
            if inform_s is not None:
                assert abs(inform - ours.value) < 1e-9, (inform, ours.value)
                inform_cell = f"{inform_s:.3f} s"
            else:
                inform_cell = str(inform)
            np_s, (np_value, _) = timed(lambda: numpy_ais(symbols.astype(np.int64), BASE, k, surrogates,
                                                           np.random.default_rng(k)))
            assert abs(np_value - ours.value) < 1e-9
            rows.append([name, str(n), str(k), str(pasts.distinct), dense_cell,
                         f"{ours_s:.3f} s ({model / MIB:.0f} MiB)", ratio, inform_cell, f"{np_s:.3f} s",
                         f"{np_s / ours_s:.1f}x"])
    table(rows)


def draws_section(surrogates: int) -> None:
    """The two ways for permutations to reach the JVM: numpy draws them and they are copied in, or the
    JVM draws them (what shardrun does, for numbers that do not depend on the numpy version)."""
    from shardrun.infodynamics.jarrays import java_int_matrix
    from shardrun.infodynamics.surrogates import draw_in_jvm, surrogate_seed

    print(f"\n## {surrogates} permutations into the JVM: drawn by numpy and copied, or drawn in the JVM\n")
    rows = [["N", "numpy permutation x S", "copy into int[][] (direct buffer)", "numpy total",
             "JVM: java.util.Random + Collections.shuffle x S", "JVM / numpy"]]
    for n in (1_400, 61_000, 1_000_000):
        count = surrogates if n < 10**6 else 10  # 10^6: 10 rows (400 MB for 100), scaled to S below
        generator = np.random.default_rng(1)
        draw_s, drawn = timed(lambda: np.array([generator.permutation(n) for _ in range(count)], dtype=np.int32))
        copy_s, _ = timed(lambda: java_int_matrix(drawn))
        jvm_s, _ = timed(lambda: [draw_in_jvm(surrogate_seed(1, "u", r), n) for r in range(count)])
        scale = surrogates / count
        rows.append([str(n), f"{draw_s * scale:.3f} s", f"{copy_s * scale:.3f} s", f"{(draw_s + copy_s) * scale:.3f} s",
                     f"{jvm_s * scale:.3f} s", f"{jvm_s / (draw_s + copy_s):.1f}x"])
    table(rows)


def proposal_settings(path: Path, surrogates: int):
    config = yaml.safe_load((REPO / "config" / "proposal.yaml").read_text())
    config["data"]["path"] = str(path)
    config["surrogates"] = surrogates
    top = Section({key: config[key] for key in config if key not in ("task", "jvm", "output")})
    settings = task.parse_settings(top)
    top.finish()
    return settings


def write_users(path: Path, users: dict[str, tuple[np.ndarray, np.ndarray]]) -> Path:
    frames = []
    for user, (counts, _) in users.items():
        times = np.datetime64("2000-01-03T00:00") + np.arange(len(counts)).astype("timedelta64[h]")
        frames.append(pd.DataFrame({"user_id": user, "timestamp": np.datetime_as_string(times, unit="s"),
                                    "value": counts}))
    pd.concat(frames).to_csv(path, index=False)
    return path


def runs_at(data: Path, surrogates: int, xmx: str) -> bool:
    """Whether one user of `data` (user id "u") runs through task.analyse in a fresh JVM with -Xmx `xmx`."""
    script = (
        "import sys; sys.path.insert(0, sys.argv[1])\n"
        "from engine import proposal_settings\n"
        "from shardrun.config import JvmConfig\n"
        "from shardrun.errors import HeapTooSmall\n"
        "from shardrun.shard.jvm import start_jvm\n"
        "from shardrun.infodynamics.jidt import find_jidt_jar\n"
        "from shardrun.infodynamics import task\n"
        "from pathlib import Path\n"
        "settings = proposal_settings(Path(sys.argv[2]), int(sys.argv[3]))\n"
        "dataset = task.load(settings)\n"
        "start_jvm(JvmConfig(xms=None, xmx=sys.argv[4]), [str(find_jidt_jar())])\n"
        "rows = task.analyse(dataset, 'u', settings)\n"
        "sys.exit(0 if all(row['status'] == 'ok' for row in rows) else 3)\n"
    )
    done = subprocess.run([sys.executable, "-c", script, str(REPO / "bench"), str(data), str(surrogates), xmx],
                          capture_output=True, text=True, cwd=REPO)
    return done.returncode == 0


def users_section(surrogates: int, workdir: Path) -> None:
    print(f"\n## One whole user of the default analysis (both modes, k = 1..6, te_hour, {surrogates} surrogates)\n")
    rows = [["N", "task.analyse, 1 thread", "2 threads", "numpy, one core", "numpy / shardrun (1, 2 threads)",
             "heap model", "runs at -Xmx = the model's need", "runs at -Xmx512m"]]
    for n in (61_000, 1_000_000):
        counts, hours = synthetic_counts(n, seed=n)
        data = write_users(workdir / f"user{n}.csv", {"u": (counts, hours)})
        settings = proposal_settings(data, surrogates)
        dataset = task.load(settings)
        need = task.user_heap_needs(settings, dataset)["u"]
        one_s, one = timed(lambda: task.analyse(dataset, "u", settings))
        two_s, two = timed(lambda: task.analyse(dataset, "u", task.with_threads(settings, 2)))
        assert one == two
        np_s, _ = timed(lambda: numpy_user(counts, hours, range(1, 7), surrogates, seed=1))
        at_need = runs_at(data, surrogates, f"{-(-need // MIB)}m")
        rows.append([str(n), f"{one_s:.1f} s", f"{two_s:.1f} s", f"{np_s:.1f} s",
                     f"{np_s / one_s:.2f}x, {np_s / two_s:.2f}x", f"{need / MIB:.0f} MiB",
                     "yes" if at_need else "NO", "yes" if runs_at(data, surrogates, "512m") else "NO"])
    table(rows)


def runs_section(surrogates: int, workdir: Path) -> None:
    print(f"\n## A whole run, K = 1: run_production + merge_shard_results against numpy ({surrogates} surrogates)\n")
    rows = [["data", "users", "shardrun, jvm.threads auto", "shardrun, --threads 1", "numpy, one core",
             "numpy / shardrun (auto, 1 thread)"]]
    synthetic = {f"s{i:02d}": synthetic_counts(61_000, seed=100 + i) for i in range(21)}
    cases = [("sample data", REPO / "data" / "sample_users.csv", None),
             ("21 x 61,000 observations", write_users(workdir / "run21.csv", synthetic), synthetic)]
    for name, data, users in cases:
        config = yaml.safe_load((REPO / "config" / "proposal.yaml").read_text())
        config["data"]["path"] = str(data)
        config["surrogates"] = surrogates
        config["output"] = {"root": str(workdir / "out"), "log_dir": str(workdir / "logs")}
        path = workdir / f"{name.split()[0]}.yaml"
        path.write_text(yaml.safe_dump(config))
        seconds = []
        for threads in ([], ["--threads", "1"]):
            run_dir = workdir / f"run-{name.split()[0]}-{len(threads)}"
            worker = [sys.executable, "-m", "shardrun", "run", "--config", str(path), "--full", "--shard", "0/1",
                      "--out", str(run_dir), *threads]
            merge = [sys.executable, "-m", "shardrun", "merge", "--run", str(run_dir),
                     "--output", str(run_dir / "merged")]
            seconds.append(timed(lambda: [subprocess.run(c, check=True, capture_output=True, cwd=REPO)
                                          for c in (worker, merge)])[0])
        if users is None:
            frame = pd.read_csv(data, dtype={"user_id": str})
            users = {user: (group.value.to_numpy(), pd.to_datetime(group.timestamp).dt.hour.to_numpy())
                     for user, group in frame.groupby("user_id")}
        np_s, _ = timed(lambda: [numpy_user(c, h, range(1, 7), surrogates, seed=1) for c, h in users.values()])
        rows.append([name, str(len(users)), f"{seconds[0]:.1f} s", f"{seconds[1]:.1f} s", f"{np_s:.1f} s",
                     f"{np_s / seconds[0]:.2f}x, {np_s / seconds[1]:.2f}x"])
    table(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--surrogates", type=int, default=100)
    parser.add_argument("--dense-budget", type=float, default=120.0,
                        help="skip a dense test predicted to take longer (s)")
    parser.add_argument("--sections", default="tests,draws,users,runs")
    args = parser.parse_args()
    sections = set(args.sections.split(","))
    start_jvm(JvmConfig(xms=None, xmx="4g"), [str(find_jidt_jar())])
    with tempfile.TemporaryDirectory() as scratch:
        workdir = Path(scratch)
        if "tests" in sections:
            series = {"sample u021": sample_user(), "synthetic 61k": synthetic_counts(61_000, seed=61_000),
                      "synthetic 1M": synthetic_counts(1_000_000, seed=1_000_000)}
            symbols = {}
            for name, (counts, hours) in series.items():
                values, bins = symbols_of(np.asarray(counts), np.asarray(hours))
                symbols[name] = mode_symbols("composite", values, bins, HOUR_BINS)
            tests_section(symbols, args.surrogates, args.dense_budget, workdir)
        if "draws" in sections:
            draws_section(args.surrogates)
        if "users" in sections:
            users_section(args.surrogates, workdir)
        if "runs" in sections:
            runs_section(args.surrogates, workdir)


if __name__ == "__main__":
    main()
