"""Bad input: hostile user ids, config faults, data faults, no Java or jar.

One family of the fault table (tests/faults/fault_lab.py holds the lab and the checks every case passes;
docs/RELIABILITY.md lists every case).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest
from fault_lab import (
    K_GRID,
    MODES,
    Fault,
    Lab,
    Outcome,
    assert_documented,
    check_fault,
    merged_values,
    run,
    worker_command,
)

from shardrun.results.read import read_result_file

from e2e_support import analysis_values

pytestmark = pytest.mark.e2e

pytestmark = pytest.mark.e2e

# --- 8. hostile user ids in the data -------------------------------------------------------------


HOSTILE = {  # renamed users of the small data: id in the data <- the reference user whose rows it has
    "../escape": "user-00",
    "/abs/path": "user-01",
    "a\x00b": "user-02",
    "sep/ar\\\\ator": "user-03",
    "x" * 5000: "user-04",
    "..": "user-05",
}
# Columns that depend only on a user's series (the surrogates are seeded by the user id, so the null
# means, p-values and the selected k may differ under another id).
SERIES_ONLY = ["n_obs", "base", "entropy_bits"] + [f"ais_k{k}_bits" for k in K_GRID]


def hostile_ids(lab: Lab) -> Outcome:
    raw = pd.read_csv(lab.small.data, dtype=str)
    raw["who"] = raw["who"].map({v: k for k, v in HOSTILE.items()}).fillna(raw["who"])
    data = lab.input("hostile.csv", raw.to_csv(index=False))
    assert set(pd.read_csv(data, dtype=str)["who"]) >= set(HOSTILE)  # the CSV keeps NUL and the rest
    config = lab.config(data)
    result = run(lab, [sys.executable, "-m", "shardrun", "launch", "--config", str(config), "--shards", "2"])
    output = result.stdout + result.stderr
    run_dir = Path(output.split("run dir: ")[1].split()[0]) if "run dir: " in output else None
    return Outcome(result.returncode, output, facts={"run": run_dir})


def hostile_results_under_their_ids(lab: Lab, outcome: Outcome) -> None:
    """Each hostile id has its two rows in results.parquet and results.csv, computed from its own rows."""
    merged_dir = outcome.facts["run"] / "merged"
    merged = analysis_values(merged_dir)
    reference = lab.small.reference.set_index(["user_id", "feature_mode"])
    assert set(merged["user_id"]) == set(HOSTILE) | set(reference.index.get_level_values(0)) - set(HOSTILE.values())
    for hostile, original in HOSTILE.items():
        mine = merged[merged["user_id"] == hostile].set_index("feature_mode")
        assert sorted(mine.index) == sorted(MODES) and set(mine["status"]) == {"ok"}
        for mode in MODES:
            assert mine.loc[mode, SERIES_ONLY].tolist() == reference.loc[(original, mode), SERIES_ONLY].tolist()
    csv = read_result_file(merged_dir / "results.csv", ["user_id", "feature_mode", "status", "reason"])
    assert sorted(csv["user_id"].unique()) == sorted(merged["user_id"].unique())
    for shard_dir in outcome.facts["run"].glob("shard-*"):
        lab.observe(shard_dir)
    assert not Path("/abs").exists()
    for base in (lab.root, lab.out, outcome.facts["run"]):
        assert not (base / "escape").exists()


def empty_user_id(lab: Lab) -> Outcome:
    raw = pd.read_csv(lab.small.data, dtype=str)
    raw.loc[raw["who"] == "user-07", "who"] = ""
    data = lab.root / "in" / "empty-id.parquet"
    data.parent.mkdir(parents=True, exist_ok=True)
    raw.to_parquet(data, index=False)
    lab.own.add(data)
    result = run(lab, worker_command(lab.config(data), "--shard", "0/1"))
    return Outcome(result.returncode, result.stdout + result.stderr, facts={"data": data})


# --- 9. config faults, 10. data faults, 11. no Java or jar -------------------------------------


def output_root_absent(lab: Lab, outcome: Outcome) -> None:
    """Nothing was written: the output root and the log dir do not exist."""
    assert not lab.out.exists() and not lab.logs.exists()


def refused(make_config: Callable[[Lab], Path], env: dict | None = None) -> Callable[[Lab], Outcome]:
    def inject(lab: Lab) -> Outcome:
        config = make_config(lab)
        result = run(lab, worker_command(config, "--shard", "0/1"), env=env)
        return Outcome(result.returncode, result.stdout + result.stderr, facts={"config": config})

    return inject


def with_data(name: str, content: Callable[[pd.DataFrame], bytes | str]) -> Callable[[Lab], Path]:
    """A config of the small workload whose data file is `content(the small data)`."""
    return lambda lab: lab.config(lab.input(name, content(pd.read_csv(lab.small.data, dtype=str))))


def malformed_yaml(lab: Lab) -> Path:
    path = lab.config()
    path.write_text(path.read_text().replace("surrogates: 200", "surrogates: [200"))
    return path


def set_key(dotted: str, value) -> Callable[[Lab], Path]:
    def edit(raw: dict) -> None:
        *parents, last = dotted.split(".")
        node = raw
        for key in parents:
            node = node[key]
        node[last] = value

    return lambda lab: lab.config(edit=edit)


def data_variant(name: str, change: Callable[[pd.DataFrame], pd.DataFrame],
                 missing: str | None = None) -> Callable[[Lab], Outcome]:
    """A full run of the small workload on a changed copy of its data (documented data rules), with
    data.missing set when `missing` is given."""

    def inject(lab: Lab) -> Outcome:
        raw = pd.read_csv(lab.small.data, dtype=str)
        changed = change(raw.copy())
        data = lab.input(name, changed.to_csv(index=False))
        run_dir = lab.out / "run"
        edit = None if missing is None else (lambda config: config["data"].update(missing=missing))
        result = run(lab, worker_command(lab.config(data, edit=edit), "--shard", "0/1", "--out", str(run_dir)))
        merged = merged_values(lab, run_dir) if result.returncode == 0 else None
        if run_dir.exists():
            lab.observe(run_dir / "shard-0-of-1")
        repeats = changed.groupby("who", sort=False)["when"].transform(lambda w: w.eq(w.shift()))
        return Outcome(result.returncode, result.stdout + result.stderr,
                       facts={"data": changed, "merged": merged, "run": run_dir,
                              "missing": int(changed["label"].isna().sum()), "repeats": int(repeats.sum())})

    return inject


NAN_USER, NAN_ROWS = "user-03", slice(100, 600, 20)  # every 20th of its rows from the 100th loses its value
DUP_USER = "user-04"


def blank_values(raw: pd.DataFrame) -> pd.DataFrame:
    rows = raw.index[raw["who"] == NAN_USER][NAN_ROWS]
    raw.loc[rows, "label"] = None
    return raw


def shuffled(raw: pd.DataFrame) -> pd.DataFrame:
    return raw.sample(frac=1.0, random_state=3).reset_index(drop=True)


def duplicate_times(raw: pd.DataFrame) -> pd.DataFrame:
    rows = raw.index[raw["who"] == DUP_USER]
    for position in range(10, len(rows), 10):
        raw.loc[rows[position], "when"] = raw.loc[rows[position - 1], "when"]
    return raw


def others_equal_reference(lab: Lab, merged: pd.DataFrame, user: str) -> pd.DataFrame:
    """The other users' rows equal the reference's; their q-values aside, which are over the whole set,
    `user`'s p-values included."""
    reference = lab.small.reference
    others = [c for c in reference.columns if not c.endswith("_q")]
    pd.testing.assert_frame_equal(merged.loc[merged["user_id"] != user, others].reset_index(drop=True),
                                  reference.loc[reference["user_id"] != user, others].reset_index(drop=True),
                                  check_exact=True)
    return merged[merged["user_id"] == user].set_index("feature_mode")


