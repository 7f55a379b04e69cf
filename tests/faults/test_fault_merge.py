"""Duplicate, conflicting and untrusted shard dirs in a merge.

One family of the fault table (tests/faults/fault_lab.py holds the lab and the checks every case passes;
docs/RELIABILITY.md lists every case).
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pandas as pd
import pytest
from fault_lab import (
    SURROGATES,
    Fault,
    Lab,
    Outcome,
    assert_documented,
    check_fault,
    merged_values,
    resume,
    run,
    worker_command,
)

from e2e_support import analysis_values, read_status
from store_support import batch_of, edit_batch

pytestmark = pytest.mark.e2e

pytestmark = pytest.mark.e2e

# --- 7. duplicate and conflicting shard dirs in a merge ------------------------------------------


def copy_of_reference(lab: Lab, name: str) -> Path:
    copy = lab.out / name
    shutil.copytree(lab.small.run, copy, ignore=shutil.ignore_patterns("merged"))
    return copy / "shard-0-of-1"


def merge_duplicates(lab: Lab) -> Outcome:
    copy = copy_of_reference(lab, "copy")
    output = lab.out / "merged-dup"
    result = run(lab, [sys.executable, "-m", "shardrun", "merge", "--shards", str(lab.small.run / "shard-0-of-1"),
                       str(copy), "--output", str(output)])
    reference = lab.small.reference
    return Outcome(result.returncode, result.stdout + result.stderr,
                   facts={"merged": output, "rows": len(reference), "users": reference["user_id"].nunique()},
                   recovered=analysis_values(output) if result.returncode == 0 else None)


def duplicates_dropped(lab: Lab, outcome: Outcome) -> None:
    """Every row came twice and identical: all dropped as duplicates; the set is complete."""
    report = json.loads((outcome.facts["merged"] / "merge_report.json").read_text())
    assert report["complete"] is True and report["conflicts"] == []
    assert report["identical_duplicates"] == report["rows"] == len(lab.small.reference)


def merge_conflict(lab: Lab) -> Outcome:
    copy = copy_of_reference(lab, "edited")
    def raise_ais_k2(record: dict) -> None:
        row = next(r for r in record["rows"] if r["feature_mode"] == "composite")
        row["ais_k2_bits"] = row["ais_k2_bits"] + 0.125

    # the checksum rewritten too: rows that really differ (a non-deterministic computation), not a hand
    # edit, which merge would leave out as untrusted (merge-hand-edited-result-file)
    edit_batch(batch_of(copy, "user-03"), raise_ais_k2, keep_checksum=False)
    output = lab.out / "merged-conflict"
    result = run(lab, [sys.executable, "-m", "shardrun", "merge", "--shards", str(lab.small.run / "shard-0-of-1"),
                       str(copy), "--output", str(output)])
    return Outcome(result.returncode, result.stdout + result.stderr, facts={"merged": output, "copy": copy})


def conflict_reported(lab: Lab, outcome: Outcome) -> None:
    """merge_report.json: incomplete, exactly one conflict: that key, that column, both dirs."""
    report = json.loads((outcome.facts["merged"] / "merge_report.json").read_text())
    assert report["complete"] is False
    [conflict] = report["conflicts"]
    assert conflict["key"] == {"user_id": "user-03", "feature_mode": "composite"}
    assert [d["column"] for d in conflict["differences"]] == ["ais_k2_bits"]
    first, second = conflict["differences"][0]["values"]
    assert abs(abs(second - first) - 0.125) < 1e-12
    assert str(outcome.facts["copy"]) in conflict["dirs"]
    assert report["identical_duplicates"] == report["rows"] - 1


def copy_for_edit(lab: Lab, user: str) -> tuple[Path, Path, Path]:
    """A copy of the reference run, every result file observed but `user`'s (the case changes it)."""
    run_dir = lab.out / "run"
    shutil.copytree(lab.small.run, run_dir, ignore=shutil.ignore_patterns("merged"))
    shard_dir = run_dir / "shard-0-of-1"
    victim = batch_of(shard_dir, user)
    lab.observe(shard_dir, skip=(victim,))
    return run_dir, shard_dir, victim


def merge_after(lab: Lab, run_dir: Path, shard_dir: Path, victim: Path, user: str) -> Outcome:
    output = lab.out / "merged-untrusted"
    result = run(lab, [sys.executable, "-m", "shardrun", "merge", "--run", str(run_dir), "--output", str(output)])
    return Outcome(result.returncode, result.stdout + result.stderr,
                   facts={"run": run_dir, "shard_dir": shard_dir, "victim": victim, "payload": victim.read_bytes(),
                          "user": user, "merged": output, "config": lab.config()})


EDITED_USER = "user-04"
SWAPPED_USER = "user-05"


def hand_edited(lab: Lab) -> Outcome:
    """te_hour_p of one row changed in place in its committed file, as by hand (the checksum not)."""
    run_dir, shard_dir, victim = copy_for_edit(lab, EDITED_USER)
    def change_te_hour_p(record: dict) -> None:
        row = next(r for r in record["rows"] if r["feature_mode"] == "composite")
        row["te_hour_p"] = 0.0123 if row["te_hour_p"] != 0.0123 else 0.0456

    edit_batch(victim, change_te_hour_p)
    return merge_after(lab, run_dir, shard_dir, victim, EDITED_USER)


