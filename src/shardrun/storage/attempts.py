"""What a shard records of each attempt at a user, and how attempts are numbered (pure).

An attempt whose commit a crash lost leaves no record, so the next takes its number (docs/FORMATS.md).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

ATTEMPT = "attempt"  # the key of the attempt record in a batch record and in an errors.jsonl line

def attempt_of(record: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The attempt record inside a batch record or an errors.jsonl line; None in older ones."""
    attempt = record.get(ATTEMPT)
    return attempt if isinstance(attempt, Mapping) else None


def recorded_attempts(errors: Iterable[Mapping[str, Any]],
                      committed: Mapping[str, Sequence[Mapping[str, Any]]]) -> dict[str, int]:
    """How many attempts at each user a shard dir records, from errors.jsonl lines and committed records.

    The highest of the three counts, since each alone misses some attempts."""
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