def nan_rows_dropped(lab: Lab, outcome: Outcome) -> None:
    """The user with blank values is analysed on its other rows (n_obs counts them); the rest unchanged."""
    data = outcome.facts["data"]
    mine = others_equal_reference(lab, outcome.facts["merged"], NAN_USER)
    expected = int(((data["who"] == NAN_USER) & data["label"].notna()).sum())
    assert outcome.facts["missing"] > 0 and expected == int((data["who"] == NAN_USER).sum()) - outcome.facts["missing"]
    assert set(mine["status"]) == {"ok"} and set(mine["n_obs"]) == {expected}
    missing = outcome.facts["missing"]
    assert set(mine["n_dropped"]) == {missing} and set(mine["dropped_reason"]) == {f"{missing} missing values"}
    # summed in the merge report, the user counted once whatever its feature modes
    report = json.loads((outcome.facts["run"] / "merged" / "merge_report.json").read_text())
    assert report["task"]["cleaning"]["n_dropped"] == {"total": missing, "users": 1}


def sorted_by_time(lab: Lab, outcome: Outcome) -> None:
    """Shuffled rows give exactly the reference (but the count of rows moved): every user's rows were
    sorted by time, and each user's rows say that some were out of order."""
    merged = outcome.facts["merged"]
    pd.testing.assert_frame_equal(merged.drop(columns="n_out_of_order"),
                                  lab.small.reference.drop(columns="n_out_of_order"), check_exact=True)
    assert (merged["n_out_of_order"] > 0).all() and (lab.small.reference["n_out_of_order"] == 0).all()


def duplicates_kept_in_file_order(lab: Lab, outcome: Outcome) -> None:
    """Rows sharing a timestamp stay separate observations in file order: n_obs unchanged, and the
    activity series (which ignores the hour) gives the reference's numbers."""
    mine = others_equal_reference(lab, outcome.facts["merged"], DUP_USER)
    reference = lab.small.reference.set_index(["user_id", "feature_mode"])
    assert set(mine["n_obs"]) == {int((outcome.facts["data"]["who"] == DUP_USER).sum())}
    columns = [c for c in mine.columns
               if not c.startswith("te_hour") and c not in ("user_id", "n_duplicate_timestamps")]
    assert mine.loc["activity", columns].tolist() == reference.loc[(DUP_USER, "activity"), columns].tolist()
    assert set(mine["n_duplicate_timestamps"]) == {outcome.facts["repeats"]}


