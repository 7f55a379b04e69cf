"""The launcher's supervisor, with no process: events in, actions out.

The first tests feed events to the pure `Supervisor` and assert its actions; the last ones drive the
`Launcher` loop with `FakePort`, a test double of the process port (the way pytest-xdist tests its
schedulers with fake nodes). The real processes are tested in test_launcher.py and tests/faults/
"""

from __future__ import annotations

import json
import signal
from dataclasses import replace
from pathlib import Path

import pytest

from shardrun.config import JvmConfig, OutputConfig, load_config
from shardrun.launch import report
from shardrun.launch.admission import native_overhead_bytes
from shardrun.launch.launcher import Launcher
from shardrun.launch.options import LaunchOptions
from shardrun.launch.policies import CpuThrottle, RestartPolicy
from shardrun.launch.processes import Exited
from shardrun.launch.supervisor import (
    CpuReading,
    Kill,
    RecordDeath,
    Resume,
    Say,
    ShardExited,
    Start,
    StopRequested,
    Supervisor,
    SupervisorPolicy,
    Suspend,
    Terminate,
    Tick,
    overall_exit,
)
from shardrun.states import ShardPhase
from shardrun.storage.paths import RunPaths
from shardrun.units import MIB

REPO = Path(__file__).resolve().parents[2]
SIGKILL = -signal.SIGKILL


def supervisor(shards=2, xmx="1g", restarts=0, factor=1.0, max_parallel=None, grace=120.0, cpu_limit=None):
    return Supervisor(SupervisorPolicy(
        shards=shards, xmx=xmx, restart=RestartPolicy(max_restarts=restarts, heap_factor=factor),
        max_parallel=max_parallel, grace_seconds=grace, throttle=CpuThrottle(cpu_limit) if cpu_limit else None,
    ))


def phases(sup: Supervisor) -> list[str]:
    return [slot.phase.value for slot in sup.slots]


def said(actions) -> list[str]:
    return [action.message for action in actions if isinstance(action, Say)]


# --- starts -------------------------------------------------------------------------------------


def test_max_parallel_starts_shards_in_order_as_others_end():
    sup = supervisor(shards=4, max_parallel=2)
    assert sup.handle(Tick(0)) == [Start(0, "1g"), Start(1, "1g")]
    assert phases(sup) == ["running", "running", "waiting", "waiting"]
    assert sup.handle(Tick(1)) == []  # two running: nothing fits
    assert sup.handle(ShardExited(1, 0)) == []
    assert sup.handle(Tick(2)) == [Start(2, "1g")]
    assert sup.handle(ShardExited(0, 0)) == [] and sup.handle(ShardExited(2, 1)) == []
    assert sup.handle(Tick(3)) == [Start(3, "1g")]
    assert not sup.finished
    sup.handle(ShardExited(3, 0))
    assert sup.finished and phases(sup) == ["done"] * 4
    assert [slot.starts for slot in sup.slots] == [1, 1, 1, 1]
    assert sup.exit_codes() == {"0/4": 0, "1/4": 0, "2/4": 1, "3/4": 0}


def test_without_max_parallel_every_shard_starts_at_once():
    sup = supervisor(shards=3)
    assert sup.handle(Tick(0)) == [Start(0, "1g"), Start(1, "1g"), Start(2, "1g")]


def test_an_exit_of_a_shard_that_is_not_running_changes_nothing():
    sup = supervisor(shards=2, restarts=1)
    assert sup.handle(ShardExited(0, SIGKILL)) == []
    assert phases(sup) == ["waiting", "waiting"] and sup.slots[0].exits == []


# --- deaths and restarts ------------------------------------------------------------------------


