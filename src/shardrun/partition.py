"""Which users belong to which shard (`modulo` or LPT `balanced`), pure, so every shard computes it alone.

`--shard auto` reads a scheduler's job-array variables as i/K; the schedulers are in docs/SCHEDULERS.md.
"""

from __future__ import annotations

import heapq
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from shardrun.errors import UsageError

_SPEC_RE = re.compile(r"^\s*(\d+)\s*/\s*(\d+)\s*$")

# shardrun's own variables, read by `--shard auto` on every scheduler.
SHARDRUN_INDEX = "SHARDRUN_INDEX"  # this element's shard index (0-based); wins over every scheduler's variable
SHARDRUN_SHARDS = "SHARDRUN_SHARDS"  # K, where neither the run dir nor the scheduler gives it
SHARDRUN_INDEX_OFFSET = "SHARDRUN_INDEX_OFFSET"  # added to the index: a run of K shards submitted as several arrays
SHARDRUN_FIRST_INDEX = "SHARDRUN_FIRST_INDEX"  # the array ID that is shard 0 (e.g. 1 for a 1-based SLURM array)


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
    def parse(cls, text: str) -> ShardSpec:
        """'i/K' ('auto' is resolve_auto_shard's, with the run's K: shard/dirs.py shard_of)."""
        match = _SPEC_RE.match(text)
        if not match:
            raise UsageError(f"--shard must look like i/K (for example 0/4) or 'auto', got {text!r}.")
        return cls(int(match.group(1)), int(match.group(2)))


@dataclass(frozen=True)
class Scheduler:
    """How one job-array system numbers its elements: index = (ID - first) / step + SHARDRUN_INDEX_OFFSET.

    `first` uses only the residue of the lowest ID, so a resubmission (`sbatch --array=1`) keeps indices.
    """

    name: str
    index_variable: str
    lowest_index: int  # the scheduler's own first ID: 0, or 1 where IDs count from 1
    first_variable: str | None = None  # the array's lowest ID as submitted
    step_variable: str | None = None  # the array's step
    last_variable: str | None = None  # the array's highest ID as submitted
    count_variable: str | None = None  # how many elements the array has
    counts_whole_array: bool = False  # count_variable always counts the whole array: it cannot be resubmitted in part
    outside_an_array: tuple[str, ...] = ()  # values index_variable takes in a job that is not an array element
    gives_count: bool = True  # False: the scheduler never says K (documented in the refusal)


# Tried in order, innermost launcher first (batch schedulers' variables are inherited by all a job
# starts); the first set wins. Checked against each scheduler's docs (docs/SCHEDULERS.md, Sources).
SCHEDULERS: tuple[Scheduler, ...] = (
    # Any scheduler, and HTCondor, which has no variable of its own: environment = "SHARDRUN_INDEX=$(Process)".
    Scheduler("SHARDRUN_INDEX", SHARDRUN_INDEX, lowest_index=0, gives_count=False),
    # GNU parallel: $PARALLEL_SEQ (= {#}) counts jobs from 1 (src/parallel: `my $seq = 1`).
    Scheduler("GNU parallel", "PARALLEL_SEQ", lowest_index=1, gives_count=False),
    # Kubernetes Indexed Job: 0 .. spec.completions-1; completions is not in the pod's environment.
    Scheduler("Kubernetes Indexed Job", "JOB_COMPLETION_INDEX", lowest_index=0, gives_count=False),
    # AWS Batch array job: 0 .. size-1, and the size of the parent array.
    Scheduler("AWS Batch", "AWS_BATCH_JOB_ARRAY_INDEX", lowest_index=0, count_variable="AWS_BATCH_JOB_ARRAY_SIZE",
              counts_whole_array=True),
    # SLURM (slurmctld's _create_job_array): MIN/MAX the lowest/highest ID, COUNT the number of IDs,
    # STEP the number after the first ':' of --array (1 without one, so 1 for a list like 0,5,9).
    Scheduler("SLURM", "SLURM_ARRAY_TASK_ID", lowest_index=0, first_variable="SLURM_ARRAY_TASK_MIN",
              step_variable="SLURM_ARRAY_TASK_STEP", last_variable="SLURM_ARRAY_TASK_MAX",
              count_variable="SLURM_ARRAY_TASK_COUNT"),
    # Grid Engine (SGE, UGE, SoGE): qsub -t n[-m[:s]], IDs from 1; 'undefined' outside an array job.
    Scheduler("SGE/UGE", "SGE_TASK_ID", lowest_index=1, first_variable="SGE_TASK_FIRST",
              step_variable="SGE_TASK_STEPSIZE", last_variable="SGE_TASK_LAST", outside_an_array=("undefined",)),
    # LSF: bsub -J "name[1-N:s]", IDs from 1; LSB_JOBINDEX is 0 in a job that is not an array element.
    # There is no variable for the array's lowest ID, so LSF never says K.
    Scheduler("LSF", "LSB_JOBINDEX", lowest_index=1, step_variable="LSB_JOBINDEX_STEP",
              last_variable="LSB_JOBINDEX_END", outside_an_array=("0",), gives_count=False),
    # PBS Pro: qsub -J X-Y[:Z]; the range is not in the environment.
    Scheduler("PBS Pro", "PBS_ARRAY_INDEX", lowest_index=0, gives_count=False),
    # Torque: qsub -t 0-N; the range is not in the environment.
    Scheduler("Torque", "PBS_ARRAYID", lowest_index=0, gives_count=False),
)


