"""docs/FORMATS.md's field tables are what the typed definitions say now, and a real run writes exactly their keys."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from e2e_support import faulty_task_config, shardrun, write_categorical_data, write_config

REPO = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("formats_reference", REPO / "tools" / "formats_reference.py")
generator = importlib.util.module_from_spec(spec)
spec.loader.exec_module(generator)
TASK_KEYS = {"jidt_jar_sha256"}  # what the default task adds to status.json (Task.jvm_provenance)


def test_the_formats_reference_is_what_the_code_says_now():
    assert generator.TARGET.read_text(encoding="utf-8") == generator.reference(), (
        f"docs/FORMATS.md is stale: regenerate it with `{generator.REGENERATE}` and commit it")


def test_a_table_without_a_definition_is_refused():
    with pytest.raises(SystemExit, match="unknown.json"):
        generator.reference("<!-- fields: unknown.json -->\n<!-- end fields -->\n")


def assert_keys(document: dict, name: str, besides: set[str] = frozenset()) -> None:
    """`document` has every required key of the definition `name`, and no key it does not define."""
    fields = generator.fields(generator.DEFINITIONS[name][0])
    missing = {key for key, (_, _, required) in fields.items() if required} - set(document)
    undocumented = set(document) - set(fields) - besides
    assert not missing and not undocumented, f"{name}: missing {sorted(missing)}, undocumented {sorted(undocumented)}"


@pytest.mark.e2e
def test_a_real_run_writes_exactly_the_defined_keys(tmp_path):
    """A K=2 launch on small data whose two users fail for real (tests/faulty_task.py: a Java exception and a
    heap failure), then a --retry-failed launch that replaces them: every file of the run, key by key."""
    from shardrun.results.timeline import RECORD_FIELDS, TRACE_COLUMNS

    data = tmp_path / "users.csv"
    write_categorical_data(data, n_users=6, n_rows=200)
    config = write_config(tmp_path / "config.yaml", data, tmp_path, surrogates=5, k_grid=(1, 2))
    path, env = faulty_task_config({"config": config}, tmp_path)
    run = tmp_path / "run"
    launch = ("launch", "--config", str(path), "--shards", "2", "--out", str(run))
    assert shardrun(*launch, cwd=tmp_path, env=env, check=False).returncode == 5  # two users failed
    healed = {**env, "FAULTY_TASK": "healed"}
    shardrun(*launch, "--retry-failed", cwd=tmp_path, env=healed)

    def read(path: Path) -> dict:
        return json.loads(path.read_text(encoding="utf-8"))

    assert_keys(read(run / "run.json"), "run.json")
    launcher = read(run / "launcher.json")
    assert_keys(launcher, "launcher.json")
    for entry in launcher["shards"]:
        assert_keys(entry, "launcher.json shards")
    records, errors = [], []
    for shard_dir in sorted(run.glob("shard-*-of-2")):
        assert_keys(read(shard_dir / "shard.json"), "shard.json")
        assert_keys(read(shard_dir / "status.json"), "status.json", besides=TASK_KEYS)
        for batch in sorted((shard_dir / "results").glob("b-*.jsonl")):
            header, *lines = batch.read_text(encoding="ascii").splitlines()
            assert_keys(json.loads(header), "batch header")
            records += map(json.loads, lines)
        if (shard_dir / "errors.jsonl").is_file():
            errors += map(json.loads, (shard_dir / "errors.jsonl").read_text(encoding="utf-8").splitlines())
    for document, name in [*((r, "batch record") for r in records), *((e, "errors.jsonl") for e in errors)]:
        assert_keys(document, name)
        assert set(document["attempt"]) == set(RECORD_FIELDS.values()), name
    assert any(r.get("replaces") for r in records) and any("heap_needed_bytes" in e for e in errors)
    report = read(run / "merged" / "merge_report.json")
    assert_keys(report, "merge_report.json")
    for entry in report["shards"]:
        assert_keys(entry, "merge_report.json shards")
        assert_keys(entry["memory"], "merge_report.json memory")
    assert_keys(read(run / "merged" / "validation.json"), "validation.json")
    header = (run / "merged" / "trace.tsv").read_text(encoding="utf-8").splitlines()[0]
    assert header.split("\t") == list(generator.fields(generator.DEFINITIONS["trace.tsv"][0])) == list(TRACE_COLUMNS)
