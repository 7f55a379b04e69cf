"""The decisions of a SLURM submission (launch.cluster), pure, and the run's state they are made from."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from pathlib import Path

from shardrun.launch.admission import shard_memory_bytes
from shardrun.observe.progress import format_seconds
from shardrun.partition import ShardSpec
from shardrun.scheduler.slurm import QueuedElement
from shardrun.states import ShardState
from shardrun.storage.atomic import read_json
from shardrun.storage.paths import RunPaths
from shardrun.storage.status import status_document
from shardrun.units import MIB

COMPLETE = frozenset({ShardState.COMPLETED, ShardState.COMPLETED_WITH_FAILURES})


def element_memory_mib(heap_bytes: int, data_bytes: int) -> int:
    """sbatch --mem for one shard, as admission.py counts it."""
    return math.ceil(shard_memory_bytes(heap_bytes, data_bytes) / MIB)


# A merge peaked at 2.4 GiB for 2,000,000 rows x 32 columns plus 505 MiB in its picture process
# (docs/dev/PERFORMANCE.md, "Merge and validate"): about 46 bytes a cell; 64 leaves room for wider text.
MERGE_BYTES_PER_CELL = 64
MERGE_BASE_MIB = 768  # Python, pandas, pyarrow and matplotlib in the merge and its picture process


def merge_memory_mib(users: int, rows_per_user: int, columns: int) -> int:
    """sbatch --mem for the merge + validate job: a base plus the result set's cells."""
    cells = users * max(rows_per_user, 1) * max(columns, 1)
    return MERGE_BASE_MIB + math.ceil(cells * MERGE_BYTES_PER_CELL / MIB)


def shards_to_submit(shards: int, complete: Iterable[int], queued: Iterable[int],
                     retry: Iterable[int] = ()) -> list[int]:
    """The shards neither complete (unless in `retry`) nor queued."""
    settled = (set(complete) - set(retry)) | set(queued)
    return [index for index in range(shards) if index not in settled]


def users_over_time_limit(predicted: Mapping[str, float], limit_seconds: int, lead_seconds: int) -> list[tuple[str, float]]:
    """Users predicted to outlast the time before the warning (abandoned at every requeue), longest first."""
    budget = limit_seconds - lead_seconds
    return sorted(((user, seconds) for user, seconds in predicted.items() if seconds > budget),
                  key=lambda item: (-item[1], item[0]))


def time_limit_lines(predicted: Mapping[str, float] | None, limit_seconds: int | None, lead_seconds: int) -> list[str]:
    """What the submission says about --time: the longest user, and every user that cannot finish."""
    if limit_seconds is None:
        return []
    if predicted is None:
        return ["time: the task estimates no user's time; nothing checked against --time"]
    if not predicted:
        return []
    longest = max(predicted.values())
    lines = [f"time: {format_seconds(limit_seconds)} per element; the longest user is estimated at"
             f" {format_seconds(longest)} (the task's estimate)"]
    over = users_over_time_limit(predicted, limit_seconds, lead_seconds)
    for user, seconds in over[:20]:
        lines.append(f"  cannot finish within --time: user {user!r} (estimated {format_seconds(seconds)}, over the"
                     f" {format_seconds(limit_seconds - lead_seconds)} an element has before its warning)")
    if len(over) > 20:
        lines.append(f"  ... and {len(over) - 20} more users")
    if over:
        lines.append(f"  {len(over)} users would be abandoned at every requeue: raise --time above"
                     f" {format_seconds(over[0][1] + lead_seconds)}")
    return lines


def describe_shard(index: int, state: str | None, queued: QueuedElement | None, failed_users: int = 0,
                   retry: bool = False) -> str:
    if queued is not None and queued.waiting_or_running:
        return f"shard {index}: in the queue ({queued})"
    if state in COMPLETE and retry and failed_users:
        return f"shard {index}: to submit, to run its {failed_users} failed users again ({state})"
    if state in COMPLETE:
        return f"shard {index}: {state}"
    return f"shard {index}: to submit ({state or 'never started'})"


# --- the run on disk ---------------------------------------------------------------------------------


def status_documents(run: RunPaths, shards: int) -> dict[int, dict]:
    """Each shard's status.json by index, read once ({} for a shard without one)."""
    return {index: status_document(run.shard(ShardSpec(index, shards)).status) for index in range(shards)}


def shard_states(docs: Mapping[int, Mapping]) -> dict[int, str | None]:
    return {index: doc.get("state") for index, doc in docs.items()}


def failed_users_by_shard(docs: Mapping[int, Mapping]) -> dict[int, int]:
    """Each shard's failed users as its status.json counts them (0 when it has none or no status)."""
    counts = {index: doc.get("users_failed") for index, doc in docs.items()}
    return {index: count if isinstance(count, int) else 0 for index, count in counts.items()}


def merged_valid(merged: Path) -> bool:
    """The run's own merge exists and passed validation."""
    try:
        return read_json(merged / "validation.json").get("valid") is True
    except (OSError, ValueError, AttributeError):
        return False