@dataclass(frozen=True)
class AutoShard:
    spec: ShardSpec
    explanation: str  # what `--shard auto` decided, and how, in words for the shard's log


@dataclass(frozen=True)
class _ArrayElement:
    """One element's position, read from its scheduler's variables (K not yet known)."""

    scheduler: Scheduler
    said: str  # "SLURM_ARRAY_TASK_ID=5"
    index: int  # the shard index, offset included
    how: str  # "first index 1, step 2"
    offset: int  # SHARDRUN_INDEX_OFFSET
    last_index: int | None  # the shard index of the array's highest ID, when the scheduler says it
    last_said: str | None
    count: int | None  # the array's size when it evidently is a whole run: its lowest ID is shard 0
    count_said: str  # where count comes from ("SLURM_ARRAY_TASK_COUNT=4"), or why it is None


def resolve_auto_shard(env: Mapping[str, str], run_shards: int | None = None,
                       run_dir: str | None = None) -> AutoShard:
    """i/K of this element; K from the run, else SHARDRUN_SHARDS, else a whole array's size.
    Explicit numbers that disagree are refused, never reconciled (docs/SCHEDULERS.md)."""
    element = _array_element(env)
    shards, shards_from = _shard_count(env, element, run_shards, run_dir or "the run dir")
    fix = (f"If the array's IDs count shards from 1 (e.g. --array=1-{shards}), set {SHARDRUN_FIRST_INDEX}=1;"
           f" if this array is one of several that together make the run, its {SHARDRUN_INDEX_OFFSET}"
           f" ({element.offset} now) plus its size must not exceed K.")
    in_range = f"but the run has K={shards} shards (0..{shards - 1})"
    if element.index >= shards:
        raise UsageError(f"--shard auto: {element.said} gives shard {element.index} ({element.how}), {in_range}."
                         f" {fix} Or pass --shard i/{shards}.")
    if element.last_index is not None and element.last_index >= shards:
        raise UsageError(f"--shard auto: this array's highest ID ({element.last_said}) would be shard"
                         f" {element.last_index} ({element.how}), {in_range}, so every element is refused before"
                         f" any of them starts. {fix}")
    spec = ShardSpec(element.index, shards)
    ignored = [f"{s.index_variable}={env[s.index_variable]}" for s in SCHEDULERS
               if s is not element.scheduler and _present(env, s)]
    also = f"; also set, not used: {', '.join(ignored)}" if ignored else ""
    return AutoShard(spec, f"shard {spec}: {element.said} ({element.scheduler.name}: {element.how}),"
                           f" K={shards} from {shards_from}{also}")


def _present(env: Mapping[str, str], scheduler: Scheduler) -> bool:
    value = env.get(scheduler.index_variable, "").strip()
    return bool(value) and value not in scheduler.outside_an_array


def _integer(env: Mapping[str, str], name: str | None, minimum: int) -> int | None:
    """The integer value of `name`, None when it is unset, empty or no variable; anything else is refused."""
    text = env.get(name, "").strip() if name else ""
    if not text:
        return None
    try:
        value = int(text)
    except ValueError:
        value = minimum - 1
    if value < minimum:
        raise UsageError(
            f"--shard auto: {name}={text!r} is not a whole number >= {minimum}. Fix or unset {name} in the job's"
            " environment, or pass --shard i/K."
        )
    return value