def test_a_sigkill_is_recorded_as_the_oom_killer_and_restarted_with_a_larger_heap_up_to_the_limit():
    sup = supervisor(shards=2, restarts=2, factor=1.5)
    sup.handle(Tick(0))
    actions = sup.handle(ShardExited(1, SIGKILL))
    description = "killed by SIGKILL (likely the OOM killer: lower K or jvm.xmx, then resume)"
    assert actions == [
        Say(f"shard 1/2 {description}"),
        RecordDeath(1, SIGKILL, description, ()),
        Say("restarting shard 1/2 by resuming its dir (restart 1 of 2, -Xmx1536m)"),
    ]
    assert sup.slots[1].phase is ShardPhase.WAITING
    assert sup.handle(Tick(1)) == [Start(1, "1536m", restart=True)]

    actions = sup.handle(ShardExited(1, SIGKILL))
    # F times the previous heap: 1g x 1.5 x 1.5 (before, the grown heap was scaled by F^2 again: 3456m)
    assert said(actions)[-1] == "restarting shard 1/2 by resuming its dir (restart 2 of 2, -Xmx2304m)"
    assert sup.handle(Tick(2)) == [Start(1, "2304m", restart=True)]

    actions = sup.handle(ShardExited(1, SIGKILL))  # the third death: no restart left
    assert said(actions) == [f"shard 1/2 {description}"]
    assert sup.slots[1].phase is ShardPhase.DONE and sup.handle(Tick(3)) == []
    slot = sup.slots[1]
    assert (slot.starts, slot.restarts, slot.xmx, slot.exits) == (3, 2, "2304m", [SIGKILL] * 3)
    assert slot.deaths == [description] * 3
    sup.handle(ShardExited(0, 0))
    assert sup.finished and overall_exit(sup.exit_codes()) == 70


def test_a_jvm_crash_names_its_report():
    sup = supervisor(shards=1, restarts=1)
    sup.handle(Tick(0))
    report = "/runs/r/shard-0-of-1/hs_err_pid42.log"
    actions = sup.handle(ShardExited(0, -signal.SIGABRT, (report,)))
    description = ("killed by SIGABRT (a JVM crash: see hs_err_pid*.log in the shard dir);"
                   f" JVM crash report: {report}")
    assert actions[:2] == [Say(f"shard 0/1 {description}"), RecordDeath(0, -signal.SIGABRT, description, (report,))]
    assert sup.handle(Tick(1)) == [Start(0, "1g", restart=True)]  # no heap factor: the same heap


@pytest.mark.parametrize("code", [0, 1, 2, 3, 4, 5, 6])
def test_deliberate_exits_are_never_restarted_nor_recorded_as_deaths(code):
    sup = supervisor(shards=1, restarts=5, factor=2.0)
    sup.handle(Tick(0))
    assert sup.handle(ShardExited(0, code)) == []
    assert sup.handle(Tick(1)) == []
    assert sup.finished and sup.slots[0].deaths == [] and sup.slots[0].restarts == 0


def test_an_unexpected_error_exit_is_a_death_and_restarted():
    sup = supervisor(shards=1, restarts=1)
    sup.handle(Tick(0))
    actions = sup.handle(ShardExited(0, 70))
    assert isinstance(actions[1], RecordDeath) and "crashed with exit code 70" in actions[1].description
    assert sup.handle(Tick(1)) == [Start(0, "1g", restart=True)]


# --- stopping -----------------------------------------------------------------------------------


def test_a_stop_request_drops_waiting_shards_and_asks_the_others_to_drain():
    sup = supervisor(shards=3, max_parallel=2, restarts=3, cpu_limit=60)
    sup.handle(Tick(0))
    assert sup.handle(CpuReading(90, 90)) == [Suspend(1)]
    actions = sup.handle(StopRequested("SIGINT", 10.0))
    assert actions == [
        Say("SIGINT: asking every shard to finish its current user and stop (again to stop at once)"),
        Terminate(0, wake=False),
        Terminate(1, wake=True),  # suspended: continued so that it can drain
    ]
    assert phases(sup) == ["running", "running", "done"]
    assert sup.handle(Tick(11)) == []  # nothing starts any more
    assert sup.handle(CpuReading(99, 99)) == []  # nor is suspended
    assert sup.handle(ShardExited(0, 3)) == []
    actions = sup.handle(ShardExited(1, 70))  # a death while stopping: recorded, not restarted
    assert [type(a) for a in actions] == [Say, RecordDeath] and sup.finished
    assert overall_exit(sup.exit_codes()) == 3  # shard 2 never ran: interrupted


def test_a_second_stop_request_asks_again_and_keeps_the_first_grace_deadline():
    sup = supervisor(shards=2, grace=30)
    sup.handle(Tick(0))
    sup.handle(StopRequested("SIGTERM", 5.0))
    assert sup.handle(StopRequested("SIGINT", 20.0)) == [
        Say("SIGINT again: stopping every shard now"), Terminate(0), Terminate(1)]
    assert sup.stopping_since == 5.0
    assert sup.handle(Tick(35.5))[1:] == [Kill(0), Kill(1)]


