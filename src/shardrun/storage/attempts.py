"""What a shard records of each attempt at a user, and how attempts are numbered (pure).

Every attempt that ends (ok, skipped or failed) leaves one attempt record; it is stored under the key
`attempt` of the user's record in the batch that commits it (storage/batches.py), and, for a failed
attempt, also of its line in errors.jsonl (written first: a failed attempt whose commit never landed
is still known). The merge builds merged/trace.tsv from them (results/trace.py).

    {"number": 2, "host": "node7", "pid": 4242, "start": "2026-12-07T08:31:02.120+00:00",
     "end": "2026-12-07T08:31:03.354+00:00", "seconds": 1.234, "cpu_seconds": 1.61, "status": "failed",
     "error_class": "java.lang.ArrayIndexOutOfBoundsException", "heap_used_bytes": 31457280,
     "peak_rss_bytes": 412000256}

`end` is `start` plus `seconds` (measured on the monotonic clock, as the rows' `seconds`), so the two
times never disagree with the duration. `number` counts the attempts at that user recorded in the
shard dir before it (its lines in errors.jsonl, its committed records, replaced ones included) plus
one. An attempt that ended but whose commit a crash lost, ok or skipped, left no record: it is not
counted, and the next attempt takes its number.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

ATTEMPT = "attempt"  # the key of the attempt record in a batch record and in an errors.jsonl line

def attempt_of(record: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The attempt record inside a batch record or an errors.jsonl line; None in those written before
    attempts were recorded (or not a mapping)."""
    attempt = record.get(ATTEMPT)
    return attempt if isinstance(attempt, Mapping) else None


def recorded_attempts(errors: Iterable[Mapping[str, Any]],
                      committed: Mapping[str, Sequence[Mapping[str, Any]]]) -> dict[str, int]:
    """How many attempts at each user a shard dir records: `errors` are its errors.jsonl lines,
    `committed` each user's committed records (the replaced ones and the standing one).

    A failed attempt usually leaves both an error line and a committed record; each count alone
    misses some (a commit lost to a crash; a task that reports a failure in its rows without raising),
    so the count is the highest of: the highest attempt number recorded, the user's error lines, its
    committed records."""
    numbers: dict[str, int] = {}
    error_lines: Counter[str] = Counter()
    for line in errors:
        user_id = line.get("user_id")
        if isinstance(user_id, str):
            error_lines[user_id] += 1
            numbers[user_id] = max(numbers.get(user_id, 0), _number(attempt_of(line)))
    for user_id, records in committed.items():
        numbers[user_id] = max([numbers.get(user_id, 0), len(records),
                                *(_number(attempt_of(record)) for record in records)])
    return {user_id: max(count, error_lines[user_id]) for user_id, count in numbers.items()}


def _number(attempt: Mapping[str, Any] | None) -> int:
    number = attempt.get("number") if attempt is not None else None
    return number if isinstance(number, int) and not isinstance(number, bool) and number > 0 else 0