def _array_element(env: Mapping[str, str]) -> _ArrayElement:
    scheduler = next((s for s in SCHEDULERS if _present(env, s)), None)
    if scheduler is None:
        outside = [f"{s.index_variable}={env[s.index_variable]}" for s in SCHEDULERS
                   if env.get(s.index_variable, "").strip() in s.outside_an_array]
        said = f" ({', '.join(outside)}: a job that is not an array element)" if outside else ""
        raise UsageError(
            f"--shard auto needs a job array element, but none of {', '.join(s.index_variable for s in SCHEDULERS)}"
            f' is set{said}. On HTCondor, pass the process number in the submit file (environment ='
            f' "{SHARDRUN_INDEX}=$(Process)"); elsewhere, outside a job array, pass --shard i/K.'
        )
    array_id = _integer(env, scheduler.index_variable, 0)
    assert array_id is not None  # _present: set and not empty
    step = _integer(env, scheduler.step_variable, 1) or 1
    offset = _integer(env, SHARDRUN_INDEX_OFFSET, 0) or 0
    array_lowest = _integer(env, scheduler.first_variable, 0)
    if array_lowest is None and scheduler.counts_whole_array:
        array_lowest = scheduler.lowest_index
    first = scheduler.lowest_index
    if array_lowest is not None:  # its residue, not the lowest ID: --array=1 resubmits shard 1, not shard 0
        first += (array_lowest - scheduler.lowest_index) % step
    override = _integer(env, SHARDRUN_FIRST_INDEX, 0)
    if override is not None:
        first, how = override, f"{SHARDRUN_FIRST_INDEX}={override}"
    else:
        how = f"first index {first}"
    how += (f", step {step}" if step != 1 else "") + (f", offset {offset}" if offset else "")
    said = f"{scheduler.index_variable}={array_id}"
    if array_id < first or (array_id - first) % step:
        raise UsageError(
            f"--shard auto: {said} is not first index {first} plus a multiple of step {step}, so it names no shard."
            f" Set {SHARDRUN_FIRST_INDEX} to the array ID that is shard 0, or {SHARDRUN_INDEX} to this element's"
            " shard index, in the job's environment (or pass --shard i/K)."
        )

    def shard_of(some_id: int) -> int:
        return (some_id - first) // step + offset

    last_id = _integer(env, scheduler.last_variable, 0)
    size = _integer(env, scheduler.count_variable, 1)
    last_said = f"{scheduler.last_variable}={last_id}" if last_id is not None else None
    if last_id is None and size is not None and scheduler.counts_whole_array and array_lowest is not None:
        last_id, last_said = array_lowest + (size - 1) * step, f"{scheduler.count_variable}={size}"
    count, count_said = _whole_array_size(scheduler, array_lowest, last_id, size, step, shard_of)
    return _ArrayElement(scheduler, said, shard_of(array_id), how, offset,
                         None if last_id is None else shard_of(last_id), last_said, count, count_said)


def _whole_array_size(scheduler: Scheduler, array_lowest: int | None, last_id: int | None, size: int | None,
                      step: int, shard_of: Callable[[int], int]) -> tuple[int | None, str]:
    """(the array's size, source) when it is evidently a whole first submission, else (None, why not):
    a resubmission (`--array=1`) or a sparse list (`--array=0,5,9`) says nothing about K."""
    if not scheduler.gives_count:
        return None, f"{scheduler.name} does not give the number of shards"
    if array_lowest is None:
        return None, f"{scheduler.name} did not say where the array starts"
    if shard_of(array_lowest) != 0:
        lowest = f"{scheduler.first_variable}={array_lowest}" if scheduler.first_variable else "its first element"
        return None, (f"the array starts at shard {shard_of(array_lowest)} ({lowest}), so it is part of a run (a"
                      " resubmission of chosen elements, or one of several arrays), and its size is not K")
    spanned = None if last_id is None else (last_id - array_lowest) // step + 1
    if size is None:
        if spanned is None:
            return None, f"{scheduler.name} did not say how large the array is"
        return spanned, (f"{scheduler.first_variable}={array_lowest} to {scheduler.last_variable}={last_id}"
                         + (f" step {step}" if step != 1 else ""))
    if spanned is not None and spanned != size:
        return None, (f"the array is not every step from {scheduler.first_variable}={array_lowest} to"
                      f" {scheduler.last_variable}={last_id} ({scheduler.count_variable}={size}: a list such as"
                      " 0,5,9), so its size is not K")
    return size, f"{scheduler.count_variable}={size}"