def test_after_the_grace_period_the_remaining_shards_are_killed_once_and_not_restarted():
    sup = supervisor(shards=2, restarts=3, grace=120)
    sup.handle(Tick(0))
    sup.handle(StopRequested("SIGTERM", 100.0))
    assert sup.handle(ShardExited(0, 3)) == []
    assert sup.handle(Tick(220.0)) == []  # exactly the grace period: not over yet
    assert sup.handle(Tick(220.5)) == [Say("grace period of 120 s over: killing the remaining shards"), Kill(1)]
    assert sup.handle(Tick(300.0)) == []  # once
    actions = sup.handle(ShardExited(1, SIGKILL))
    description = "killed by the launcher after the --grace period of 120 s"
    assert actions == [Say(f"shard 1/2 {description}"), RecordDeath(1, SIGKILL, description, ())]
    assert sup.finished and sup.slots[1].restarts == 0
    assert overall_exit(sup.exit_codes()) == 3  # interrupted wins over the death


def test_a_sigkill_before_the_grace_period_is_still_the_oom_killer():
    sup = supervisor(shards=1, grace=120)
    sup.handle(Tick(0))
    sup.handle(StopRequested("SIGTERM", 0.0))
    assert "likely the OOM killer" in sup.handle(ShardExited(0, SIGKILL))[0].message


# --- the CPU throttle ---------------------------------------------------------------------------


def test_cpu_throttle_suspends_the_newest_down_to_one_and_resumes_the_first_when_one_more_fits():
    sup = supervisor(shards=3, cpu_limit=60, restarts=1)
    sup.handle(Tick(0))  # started 0, 1, 2 in that order
    sup.handle(ShardExited(0, SIGKILL))
    sup.handle(Tick(1))  # 0 restarted: now the newest
    assert sup.handle(CpuReading(75, 75)) == [Suspend(0)]
    assert sup.handle(CpuReading(75, 50)) == [Suspend(2)]
    assert phases(sup) == ["suspended", "running", "suspended"]
    assert sup.handle(CpuReading(99, 25)) == []  # the last running shard is never suspended
    assert sup.handle(CpuReading(40, 25)) == []  # 40% + the 25% of one more shard: above 60%
    assert sup.handle(CpuReading(30, 25)) == [Resume(0)]  # 30% + 25% fits
    assert sup.handle(CpuReading(50, 50)) == []  # two shards of 25%: 50% + 25% does not fit
    assert sup.handle(CpuReading(30, 30)) == [Resume(2)]
    assert sup.handle(CpuReading(45, 45)) == []
    assert phases(sup) == ["running", "running", "running"]
    assert sup.handle(CpuReading(100, 75)) == [Suspend(0)]


def feed(supervisor: Supervisor, events) -> list:
    """Every action for these events, in order."""
    return [action for event in events for action in supervisor.handle(event)]


def test_other_programs_load_slows_the_run_to_one_shard_but_never_stops_it():
    """The machine stays 100% busy with other programs' work: the shards are suspended down to one, and
    when that one ends, a suspended one takes its place at once, without waiting for a reading."""
    sup = supervisor(shards=3, cpu_limit=60)
    sup.handle(Tick(0))
    busy = CpuReading(100, 30)
    assert feed(sup, [busy, busy, busy, busy]) == [Suspend(2), Suspend(1)]
    assert phases(sup) == ["running", "suspended", "suspended"]
    assert sup.handle(ShardExited(0, 0)) == []
    assert sup.handle(Tick(5)) == [Resume(1)]  # never none running: the first suspended one resumes
    assert sup.handle(busy) == []
    assert sup.handle(ShardExited(1, 0)) == [] and sup.handle(Tick(6)) == [Resume(2)]
    assert sup.handle(ShardExited(2, 0)) == [] and sup.finished
    assert overall_exit(sup.exit_codes()) == 0


def test_without_a_cpu_limit_readings_change_nothing():
    sup = supervisor(shards=2)
    sup.handle(Tick(0))
    assert sup.handle(CpuReading(100, 100)) == []


def test_a_suspended_shard_is_still_counted_by_max_parallel_and_resumes_before_waiting_shards_start():
    sup = supervisor(shards=4, max_parallel=2, restarts=1, cpu_limit=60)
    sup.handle(Tick(0))
    assert sup.handle(CpuReading(99, 99)) == [Suspend(1)]
    assert sup.handle(Tick(1)) == []
    assert sup.handle(CpuReading(99, 50)) == []  # shard 0 runs on alone
    sup.handle(ShardExited(0, SIGKILL))  # restarted, but behind the suspended shard
    assert sup.handle(Tick(2)) == [Resume(1)]
    assert phases(sup) == ["waiting", "running", "waiting", "waiting"]
    assert sup.handle(Tick(3)) == [Start(0, "1g", restart=True)]  # none suspended now: the restart takes the free place


