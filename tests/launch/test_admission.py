"""Admission: the heap auto picks, K x (heap + overhead) against the memory available, the cgroup
files (memory limits and CPU quotas), the cores available, the task's per-user heap needs, and what
`--dry-run` says about users over the heap."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from shardrun.config import JvmConfig, load_config, parse_config
from shardrun.errors import ConfigError
from shardrun.heap_plan import (
    AUTO_HEAP_CEILING,
    AUTO_HEAP_FLOOR,
    AUTO_HEAP_STEP,
    auto_heap_bytes,
    plan_heap,
    resolve_heap,
)
from shardrun.infodynamics import heap, task
from shardrun.launch import admission
from shardrun.launch.admission import (
    admit,
    admit_shards,
    available_cores,
    cgroup_available,
    cgroup_cpu_quota,
    cgroup_headroom,
    cores_from,
    measure_launch_data,
    native_overhead_bytes,
    parse_cfs_quota,
    parse_cgroup_limit,
    parse_cpu_max,
    parse_memory_stat,
    parse_proc_cgroup,
)
from shardrun.section import Section
from shardrun.shard.prepare import task_heap

REPO = Path(__file__).resolve().parents[2]
PROPOSAL = yaml.safe_load((REPO / "config" / "proposal.yaml").read_text())
MIB = 1024**2
GIB = 1024**3


def proposal_with(tmp_path: Path, **jvm) -> Path:
    config = yaml.safe_load(yaml.safe_dump(PROPOSAL))
    config["data"]["path"] = str(REPO / "data" / "sample_users.csv")
    config["output"] = {"root": str(tmp_path / "out"), "log_dir": str(tmp_path / "logs")}
    config["jvm"].update(jvm)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def settings_for(path, levels=4, hour_bins=6, k_grid=(1, 2, 3, 4), surrogates=100, **data):
    top = Section({
        "data": {"path": str(path), "levels": levels, **data}, "hour_bins": hour_bins,
        "feature_modes": ["activity", "composite"], "k_selection": {"k_grid": list(k_grid)},
        "surrogates": surrogates, "seed": 1,
    })
    settings = task.parse_settings(top)
    top.finish()
    return settings


# --- choosing the heap ------------------------------------------------------------------------


def test_auto_adds_the_margin_and_rounds_up_to_the_step():
    assert auto_heap_bytes(121 * MIB) == 192 * MIB  # 151.25 MiB -> the next multiple of 64 MiB
    assert auto_heap_bytes(0) == AUTO_HEAP_FLOOR
    assert auto_heap_bytes(100 * GIB) == AUTO_HEAP_CEILING
    assert auto_heap_bytes(10 * MIB, at_least=1 * GIB) == 1 * GIB  # never below an explicit xms
    for need in np.random.default_rng(3).integers(1, 8 * GIB, 200).tolist():
        chosen = auto_heap_bytes(need)
        assert (chosen % AUTO_HEAP_STEP == 0 and chosen >= need * 1.25
                and chosen - AUTO_HEAP_STEP < max(need * 1.25, AUTO_HEAP_FLOOR))


def test_resolve_heap_replaces_auto_only():
    needs = {"a": 121 * MIB, "b": 10 * MIB}
    assert resolve_heap(JvmConfig(xms="auto", xmx="auto"), needs) == JvmConfig(xms="192m", xmx="192m")
    assert resolve_heap(JvmConfig(xms=None, xmx="auto"), needs) == JvmConfig(xms=None, xmx="192m")
    assert resolve_heap(JvmConfig(xms="auto", xmx="1g"), needs) == JvmConfig(xms="1g", xmx="1g")
    assert resolve_heap(JvmConfig(xms="512m", xmx="auto"), needs).xmx == "512m"
    explicit = JvmConfig(xms="128m", xmx="256m", options=("-XX:+UseG1GC",))
    assert resolve_heap(explicit, needs) == explicit
    assert resolve_heap(JvmConfig(xms=None, xmx="auto"), {}).xmx == f"{AUTO_HEAP_FLOOR // MIB}m"


def test_an_unresolved_auto_heap_is_never_used():
    with pytest.raises(ConfigError, match="jvm.xmx is 'auto'.*Set jvm.xmx to a size"):
        JvmConfig(xms=None, xmx="auto").jvm_args()
    with pytest.raises(ConfigError, match="jvm.xms is 'auto'.*Set jvm.xms to a size"):
        JvmConfig(xms="auto", xmx="1g").jvm_args()
    with pytest.raises(ConfigError, match="jvm.xmx is 'auto'"):
        JvmConfig(xms=None, xmx="auto").xmx_bytes  # noqa: B018 (the property raises)
    assert JvmConfig(xms="auto", xmx="1g").xmx_bytes == GIB  # a known xmx can be compared already


def test_config_accepts_auto_and_keeps_it():
    raw = yaml.safe_load(yaml.safe_dump(PROPOSAL))
    raw["jvm"].update(xms="auto", xmx="auto")
    config = parse_config(raw)
    assert (config.jvm.xms, config.jvm.xmx) == ("auto", "auto") and config.jvm.xmx_is_auto
    raw["jvm"].update(xms="2g", xmx="auto")  # xms is then a lower bound of the chosen xmx
    assert parse_config(raw).jvm.xms == "2g"
    raw["jvm"].update(xms=None, xmx="automatic")
    with pytest.raises(ConfigError, match="'jvm.xmx' must be a JVM heap size such as 256m or 2g, or auto"):
        parse_config(raw)


def test_plan_heap_lists_the_users_over_the_heap_first_twenty_and_a_count():
    needs = {f"u{i:02d}": (300 if i % 2 else 50) * MIB for i in range(60)}
    plan = plan_heap(JvmConfig(xms=None, xmx="256m"), needs, sorted(needs))
    assert plan.over_budget_count == 30 and len(plan.over_budget) == 20
    assert plan.over_budget[0] == ("u01", 300 * MIB)
    text = "\n".join(plan.report_lines())
    assert "30 of the 60 users to do" in text and "... and 10 more" in text
    assert "raise jvm.xmx to 384m" in text  # 300 MiB + 25%, rounded up to 64 MiB
    auto = plan_heap(JvmConfig(xms="auto", xmx="auto"), needs, sorted(needs))
    assert auto.jvm.xmx == "384m" and auto.over_budget_count == 0
    assert "user 'u01' needs 300.0 MiB" in auto.jvm_line()


# --- admission --------------------------------------------------------------------------------


def test_admit_accepts_what_fits():
    result = admit(4, 256 * MIB, 256 * MIB, 4 * GIB)
    assert result.ok and "fits" in result.message
    assert result.max_shards_that_fit == 8 and result.max_heap_that_fits == 768 * MIB


def test_admit_refuses_and_names_a_k_and_a_heap_that_fit():
    result = admit(4, 1 * GIB, 256 * MIB, 3 * GIB)
    assert not result.ok
    assert result.max_shards_that_fit == 2 and result.max_heap_that_fits == 512 * MIB
    assert "--shards 2" in result.message and "lower jvm.xmx to 512m" in result.message
    assert "5.0 GiB" in result.message and "3.0 GiB" in result.message  # the arithmetic is shown
    # the suggestions really fit
    assert admit(2, 1 * GIB, 256 * MIB, 3 * GIB).ok
    assert admit(4, result.max_heap_that_fits, 256 * MIB, 3 * GIB).ok


def test_admit_does_not_offer_a_heap_below_the_largest_need():
    result = admit(4, 1 * GIB, 256 * MIB, 3 * GIB, heap_floor_bytes=900 * MIB)
    assert not result.ok and "lower jvm.xmx" not in result.message
    assert "not a smaller heap" in result.message and "--shards 2" in result.message


def test_admit_when_not_even_one_shard_fits():
    result = admit(2, 4 * GIB, 256 * MIB, 2 * GIB)
    assert not result.ok and result.max_shards_that_fit == 0
    assert "not even one shard fits" in result.message and "--shards" not in result.message
    assert "lower jvm.xmx to 768m" in result.message


def test_overhead_constant_covers_the_measured_figures():
    # docs/dev/PERFORMANCE.md: RSS - heap of a shard process at -Xms = -Xmx with the heap pre-touched, the
    # figures sized for 64 CPUs (the largest); the constant keeps a margin of at least 20% over them.
    measured = {128: 240, 256: 243, 512: 256, 1024: 281, 2048: 324, 4096: 402}
    for heap_mib, overhead_mib in measured.items():
        assert native_overhead_bytes(heap_mib * MIB) >= overhead_mib * MIB * 1.2, heap_mib
    assert native_overhead_bytes(2 * GIB) > native_overhead_bytes(1 * GIB)  # GC structures grow with the heap


# --- memory available: the cgroup files -------------------------------------------------------


def test_cgroup_limit_parsing():
    assert parse_cgroup_limit("max\n") is None
    assert parse_cgroup_limit("9223372036854771712\n") is None  # v1's "no limit"
    assert parse_cgroup_limit("8589934592\n") == 8 * GIB
    assert parse_proc_cgroup("0::/user.slice/session-3.scope\n") == ("/user.slice/session-3.scope", None)
    v1 = "9:name=systemd:/\n4:memory:/slurm/uid_1/job_7\n3:cpu,cpuacct:/\n0::/\n"
    assert parse_proc_cgroup(v1) == ("/", "/slurm/uid_1/job_7")
    assert parse_proc_cgroup("5:cpuacct,memory:/docker/abc\n") == (None, "/docker/abc")
    stat = parse_memory_stat("anon 100\nfile 300\ninactive_file 200\nbroken line\n")
    assert stat == {"anon": 100, "file": 300, "inactive_file": 200}
    # reclaimable page cache does not count against the limit
    assert cgroup_headroom(1000, 600, stat) == 600
    assert cgroup_headroom(1000, 600, {"total_inactive_file": 50, "inactive_file": 10}) == 450
    assert cgroup_headroom(1000, 1500, {}) == 0


def test_cgroup_available_takes_the_tightest_limit_on_the_way_up(tmp_path):
    proc = tmp_path / "cgroup"
    proc.write_text("0::/job/step\n")
    root = tmp_path / "sys"
    (root / "job" / "step").mkdir(parents=True)
    (root / "job" / "memory.max").write_text(f"{4 * GIB}\n")
    (root / "job" / "memory.current").write_text(f"{3 * GIB}\n")
    (root / "job" / "memory.stat").write_text(f"inactive_file {GIB}\n")
    (root / "job" / "step" / "memory.max").write_text("max\n")
    assert cgroup_available(root, proc) == (2 * GIB, str(root / "job" / "memory.max"))
    (root / "job" / "step" / "memory.max").write_text(f"{GIB}\n")
    (root / "job" / "step" / "memory.current").write_text("0\n")
    assert cgroup_available(root, proc)[0] == GIB
    proc.write_text("4:memory:/\n0::/\n")  # v1 with the limit at the mount (a container's own view)
    (root / "memory").mkdir()
    (root / "memory" / "memory.limit_in_bytes").write_text(f"{512 * MIB}\n")
    (root / "memory" / "memory.usage_in_bytes").write_text(f"{100 * MIB}\n")
    assert cgroup_available(root, proc)[0] == 412 * MIB
    assert cgroup_available(tmp_path / "none", tmp_path / "none.txt") is None


def test_available_memory_is_positive_and_at_most_the_machines():
    import psutil

    assert 0 < admission.available_memory()[0] <= psutil.virtual_memory().total


# --- cores available: affinity and the cgroup's CPU quota --------------------------------------


def test_cpu_quota_parsing():
    assert parse_cpu_max("max 100000\n") is None
    assert parse_cpu_max("200000 100000\n") == 2.0
    assert parse_cpu_max("150000 100000\n") == 1.5
    assert parse_cpu_max("50000\n") == 0.5  # the period defaults to 100 ms
    assert parse_cpu_max("") is None and parse_cpu_max("garbage here\n") is None
    assert parse_cfs_quota("-1\n", "100000\n") is None  # v1's "no quota"
    assert parse_cfs_quota("300000\n", "100000\n") == 3.0
    assert parse_cfs_quota("25000\n", "50000\n") == 0.5
    assert parse_cfs_quota("x\n", "100000\n") is None
    v1 = "4:memory:/job\n3:cpu,cpuacct:/slurm/job_7\n0::/\n"
    assert parse_proc_cgroup(v1, controller="cpu") == ("/", "/slurm/job_7")
    assert parse_proc_cgroup(v1) == ("/", "/job")  # memory stays the default controller
    assert parse_proc_cgroup("2:cpuacct:/a\n", controller="cpu") == (None, None)  # cpuacct is not cpu


def test_cores_are_the_affinity_capped_by_the_quota_rounded_up():
    assert cores_from(8, None) == 8
    assert cores_from(8, 2.0) == 2
    assert cores_from(8, 1.5) == 2  # as the JVM counts its processors under a quota
    assert cores_from(2, 6.0) == 2
    assert cores_from(4, 0.25) == 1
    assert cores_from(0, None) == 1  # never below one


def test_cgroup_cpu_quota_takes_the_tightest_on_the_way_up(tmp_path):
    proc = tmp_path / "cgroup"
    root = tmp_path / "sys"
    proc.write_text("0::/job/step\n")
    (root / "job" / "step").mkdir(parents=True)
    (root / "job" / "cpu.max").write_text("300000 100000\n")
    (root / "job" / "step" / "cpu.max").write_text("max 100000\n")
    assert cgroup_cpu_quota(root, proc) == (3.0, str(root / "job" / "cpu.max"))
    (root / "job" / "step" / "cpu.max").write_text("150000 100000\n")
    assert cgroup_cpu_quota(root, proc) == (1.5, str(root / "job" / "step" / "cpu.max"))
    # v1: the cpu controller mounted with cpuacct, the quota at the process's own cgroup
    proc.write_text("3:cpu,cpuacct:/docker/abc\n0::/\n")
    for entry in (root / "job" / "step" / "cpu.max", root / "job" / "cpu.max"):
        entry.unlink()
    v1 = root / "cpu,cpuacct" / "docker" / "abc"
    v1.mkdir(parents=True)
    (v1 / "cpu.cfs_quota_us").write_text("200000\n")
    (v1 / "cpu.cfs_period_us").write_text("100000\n")
    (root / "cpu,cpuacct" / "cpu.cfs_quota_us").write_text("-1\n")
    (root / "cpu,cpuacct" / "cpu.cfs_period_us").write_text("100000\n")
    assert cgroup_cpu_quota(root, proc) == (2.0, str(v1 / "cpu.cfs_quota_us"))
    assert cgroup_cpu_quota(tmp_path / "none", tmp_path / "none.txt") is None


def test_available_cores_on_this_machine_are_within_its_affinity():
    import os

    cores = available_cores()
    assert 1 <= cores.count <= cores.affinity == len(os.sched_getaffinity(0))
    assert cores.describe().startswith(f"affinity {cores.affinity}; cgroup quota ")


# --- the task's per-user needs ----------------------------------------------------------------


def test_user_heap_needs_equal_the_heap_model_on_sample_users():
    settings = load_config(REPO / "config" / "proposal.yaml").settings
    dataset = task.load(settings)
    needs = task.user_heap_needs(settings, dataset)
    assert set(needs) == set(dataset.user_ids)
    for user in dataset.user_ids[:: len(dataset.user_ids) // 6]:
        n_obs = dataset.series(user).n_obs
        expected = max(heap.minimum_heap(settings, k, n_obs) for k in settings.k_selection.ks)
        assert needs[user] == expected, user
    assert auto_heap_bytes(max(needs.values())) == 128 * MIB  # the figure config/proposal.yaml quotes


def test_the_needs_of_a_million_users_in_one_call():
    # one vectorised call over every user (about 0.5 s for 10^6, bench figures aside: no timing here)
    settings = settings_for("x.csv")
    n_obs = np.random.default_rng(2).integers(0, 5000, 1_000_000)
    needs = heap.heap_needs(settings, n_obs)
    assert needs.shape == n_obs.shape
    assert needs.min() == heap.baseline_heap()
    assert (np.diff(needs[np.argsort(n_obs, kind="stable")]) >= 0).all()  # more observations never need less


def write_rows(path: Path, users: dict[str, list[tuple[str, object]]]) -> Path:
    lines = ["user_id,timestamp,value"]
    for user, rows in users.items():
        lines += [f"{user},{stamp},{value}" for stamp, value in rows]
    path.write_text("\n".join(lines) + "\n")
    return path


def hourly(n: int, start_hour: int = 0, value=lambda i: i % 4) -> list[tuple[str, object]]:
    return [(f"2025-01-{1 + (start_hour + i) // 24:02d}T{(start_hour + i) % 24:02d}:00:00", value(i)) for i in range(n)]


def test_users_skipped_by_rule_need_only_the_baseline(tmp_path):
    data = write_rows(tmp_path / "d.csv", {
        "few": hourly(10),  # fewer than data.min_observations (20)
        "many": hourly(200),
        "gaps": hourly(30, value=lambda i: "" if i % 3 else i % 4),  # 10 values left after dropping missing
    })
    settings = settings_for(data, missing="drop")  # gaps' missing values left out
    needs = task.user_heap_needs(settings, task.load(settings))
    assert needs["few"] == needs["gaps"] == heap.baseline_heap()
    assert needs["many"] == max(heap.minimum_heap(settings, k, 200) for k in settings.k_selection.ks)
    # categorical: more distinct labels than data.levels means skipped
    labels = write_rows(tmp_path / "l.csv", {
        "three": hourly(700, value=lambda i: "abc"[i % 3]), "five": hourly(700, value=lambda i: "abcde"[i % 5])})
    # many surrogates, so that an analysed user needs clearly more than the baseline
    categorical = settings_for(labels, levels=3, surrogates=2000, encoding="categorical")
    needs = task.user_heap_needs(categorical, task.load(categorical))
    assert needs["five"] == heap.baseline_heap() < needs["three"]


@pytest.mark.parametrize("step,aggregate", [("1h", "sum"), ("7h", "mean"), ("30min", "count"), ("1D", "max"),
                                            ("2D", "sum"), ("W", "mean")])
def test_observation_counts_match_the_series_after_resampling(tmp_path, step, aggregate):
    rng = np.random.default_rng(5)
    users = {}
    for u in range(6):
        minutes = np.sort(rng.integers(0, 60 * 24 * 20, 80))
        users[f"u{u}"] = [(np.datetime_as_string(np.datetime64("2025-03-01T05:17") + np.timedelta64(int(m), "m"),
                                                 unit="s"), "" if rng.random() < 0.1 else int(rng.integers(0, 9)))
                          for m in minutes]
    data = write_rows(tmp_path / "r.csv", users)
    settings = settings_for(data, step=step, aggregate=aggregate, missing="drop")  # 10% of the values missing
    dataset = task.load(settings)
    ids, n_obs, analysed = heap.observation_counts(dataset, settings)
    assert n_obs.tolist() == [dataset.series(u).n_obs for u in ids] and analysed.all()


# --- the launcher's check and the worker's dry run --------------------------------------------


def test_the_plan_resolves_auto_from_the_data_and_admits(tmp_path):
    config = load_config(proposal_with(tmp_path, xms="auto", xmx="auto"))
    data = measure_launch_data(task, config.settings, config.jvm, 4, config.partition)
    plan, problems = task_heap(task, config, data.needs, list(data.index.user_ids), data.checked, [])
    assert problems == [] and plan.jvm == JvmConfig(xms="128m", xmx="128m")
    assert admit_shards(plan, 4, data.share_bytes, available_bytes=64 * GIB).ok
    tight = admit_shards(plan, 4, 0, available_bytes=1 * GIB)
    assert not tight.ok and f"--shards {tight.max_shards_that_fit}" in tight.message
    assert tight.max_shards_that_fit == 1 * GIB // (128 * MIB + native_overhead_bytes(128 * MIB))
    explicit = load_config(proposal_with(tmp_path, xms=None, xmx="256m"))  # a size: no data needed
    assert task_heap(task, explicit, None, [], None, [])[0].jvm.xmx == "256m"


def test_admission_counts_one_shards_share_of_the_data(tmp_path):
    config = load_config(proposal_with(tmp_path, xms=None, xmx="256m"))
    heap_plan = task_heap(task, config, None, ["a", "b"], None, [])[0]
    overhead = native_overhead_bytes(256 * MIB)
    fits = 2 * (256 * MIB + overhead + 300 * MIB)
    assert admit_shards(heap_plan, 2, 300 * MIB, available_bytes=fits).ok
    refused = admit_shards(heap_plan, 2, 300 * MIB, available_bytes=fits - MIB)
    assert not refused.ok and "2 shards x (256.0 MiB Java heap" in refused.message
    assert admit_shards(heap_plan, 2, 0, available_bytes=fits - 600 * MIB).ok


def big_table(path: Path, users: int, rows_each: int) -> Path:
    """A table written by pandas, users in blocks (the layout a sorted Parquet file has)."""
    import pandas as pd

    ids = np.repeat([f"u{i:04d}" for i in range(users)], rows_each)
    stamps = np.tile(pd.date_range("2025-01-01", periods=rows_each, freq="h").strftime("%Y-%m-%dT%H:%M:%S"), users)
    frame = pd.DataFrame({"user_id": ids, "timestamp": stamps, "value": np.arange(len(ids)) % 5})
    if path.suffix == ".csv":
        frame.to_csv(path, index=False)
    else:
        frame.to_parquet(path, index=False, row_group_size=rows_each * 4)
    return path


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_measure_launch_data_loads_the_largest_share_and_bounds_every_users_heap(tmp_path, suffix):
    path = big_table(tmp_path / f"t{suffix}", users=64, rows_each=4000)
    settings = settings_for(path)
    jvm = JvmConfig(xms="auto", xmx="auto")
    whole = measure_launch_data(task, settings, jvm, 1, "modulo")
    eighth = measure_launch_data(task, settings, jvm, 8, "modulo")
    assert whole.index == eighth.index and len(whole.index.user_ids) == 64
    assert (whole.share_users, eighth.share_users) == (64, 8) and not eighth.whole_table
    assert set(eighth.needs) == set(whole.index.user_ids) and set(eighth.checked) == set(eighth.index.user_ids[:57:8])
    # the bound from the index is the exact need here: no missing values, no resampling
    assert all(eighth.needs[u] == need for u, need in whole.checked.items())
    assert 0 < eighth.share_bytes < whole.share_bytes
    assert "8 of 64 users, measured" in eighth.describe()


def test_with_sum_resampling_auto_loads_the_whole_table_in_every_shard(tmp_path):
    path = big_table(tmp_path / "t.csv", users=8, rows_each=50)
    settings = settings_for(path, step="1h", aggregate="sum")
    assert task.index_heap_needs(settings, task.user_index(settings)) is None  # empty bins: rows bound nothing
    data = measure_launch_data(task, settings, JvmConfig(xms=None, xmx="auto"), 4, "modulo")
    assert data.whole_table and data.share_users == 8 and "the whole table" in data.describe()
    explicit = measure_launch_data(task, settings, JvmConfig(xms=None, xmx="1g"), 4, "modulo")
    assert not explicit.whole_table and explicit.share_users == 2


def run_dry(config: Path, *shard: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "shardrun", "run", "--config", str(config), "--full", "--shard", *(shard or ("0/1",)),
         "--dry-run"], cwd=config.parent, capture_output=True, text=True, timeout=120,
    )


def test_dry_run_names_the_users_over_a_small_heap(tmp_path):
    done = run_dry(proposal_with(tmp_path, xms=None, xmx="8m"))
    assert done.returncode == 2, done.stderr  # preflight refuses too: not even the smallest user fits
    out = done.stdout
    assert "jvm: -Xmx8m" in out
    assert "heap: 60 of the 60 users to do are predicted to need more than the 8.0 MiB heap" in out
    assert "  user 'u001': needs 10.0 MiB, heap 8.0 MiB" in out
    assert out.count("  user '") == 20 and "... and 40 more" in out
    assert "cannot run: the tests at k=1 need about" in out
    assert not (tmp_path / "out").exists()  # a dry run writes nothing


def test_dry_run_with_auto_shows_the_chosen_heap(tmp_path):
    done = run_dry(proposal_with(tmp_path, xms="auto", xmx="auto"), "1/4")
    assert done.returncode == 0, done.stderr
    assert "jvm: -Xms128m -Xmx128m (jvm.xmx auto: user 'u001' needs 10.0 MiB" in done.stdout
    assert "heap: all 15 users to do fit in -Xmx128m" in done.stdout


@pytest.mark.jvm
def test_a_shard_with_auto_records_the_resolved_flags(tmp_path):
    path = proposal_with(tmp_path, xms="auto", xmx="auto")
    config = yaml.safe_load(path.read_text())
    config["k_selection"]["k_grid"] = [1, 2]
    config["surrogates"] = 5
    path.write_text(yaml.safe_dump(config))
    run = tmp_path / "run"
    done = subprocess.run([sys.executable, "-m", "shardrun", "run", "--config", str(path), "--pilot", "1",
                           "--shard", "0/2", "--out", str(run)], cwd=tmp_path, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    flags = ["-Xms128m", "-Xmx128m"]  # every user needs about 10 MiB at k <= 2: the floor
    assert json.loads((run / "shard-0-of-2" / "status.json").read_text())["jvm"] == flags
    assert json.loads((run / "run.json").read_text())["jvm"] == flags
    assert json.loads((run / "run.json").read_text())["config"]["jvm"]["xmx"] == "auto"  # the snapshot as written


def test_a_refusal_always_ends_with_a_fix_that_works():
    """Every branch, the one where no smaller heap fits included, ends with the memory the launch needs."""
    cases = [
        admit(4, 1 * GIB, 256 * MIB, 3 * GIB),
        admit(4, 1 * GIB, 256 * MIB, 3 * GIB, heap_floor_bytes=900 * MIB),
        admit(2, 4 * GIB, 256 * MIB, 2 * GIB),
        admit(2, 4 * GIB, 256 * MIB, 2 * GIB, heap_floor_bytes=3 * GIB),
        admit(1, 4 * GIB, 256 * MIB, 2 * GIB, heap_floor_bytes=3 * GIB),
    ]
    for result in cases:
        assert not result.ok
        fix = result.message.split("To fit: ")[1]
        assert "on this machine, or run on one with" in fix.split("; ")[-1] and fix.endswith("available."), fix
        assert "not a smaller heap" not in fix  # an explanation, never offered as the fix
    # no heap fits 2 at once, but one at a time with a smaller heap does: said, and it really fits
    result = admit(2, 4 * GIB, 256 * MIB, 2 * GIB, heap_floor_bytes=1 * GIB)
    assert "--max-parallel 1 and jvm.xmx 1792m or less" in result.message
    assert admit(1, 1792 * MIB, 256 * MIB, 2 * GIB).ok
    # the machine the last fix names is enough
    assert admit(2, 4 * GIB, 256 * MIB, int(8.5 * GIB)).ok
