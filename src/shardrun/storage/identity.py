"""shard.json: what a shard dir is (shard, config hash, data, mode); written once, checked on every resume."""

from __future__ import annotations

from typing import Any, Mapping

from shardrun.errors import ResumeMismatch
from shardrun.storage.atomic import create_json_once, read_json
from shardrun.storage.paths import ShardPaths


def ensure_identity(paths: ShardPaths, identity: Mapping[str, Any], resuming: bool) -> dict[str, Any]:
    """Write shard.json for a new shard dir, or check that a resumed one belongs to this run.

    Whether a dir is resumable is decided by its shard.json (same config hash, same data,
    same shard layout), never by the dir merely existing.
    """
    existing = read_json(paths.identity) if paths.identity.is_file() else None
    if existing is None:
        if resuming:
            raise ResumeMismatch(
                f"{paths.dir} is not a shard dir (no shard.json): pass a shard dir or a run dir made by"
                " run_production or launch_shards to --resume."
            )
        create_json_once(paths.identity, dict(identity))
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
                return "--full" if key == "pilot" and value is None else repr(value)

            raise ResumeMismatch(
                f"cannot resume {paths.dir}: its {what} is {shown(existing.get(key))} but this run has"
                f" {shown(identity.get(key))}; {fix}."
            )
    return existing