def _shard_count(env: Mapping[str, str], element: _ArrayElement, run_shards: int | None,
                 run_dir: str) -> tuple[int, str]:
    """K and its source: the run's, else SHARDRUN_SHARDS, else a whole array's size."""
    declared = _integer(env, SHARDRUN_SHARDS, 1)
    if run_shards is not None and declared is not None and declared != run_shards:
        raise UsageError(
            f"--shard auto: {run_dir} holds a run of K={run_shards} shards (its run.json), but"
            f" {SHARDRUN_SHARDS}={declared}; a run dir holds one K. Set {SHARDRUN_SHARDS}={run_shards} (or unset it)"
            f" to add to that run, or give a new --out for a run of K={declared}."
        )
    if declared is None and element.count is not None and run_shards is not None and element.count != run_shards:
        raise UsageError(
            f"--shard auto: {run_dir} holds a run of K={run_shards} shards (its run.json), but this array looks like"
            f" a whole run of {element.count} ({element.scheduler.name}: its lowest ID is shard 0 and it has"
            f" {element.count} elements). If the array resubmits some shards of that run, say so with"
            f" {SHARDRUN_SHARDS}={run_shards} in the job's environment; otherwise submit {run_shards} elements, or"
            f" give a new --out for a run of K={element.count}."
        )
    if run_shards is not None:
        return run_shards, f"the run.json of {run_dir}"
    if declared is not None:
        return declared, f"{SHARDRUN_SHARDS}={declared}"
    if element.count is not None:
        return element.count, element.count_said
    raise UsageError(
        f"--shard auto found {element.said} but not the number of shards K: {element.count_said}. Run it in the"
        f" run's dir (--out DIR or --resume DIR whose run.json says K), or set {SHARDRUN_SHARDS}=K in the job's"
        " environment, or pass --shard i/K."
    )


def users_of_shard(sorted_user_ids: Sequence[str], shard: ShardSpec) -> list[str]:
    """The shard's users, in the order of the global sorted list."""
    return [u for position, u in enumerate(sorted_user_ids) if position % shard.count == shard.index]


MODULO = "modulo"
BALANCED = "balanced"
PARTITIONS = (MODULO, BALANCED)


def balanced_assignment(sorted_user_ids: Sequence[str], costs: Sequence[float], count: int) -> list[list[str]]:
    """Each shard's users under `balanced`: LPT, ties by user then lowest shard; lists in sorted order.

    Within LPT's 4/3 - 1/(3K) bound of the optimum; every shard must pass the same costs (one per user:
    UserIndex checks) and a count >= 1 (ShardSpec checks).
    """
    # The user's position stands in for its id in the tie-break: the list is sorted, so it orders alike.
    by_cost = sorted(range(len(sorted_user_ids)), key=lambda position: (-costs[position], position))
    shard_of = [0] * len(sorted_user_ids)
    loads = [(0.0, index) for index in range(count)]  # a heap: least loaded first, then lowest index
    for position in by_cost:
        load, index = heapq.heappop(loads)
        shard_of[position] = index
        heapq.heappush(loads, (load + costs[position], index))
    shards: list[list[str]] = [[] for _ in range(count)]
    for position, user_id in enumerate(sorted_user_ids):
        shards[shard_of[position]].append(user_id)
    return shards


def assign_users(sorted_user_ids: Sequence[str], count: int, partition: str = MODULO,
                 costs: Sequence[float] | None = None) -> list[list[str]]:
    """Every shard's users, shard i's at index i; `costs` only for `balanced` (None: one unit each)."""
    if partition == MODULO:
        return [users_of_shard(sorted_user_ids, ShardSpec(index, count)) for index in range(count)]
    if partition == BALANCED:
        return balanced_assignment(sorted_user_ids, [1] * len(sorted_user_ids) if costs is None else costs, count)
    raise ValueError(f"unknown partition {partition!r}; one of {', '.join(PARTITIONS)}")