# --- the table ----------------------------------------------------------------------------------


# --- the table ----------------------------------------------------------------------------------


FAULTS = [
    Fault("hostile-user-ids", "user ids ../escape, /abs/path, a<NUL>b, sep/ar\\\\ator, 5000 x, .. in the data"
          " (CSV); launch_shards K=2 with merge and validation", hostile_ids, 0, ("validation passed",),
          (hostile_results_under_their_ids,)),
    Fault("empty-user-id", "one user's id is the empty string (Parquet, where it is not a missing value)",
          empty_user_id, 2, ("error: data file {data}", "rows have no user id (missing or empty)"),
          (output_root_absent,)),
    Fault("config-malformed-yaml", "an unclosed [ in the YAML", refused(malformed_yaml), 2,
          ("error: config file {config} is not valid YAML at line",), (output_root_absent,)),
    Fault("config-unknown-key", "data.colour: blue", refused(set_key("data.colour", "blue")), 2,
          ("error: unknown config key 'data.colour'", "check the spelling"), (output_root_absent,)),
    Fault("config-wrong-type", "surrogates: many", refused(set_key("surrogates", "many")), 2,
          ("error: config key 'surrogates' must be int", "got str 'many'"), (output_root_absent,)),
    Fault("config-wrong-type-nested", "k_selection.k_grid: 3 (not a list)", refused(set_key("k_selection.k_grid", 3)),
          2, ("error: config key 'k_selection.k_grid' must be list",), (output_root_absent,)),
    Fault("data-file-missing", "data.path names a file that does not exist",
          refused(lambda lab: lab.config(lab.root / "in" / "nowhere.csv")), 2,
          ("error: data file", "nowhere.csv does not exist", "fix data.path"), (output_root_absent,)),
    Fault("data-file-empty", "a 0-byte data file", refused(with_data("empty.csv", lambda raw: b"")), 2,
          ("error: data file", "empty.csv is empty (0 bytes, no text)", "Point data.path at the file with your data"),
          (output_root_absent,)),
    Fault("data-header-only", "a data file with the header and no rows",
          refused(with_data("header.csv", lambda raw: raw.head(0).to_csv(index=False))), 2,
          ("error: data file", "header.csv has no rows",), (output_root_absent,)),
    Fault("data-missing-column", "the value column is named 'activity', not 'label'",
          refused(with_data("renamed.csv", lambda raw: raw.rename(columns={"label": "activity"}).to_csv(index=False))),
          2, ("has no column 'label'", "its columns are 'who', 'when', 'activity'", "data.value_column"),
          (output_root_absent,)),
    Fault("data-nan-values", f"{NAN_USER}: every 20th value from row 100 blank", data_variant("nan.csv", blank_values),
          2, ("error: data file", "{missing} rows cannot be analysed as they are", f"of 1 user ({NAN_USER})",
              "data.missing: drop"), (output_root_absent,)),
    Fault("data-nan-values-dropped", f"{NAN_USER}: every 20th value from row 100 blank, data.missing: drop",
          data_variant("nan.csv", blank_values, missing="drop"), 0,
          ("dropped {missing} rows with a missing or infinite value (data.missing: drop)",), (nan_rows_dropped,)),
    Fault("data-unsorted-timestamps", "all rows of the data file shuffled", data_variant("shuffled.csv", shuffled), 0,
          (), (sorted_by_time,)),
    Fault("data-duplicate-timestamps", f"{DUP_USER}: every 10th row repeats the previous row's timestamp",
          data_variant("dups.csv", duplicate_times), 0,
          ("{repeats} rows share a timestamp with the previous row; kept as separate rows",),
          (duplicates_kept_in_file_order,)),
    Fault("no-java", "JAVA_HOME points at a dir without Java",
          refused(lambda lab: lab.config(), env={"JAVA_HOME": "/nonexistent/java"}), 2,
          ("error: JAVA_HOME is /nonexistent/java", "Point JAVA_HOME at a JDK or JRE"), (output_root_absent,)),
    Fault("no-jar", "jvm.classpath names a jar that does not exist",
          refused(set_key("jvm.classpath", "/nonexistent/infodynamics.jar")), 2,
          ("error: jvm.classpath points at /nonexistent/infodynamics.jar", "pip install --no-deps idtxl-uv"),
          (output_root_absent,)),
]


@pytest.mark.parametrize("fault", FAULTS, ids=[fault.name for fault in FAULTS])
def test_fault(fault: Fault, lab: Lab):
    check_fault(fault, lab)


def test_reliability_doc_lists_every_case():
    assert_documented(FAULTS)
