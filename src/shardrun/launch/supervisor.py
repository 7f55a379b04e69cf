"""The launcher's supervisor, pure: every decision about the shards (start, restart, stop, kill, CPU
throttle) is made in `Supervisor.handle`, so it is tested without processes; launcher.py acts on them."""

from __future__ import annotations

import signal
from dataclasses import dataclass, field

from shardrun.errors import EXIT_CRASH, EXIT_INTERRUPTED, EXIT_OK, EXIT_PREEMPTED
from shardrun.launch.policies import CpuThrottle, RestartPolicy, describe_exit, died_abnormally, shards_to_start
from shardrun.partition import ShardSpec
from shardrun.states import ShardPhase

# --- events: what the launcher observed ---------------------------------------------------------


@dataclass(frozen=True)
class ShardExited:
    """A shard's process ended: its exit code (negative: that signal) and its hs_err crash reports."""

    index: int
    code: int
    hs_err_files: tuple[str, ...] = ()


@dataclass(frozen=True)
class Tick:
    now: float  # a monotonic clock, in seconds


@dataclass(frozen=True)
class StopRequested:
    signal_name: str  # e.g. "SIGINT", or why the launcher stops itself
    now: float


@dataclass(frozen=True)
class CpuReading:
    """CPU use since the last reading, in percent of the run's CPUs: all programs' and the shards'."""

    cpus_percent: float
    run_percent: float

    def document(self) -> dict[str, float]:
        return {"cpus_percent": round(self.cpus_percent, 1), "run_percent": round(self.run_percent, 1)}


Event = ShardExited | Tick | StopRequested | CpuReading

# --- actions: what the launcher must do ---------------------------------------------------------


@dataclass(frozen=True)
class ShardAction:
    index: int


@dataclass(frozen=True)
class Start(ShardAction):
    xmx: str
    restart: bool = False  # a restart resumes its dir


class Suspend(ShardAction):
    """SIGSTOP: the CPUs are busier than --cpu-limit."""


class Resume(ShardAction):
    """SIGCONT: one more shard fits under --cpu-limit, or no other runs."""


@dataclass(frozen=True)
class Terminate(ShardAction):
    """SIGTERM: finish the user in flight and stop; `wake`: SIGCONT too, a stopped process cannot drain."""

    wake: bool = False


class Kill(ShardAction):
    """SIGKILL: the --grace period is over."""


@dataclass(frozen=True)
class RecordDeath(ShardAction):
    """Write the abnormal death into the shard's status.json (if the shard wrote one)."""

    code: int
    description: str
    hs_err_files: tuple[str, ...] = ()


@dataclass(frozen=True)
class Say:
    message: str  # a line for the person who runs the launcher


Action = Start | Suspend | Resume | Terminate | Kill | RecordDeath | Say

# --- state --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SupervisorPolicy:
    """The launch options the supervisor decides by."""

    shards: int
    xmx: str
    restart: RestartPolicy = RestartPolicy()
    max_parallel: int | None = None
    grace_seconds: float = 120.0
    throttle: CpuThrottle | None = None


@dataclass
class SlotState:
    """What the supervisor knows of one shard (its part of launcher.json, without the pid)."""

    index: int
    xmx: str
    phase: ShardPhase = ShardPhase.WAITING
    starts: int = 0
    start_order: int = 0  # the launcher's count of starts at this shard's latest start: the newest is suspended first
    restarts: int = 0
    exits: list[int] = field(default_factory=list)
    deaths: list[str] = field(default_factory=list)


def overall_exit(codes: dict[str, int]) -> int:
    """The launcher's exit: interrupted first, then any abnormal death, then the worst deliberate exit."""
    values = list(codes.values())
    if EXIT_INTERRUPTED in values or EXIT_PREEMPTED in values:
        return EXIT_INTERRUPTED
    if any(died_abnormally(code) for code in values):
        return EXIT_CRASH
    return max(values, default=EXIT_OK)