def test_a_single_running_shard_is_never_suspended():
    sup = supervisor(shards=3, max_parallel=1, cpu_limit=60)
    sup.handle(Tick(0))
    assert sup.handle(CpuReading(100, 50)) == []
    assert phases(sup) == ["running", "waiting", "waiting"]


# --- the launcher's exit ------------------------------------------------------------------------


def test_overall_exit_prefers_interrupted_then_crash_then_the_worst_deliberate_exit():
    assert overall_exit({}) == 0
    assert overall_exit({"0/2": 0, "1/2": 1}) == 1
    assert overall_exit({"0/2": 0, "1/2": SIGKILL}) == 70
    assert overall_exit({"0/2": 3, "1/2": SIGKILL}) == 3
    assert overall_exit({"0/3": 0, "1/3": 5, "2/3": 1}) == 5


# --- the launcher's loop with a fake port -------------------------------------------------------


class FakePort:
    """A test double of the process port: no process; each started shard 'exits' with the next code
    scripted for it, `polls_alive` polls after its start."""

    def __init__(self, codes: dict[int, list[int]], polls_alive: int = 2):
        self.codes = {index: list(codes) for index, codes in codes.items()}
        self.polls_alive = polls_alive
        self.calls: list[tuple] = []
        self.live: dict[int, int] = {}  # index -> polls left
        self.pids: dict[int, int] = {}
        self.next_pid = 1000
        self.stopped: set[int] = set()  # suspended: a stopped process makes no progress

    def start(self, index, command, log_path):
        self.next_pid += 1
        self.pids[index] = self.next_pid
        self.live[index] = self.polls_alive
        self.calls.append(("start", index, command))
        return self.next_pid

    def poll(self):
        exits = []
        for index in sorted(self.live):
            if index in self.stopped:
                continue
            self.live[index] -= 1
            if self.live[index] <= 0 and self.codes.get(index):
                del self.live[index]
                exits.append(Exited(index, self.codes[index].pop(0), self.pids[index]))
        return exits

    def suspend(self, index):
        self.calls.append(("suspend", index))
        self.stopped.add(index)

    def resume(self, index):
        self.calls.append(("resume", index))
        self.stopped.discard(index)

    def terminate(self, index):
        self.calls.append(("terminate", index))
        self.codes[index] = [3]
        self.live[index] = 0

    def kill(self, index):
        self.calls.append(("kill", index))

    def pid(self, index):
        return self.pids.get(index)


def fake_launcher(tmp_path, port, outputs, cpu=CpuReading(0.0, 0.0), turns=10**5, **options) -> Launcher:
    """A launcher on a fake port and a fake clock (0.2 s a turn); `cpu` every reading; more than `turns`
    turns of its loop fail the test (a loop that would never end)."""
    config = load_config(REPO / "config" / "proposal.yaml")
    config = replace(config, jvm=JvmConfig(xms=None, xmx="1g", threads=1),
                     output=OutputConfig(root=tmp_path / "out", log_dir=tmp_path / "logs"))
    clock = [0.0]

    def sleep(seconds):
        clock[0] += seconds
        assert clock[0] < turns * seconds, "the launcher's loop did not end"

    run = RunPaths(tmp_path / "run")
    run.dir.mkdir()
    return Launcher(config, LaunchOptions(config_path=tmp_path / "c.yaml", **options), run, out=outputs.append,
                    cpu_reading=lambda: cpu, users_per_shard=[5] * options["shards"], port=port,
                    clock=lambda: clock[0], sleep=sleep)


def summary(launcher: Launcher) -> dict[str, int]:
    """The end-of-run lines (launch.report.summary) of a launcher whose loop has ended; the exit codes."""
    return report.summary(launcher.run, launcher.supervisor, launcher.views(), launcher.config.output.log_dir,
                          launcher.run.run_json.is_file(), launcher.out)


