"""Which users belong to which shard: pure functions, no files, no processes.

User u belongs to shard i of K iff index(u) % K == i, where index is u's position in the sorted
list of user ids. Every shard computes the same sorted list on its own, so no coordination is
needed and a shard is just a process with an index (a job array element on a scheduler).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Mapping, Sequence

from shardrun.errors import UsageError

_SPEC_RE = re.compile(r"^\s*(\d+)\s*/\s*(\d+)\s*$")

# Job-array variables for `--shard auto`:
# (index variable, count variable, variable holding the first index, first index when that is unset).
_SCHEDULER_ENV = (
    ("SLURM_ARRAY_TASK_ID", "SLURM_ARRAY_TASK_COUNT", "SLURM_ARRAY_TASK_MIN", 0),
    ("SGE_TASK_ID", None, "SGE_TASK_FIRST", 1),
    ("PBS_ARRAY_INDEX", None, None, 0),
)


@dataclass(frozen=True, order=True)
class ShardSpec:
    index: int
    count: int

    def __post_init__(self) -> None:
        if self.count < 1 or not 0 <= self.index < self.count:
            raise UsageError(
                f"shard {self.index}/{self.count} is out of range: use --shard i/K with K >= 1 and 0 <= i < K."
            )

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"

    @property
    def dirname(self) -> str:
        return f"shard-{self.index}-of-{self.count}"

    @classmethod
    def parse(cls, text: str, env: Mapping[str, str] | None = None) -> "ShardSpec":
        """'i/K', or 'auto' to read a scheduler's job-array variables."""
        if text.strip() == "auto":
            return cls.from_scheduler_env(os.environ if env is None else env)
        match = _SPEC_RE.match(text)
        if not match:
            raise UsageError(f"--shard must look like i/K (for example 0/4) or 'auto', got {text!r}.")
        return cls(int(match.group(1)), int(match.group(2)))

    @classmethod
    def from_scheduler_env(cls, env: Mapping[str, str]) -> "ShardSpec":
        for index_var, count_var, first_var, default_first in _SCHEDULER_ENV:
            if index_var not in env:
                continue
            count_text = env.get(count_var) if count_var else None
            count_text = count_text or env.get("SHARDRUN_SHARDS")
            if not count_text:
                raise UsageError(
                    f"--shard auto found {index_var} but not the number of shards; set SHARDRUN_SHARDS=K"
                    + (f" (or run as a job array so that {count_var} is set)." if count_var else ".")
                )
            try:
                first = int(env[first_var]) if first_var and env.get(first_var) else default_first
                return cls(int(env[index_var]) - first, int(count_text))
            except ValueError:
                raise UsageError(f"--shard auto: {index_var} or the shard count is not an integer.") from None
        raise UsageError(
            "--shard auto needs a scheduler job array (SLURM_ARRAY_TASK_ID, SGE_TASK_ID or PBS_ARRAY_INDEX);"
            " outside one, pass --shard i/K."
        )


def users_of_shard(sorted_user_ids: Sequence[str], shard: ShardSpec) -> list[str]:
    """The shard's users, in the order of the global sorted list."""
    return [u for position, u in enumerate(sorted_user_ids) if position % shard.count == shard.index]