class Supervisor:
    """The shards' phases and stop state; `handle(event)` changes them and returns the actions, in order."""

    def __init__(self, policy: SupervisorPolicy):
        self.policy = policy
        self.slots = [SlotState(i, policy.xmx) for i in range(policy.shards)]
        self.stopping_since: float | None = None
        self.killed_after_grace = False
        self._starts = 0
        self.cpu: CpuReading | None = None  # the latest reading (--cpu-limit), for the progress line

    def spec(self, index: int) -> ShardSpec:
        return ShardSpec(index, self.policy.shards)

    @property
    def stopping(self) -> bool:
        return self.stopping_since is not None

    @property
    def finished(self) -> bool:
        """Every shard is done: the launcher's loop ends."""
        return all(slot.phase is ShardPhase.DONE for slot in self.slots)

    def alive(self) -> list[int]:
        """The shards whose process exists (running or suspended): the ones whose exit to watch."""
        return [slot.index for slot in self.slots if slot.phase.alive]

    def others_running(self, index: int) -> bool:
        return any(slot.phase is ShardPhase.RUNNING and slot.index != index for slot in self.slots)

    def exit_codes(self) -> dict[str, int]:
        """Each shard's last exit code; a shard that never exited counts as interrupted."""
        return {str(self.spec(slot.index)): slot.exits[-1] if slot.exits else EXIT_INTERRUPTED for slot in self.slots}

    def handle(self, event: Event) -> list[Action]:
        if isinstance(event, ShardExited):
            return self._on_exit(event)
        if isinstance(event, Tick):
            return self._on_tick(event.now)
        if isinstance(event, StopRequested):
            return self._on_stop(event)
        return self._on_cpu(event)

    def _on_exit(self, event: ShardExited) -> list[Action]:
        slot, code = self.slots[event.index], event.code
        if not slot.phase.alive:
            return []  # not ours to watch (a duplicate report)
        spec = self.spec(slot.index)
        slot.exits.append(code)
        actions: list[Action] = []
        if died_abnormally(code):
            hs_err = event.hs_err_files
            if self.killed_after_grace and code == -signal.SIGKILL:
                description = f"killed by the launcher after the --grace period of {self.policy.grace_seconds:.0f} s"
            else:
                description = describe_exit(code) + (f"; JVM crash report: {', '.join(hs_err)}" if hs_err else "")
            slot.deaths.append(description)
            actions += [Say(f"shard {spec} {description}"), RecordDeath(slot.index, code, description, hs_err)]
        restart = self.policy.restart
        if not self.stopping and restart.should_restart(code, slot.restarts):
            slot.xmx = restart.heap_for_restart(self.policy.xmx, slot.restarts)  # from the first heap: F, F^2, ...
            slot.restarts += 1
            slot.phase = ShardPhase.WAITING
            actions.append(Say(f"restarting shard {spec} by resuming its dir (restart {slot.restarts} of"
                               f" {restart.max_restarts}, -Xmx{slot.xmx})"))
        else:
            slot.phase = ShardPhase.DONE
        return actions

    def suspended(self) -> list[int]:
        """The shards the CPU throttle holds suspended, in shard order."""
        return [slot.index for slot in self.slots if slot.phase is ShardPhase.SUSPENDED]

    def _on_tick(self, now: float) -> list[Action]:
        if self.stopping_since is not None:
            if self.killed_after_grace or now - self.stopping_since <= self.policy.grace_seconds:
                return []
            self.killed_after_grace = True
            return [Say(f"grace period of {self.policy.grace_seconds:.0f} s over: killing the remaining shards"),
                    *(Kill(index) for index in self.alive())]
        suspended = self.suspended()
        if suspended:
            # Never none running: the first suspended shard resumes before any waiting one starts.
            if any(slot.phase is ShardPhase.RUNNING for slot in self.slots):
                return []
            self.slots[suspended[0]].phase = ShardPhase.RUNNING
            return [Resume(suspended[0])]
        waiting = [slot.index for slot in self.slots if slot.phase is ShardPhase.WAITING]
        actions: list[Action] = []
        for index in shards_to_start(waiting, len(self.alive()), self.policy.max_parallel):
            slot = self.slots[index]
            self._starts += 1
            slot.phase = ShardPhase.RUNNING
            slot.starts += 1
            slot.start_order = self._starts
            actions.append(Start(index, slot.xmx, restart=slot.restarts > 0))
        return actions

    def _on_stop(self, event: StopRequested) -> list[Action]:
        if self.stopping_since is None:
            self.stopping_since = event.now
            actions: list[Action] = [Say(f"{event.signal_name}: asking every shard to finish its current user and"
                                         f" stop (again to stop at once)")]
        else:
            actions = [Say(f"{event.signal_name} again: stopping every shard now")]
        for slot in self.slots:
            if slot.phase is ShardPhase.WAITING:
                slot.phase = ShardPhase.DONE
            elif slot.phase.alive:
                actions.append(Terminate(slot.index, wake=slot.phase is ShardPhase.SUSPENDED))
                slot.phase = ShardPhase.RUNNING
        return actions

    def _on_cpu(self, reading: CpuReading) -> list[Action]:
        throttle = self.policy.throttle
        if throttle is None or self.stopping:
            return []
        self.cpu = reading
        running = sorted((s for s in self.slots if s.phase is ShardPhase.RUNNING), key=lambda s: s.start_order)
        decision = throttle.decide(reading.cpus_percent, reading.run_percent, [s.index for s in running],
                                   self.suspended())
        if decision is None:
            return []
        what, index = decision
        if what == "suspend":
            self.slots[index].phase = ShardPhase.SUSPENDED
            return [Suspend(index)]
        self.slots[index].phase = ShardPhase.RUNNING
        return [Resume(index)]