def test_the_launcher_performs_the_supervisors_restart_through_the_port(tmp_path):
    port = FakePort({0: [SIGKILL, 0], 1: [0]})
    outputs: list[str] = []
    launcher = fake_launcher(tmp_path, port, outputs, shards=2, max_parallel=1,
                             restart=RestartPolicy(max_restarts=1, heap_factor=1.5), shard_data_bytes=10 * MIB)
    launcher.wait()
    starts = [(call[1], call[2][call[2].index("--xmx") + 1]) for call in port.calls if call[0] == "start"]
    assert starts == [(0, "1g"), (0, "1536m"), (1, "1g")]  # the restart waits for its turn like any other
    assert "shard 0/2 killed by SIGKILL (likely the OOM killer: lower K or jvm.xmx, then resume)" in outputs
    assert "restarting shard 0/2 by resuming its dir (restart 1 of 1, -Xmx1536m)" in outputs
    doc = json.loads(launcher.run.launcher_json.read_text())
    assert doc["max_parallel"] == 1 and doc["cpu_limit"] is None
    assert doc["shards"][0] == {
        "shard": "0/2", "phase": "done", "pid": 1002, "users_total": 5, "starts": 2, "restarts": 1,
        "xmx": "1536m", "exits": [SIGKILL, 0], "deaths": [outputs[0].removeprefix("shard 0/2 ")],
        # the admission's count for a shard, at the heap of its restart
        "memory_budget_bytes": 1536 * MIB + native_overhead_bytes(1536 * MIB) + 10 * MIB,
    }
    assert doc["shards"][1]["exits"] == [0] and doc["shards"][1]["pid"] == 1003
    assert doc["shards"][1]["memory_budget_bytes"] == 1024 * MIB + native_overhead_bytes(1024 * MIB) + 10 * MIB
    assert summary(launcher) == {"0/2": 0, "1/2": 0}


def test_a_signal_to_the_launcher_reaches_every_running_shard_through_the_port(tmp_path):
    port = FakePort({}, polls_alive=10**6)  # shards that run until told to stop
    outputs: list[str] = []
    launcher = fake_launcher(tmp_path, port, outputs, shards=3, max_parallel=2)
    launcher.step()
    launcher.request_stop(signal.SIGTERM)
    launcher.wait()
    assert [call[:2] for call in port.calls] == [("start", 0), ("start", 1), ("terminate", 0), ("terminate", 1)]
    assert outputs[0] == "SIGTERM: asking every shard to finish its current user and stop (again to stop at once)"
    assert [s["phase"] for s in json.loads(launcher.run.launcher_json.read_text())["shards"]] == ["done"] * 3
    assert overall_exit(summary(launcher)) == 3


def test_under_other_programs_load_the_launcher_keeps_one_shard_running_and_says_why_the_others_wait(tmp_path):
    """Other programs keep the CPUs 100% busy: two of three shards are suspended, and the run goes on one
    shard at a time to its end, the line saying what is suspended and why instead of an ETA."""
    port = FakePort({0: [0], 1: [0], 2: [0]}, polls_alive=30)
    outputs: list[str] = []
    launcher = fake_launcher(tmp_path, port, outputs, cpu=CpuReading(100.0, 30.0), turns=1000, shards=3,
                             cpu_limit=60, cpu_check_every=0.2, progress_every=1.0)
    running = set()

    def perform(action, perform=launcher.perform):
        perform(action)
        if isinstance(action, (Start, Resume)):
            running.add(action.index)
        elif isinstance(action, Suspend):
            running.discard(action.index)

    def handle(event, handle=launcher.handle):
        if isinstance(event, ShardExited):
            running.discard(event.index)
        handle(event)
        if isinstance(event, Tick):  # each turn ends with a tick: by then a shard runs, unless all are done
            assert running or launcher.supervisor.finished, f"no shard running at {event}"

    launcher.perform, launcher.handle = perform, handle
    launcher.wait()
    assert summary(launcher) == {"0/3": 0, "1/3": 0, "2/3": 0}
    assert [call[:2] for call in port.calls if call[0] != "start"] == [
        ("suspend", 2), ("suspend", 1), ("resume", 1), ("resume", 2)]
    assert any(line.endswith("overall no ETA, shards 1/3, 2/3 suspended by --cpu-limit 60% (the CPUs are 100% busy:"
                             " this run 30%, other programs 70%)") for line in outputs), outputs
    assert json.loads(launcher.run.launcher_json.read_text())["cpu"] == {
        "limit": 60, "cpus_percent": 100.0, "run_percent": 30.0}