def swapped_in(lab: Lab) -> Outcome:
    """One user's committed file replaced by the same user's file of a run of another config."""
    other = lab.config(name="other.yaml", edit=lambda raw: raw.update(surrogates=SURROGATES // 2))
    other_run = lab.out / "other"
    result = run(lab, worker_command(other, "--shard", "0/1", "--out", str(other_run), "--commit-interval", "0"))
    assert result.returncode == 0, result.stdout + result.stderr
    run_dir, shard_dir, victim = copy_for_edit(lab, SWAPPED_USER)
    victim.write_bytes((other_run / "shard-0-of-1" / "results" / victim.name).read_bytes())
    return merge_after(lab, run_dir, shard_dir, victim, SWAPPED_USER)


GARBLED_USER = "user-06"


def garbled(lab: Lab) -> Outcome:
    """One user's committed batch file overwritten with bytes that are no batch at all: no user can be read
    from it, so only the file itself can be named."""
    run_dir, shard_dir, victim = copy_for_edit(lab, GARBLED_USER)
    victim.write_bytes(b"\x00\x17 not a batch, nor JSON \xff\n")
    return merge_after(lab, run_dir, shard_dir, victim, GARBLED_USER)


def unreadable_file_reported(lab: Lab, outcome: Outcome) -> None:
    """merge_report.json: incomplete; the file named in untrusted_files with no user (none could be read),
    its user missing; the file left in place byte for byte."""
    report = json.loads((outcome.facts["merged"] / "merge_report.json").read_text())
    assert report["complete"] is False
    [untrusted] = report["untrusted_files"]
    assert (untrusted["file"], untrusted["user_id"]) == (outcome.facts["victim"].name, None)
    assert [m["user_id"] for m in report["missing_users"]] == [outcome.facts["user"]]
    assert outcome.facts["victim"].read_bytes() == outcome.facts["payload"]


def untrusted_reported(lab: Lab, outcome: Outcome) -> None:
    """merge_report.json: incomplete; that file listed as untrusted, its user missing; the file itself is
    left in place, byte for byte (merge reports, the resume decides); no row of that user in the set."""
    report = json.loads((outcome.facts["merged"] / "merge_report.json").read_text())
    assert report["complete"] is False
    [untrusted] = report["untrusted_files"]
    assert (untrusted["file"], untrusted["user_id"]) == (outcome.facts["victim"].name, outcome.facts["user"])
    assert [m["user_id"] for m in report["missing_users"]] == [outcome.facts["user"]]
    assert report["conflicts"] == [] and report["rows"] == len(lab.small.reference) - 2
    assert outcome.facts["victim"].read_bytes() == outcome.facts["payload"]
    merged = pd.read_parquet(outcome.facts["merged"] / "results.parquet")
    assert outcome.facts["user"] not in set(merged["user_id"])


def resume_quarantines_and_recomputes(lab: Lab, outcome: Outcome) -> pd.DataFrame:
    """The documented fix: resume the shard; the untrusted file goes to results/quarantine/ byte for byte
    and its user is computed again (the same numbers as before the edit); the merge equals the reference."""
    shard_dir = outcome.facts["shard_dir"]
    result = resume(lab, outcome.facts["config"], shard_dir)
    assert ("cannot be trusted" in result.stdout + result.stderr
            and "will be recomputed" in result.stdout + result.stderr)
    [quarantined] = sorted((shard_dir / "results" / "quarantine").iterdir())
    assert quarantined.read_bytes() == outcome.facts["payload"]
    assert read_status(shard_dir)["resumed_with_done"] == 9
    lab.observe(shard_dir)
    return merged_values(lab, outcome.facts["run"])


# --- the table ----------------------------------------------------------------------------------


FAULTS = [
    Fault("merge-identical-duplicates", "the same shard dir copied into a second run dir; merge both",
          merge_duplicates, 0, ("merged {rows} rows for {users} users from 2 shard dirs",), (duplicates_dropped,),
          lambda lab, outcome: outcome.recovered),
    Fault("merge-conflicting-duplicates", "that copy with one value changed in one result file (its checksum"
          " rewritten: rows that really differ); merge both",
          merge_conflict, 5, ("conflicting rows for user_id='user-03', feature_mode='composite'", "ais_k2_bits differ"),
          (conflict_reported,)),
    Fault("merge-hand-edited-result-file", f"te_hour_p of {EDITED_USER} (composite) edited in place in its"
          " committed file; merge the run, then resume", hand_edited, 5,
          ("is left out: its records do not match the checksum", "edited after the commit",
           f"user '{EDITED_USER}' has no results"), (untrusted_reported,), resume_quarantines_and_recomputes),
    Fault("merge-swapped-in-file", f"{SWAPPED_USER}'s committed file replaced by its file from a run of another"
          " config (surrogates halved); merge the run, then resume", swapped_in, 5,
          ("is left out: it was committed under config hash", "comes from another config's run",
           f"user '{SWAPPED_USER}' has no results"), (untrusted_reported,), resume_quarantines_and_recomputes),
    Fault("merge-garbage-result-file", f"{GARBLED_USER}'s committed file overwritten with bytes that are no batch;"
          " merge the run, then resume", garbled, 5,
          ("(no user readable in it) is left out", f"user '{GARBLED_USER}' has no results"),
          (unreadable_file_reported,), resume_quarantines_and_recomputes),
]


@pytest.mark.parametrize("fault", FAULTS, ids=[fault.name for fault in FAULTS])
def test_fault(fault: Fault, lab: Lab):
    check_fault(fault, lab)


def test_reliability_doc_lists_every_case():
    assert_documented(FAULTS)
