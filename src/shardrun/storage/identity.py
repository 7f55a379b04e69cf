"""shard.json: what a shard dir is (shard, config hash, data, mode); written once, checked on every resume.

Also the readers of shard.json and run.json that turn a damaged file into a refusal with its fix.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from shardrun.errors import ResumeMismatch
from shardrun.storage.atomic import create_json_once, read_json
from shardrun.storage.paths import RunPaths, ShardPaths


def read_shard_identity(paths: ShardPaths) -> dict[str, Any]:
    """shard.json of a shard dir; a damaged one (not a JSON object with its shard) is a ResumeMismatch."""
    document = _read_object(paths.identity)
    if document is None or not isinstance(document.get("shard"), str):
        run = paths.dir.parent
        raise ResumeMismatch(
            f"cannot resume {paths.dir}: its shard.json is damaged (not the JSON object shardrun writes"
            " once at the shard's start), so it cannot be told which run it belongs to. Its committed results"
            f" are not trusted without it: move the dir aside (e.g. rename it to {paths.dir.name}.damaged) and"
            f" run the shard again with --resume {run} --shard i/K (or `launch_shards --out {run}`), which"
            " starts that shard afresh."
        )
    return document


def read_run_document(path: Path) -> dict[str, Any]:
    """run.json of a run dir; a damaged one is a ResumeMismatch naming the fix."""
    document = _read_object(path)
    if document is None:
        raise ResumeMismatch(
            f"{path} is damaged (not the JSON object shardrun writes once when a run starts), so it cannot be"
            f" told which run {path.parent} is. Delete it and run the same command again (the next shard writes"
            " it anew; each shard's shard.json still guards its own dir), or start the run in a new --out dir."
        )
    return document


def recorded_shard_count(path: Path) -> tuple[Path, int] | None:
    """(run dir, K) from the run.json of `path` or its run; None without run.json, ResumeMismatch if K is bad."""
    run = RunPaths(path.parent if ShardPaths(path).identity.is_file() else path)
    if not run.run_json.is_file():
        return None
    shards = read_run_document(run.run_json).get("shards")
    if isinstance(shards, bool) or not isinstance(shards, int) or shards < 1:
        raise ResumeMismatch(
            f"{run.run_json} does not say how many shards the run has (its \"shards\" is {shards!r}), so --shard auto"
            f" cannot tell K. Pass --shard i/K explicitly, or start the run in a new --out dir."
        )
    return run.dir, shards


def run_difference(existing: Mapping[str, Any], shards: int, config_hash: str | None = None,
                   data_fingerprint: str | None = None) -> tuple[str, str] | None:
    """How run.json `existing` differs from this run, as (key, words), or None: one K, config and input."""
    if existing.get("shards") != shards:
        return "shards", (f"it was started with {existing.get('shards')} shards (K={existing.get('shards')}, its"
                          f" run.json), and this is K={shards}: a run dir holds one K")
    if config_hash is not None and existing.get("config_hash") != config_hash:
        return "config_hash", (f"it holds a run of another config: its config hash is {existing.get('config_hash')!r}"
                               f" (config {existing.get('config_path')}), this config's is {config_hash!r}")
    if data_fingerprint is not None and existing.get("data_fingerprint") != data_fingerprint:
        return "data_fingerprint", (f"it holds a run of other input data: its data fingerprint is"
                                    f" {existing.get('data_fingerprint')!r}, the data now is {data_fingerprint!r}"
                                    " (the input file changed since the run started)")
    return None


def _read_object(path: Path) -> dict[str, Any] | None:
    """A JSON object from `path`, or None if the file is not one (truncated, overwritten, not UTF-8)."""
    try:
        document = read_json(path)
    except ValueError:  # JSONDecodeError and UnicodeDecodeError
        return None
    return document if isinstance(document, dict) else None


def ensure_identity(paths: ShardPaths, identity: Mapping[str, Any], resuming: bool,
                    guard: Callable[[Callable[[], bool]], bool] = lambda write: write()) -> dict[str, Any]:
    """Write shard.json for a new shard dir, or check that a resumed one belongs to this run.

    Decided once before `guard` writes, so a retried write is never taken for an earlier run.
    """
    existing = read_shard_identity(paths) if paths.identity.is_file() else None
    if existing is None:
        if resuming:
            raise ResumeMismatch(
                f"{paths.dir} is not a shard dir (no shard.json): pass a shard dir or a run dir made by"
                " run_production or launch_shards to --resume."
            )
        guard(lambda: create_json_once(paths.identity, dict(identity), sole_writer=True))  # under the shard lock
        return dict(identity)
    if not resuming:
        raise ResumeMismatch(
            f"{paths.dir} already holds a shard of an earlier run; continue it with --resume {paths.dir.parent}"
            " or choose a new --out."
        )
    for key, what, fix in (
        ("shard", "shard", "pass the same --shard (or none) when resuming"),
        ("config_hash", "config hash", "resume with the config that started the run (see run.json)"),
        ("data_fingerprint", "input data", "the input file changed since the run started; restore it or start a new run"),
        ("pilot", "--pilot size", "resume with the same --full / --pilot N as the run started with"),
    ):
        if existing.get(key) != identity.get(key):
            def shown(value: Any) -> str:
                return "--full" if key == "pilot" and value is None else repr(value)  # noqa: B023 (used in this turn)

            raise ResumeMismatch(
                f"cannot resume {paths.dir}: its {what} is {shown(existing.get(key))} but this run has"
                f" {shown(identity.get(key))}; {fix}."
            )
    return existing
