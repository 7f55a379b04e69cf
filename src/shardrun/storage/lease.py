"""A lease file (O_EXCL create, mtime heartbeat): the shard lock where file locks do not work.

Staleness: same host, the holder's pid; another host, its scheduler job, else the heartbeat's age.
Takeover renames the lease aside first, so two takers never both win: docs/SHARED_FILESYSTEMS.md.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import socket
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from enum import Enum
from pathlib import Path
from typing import Any

import psutil

from shardrun.platforms import boot_id
from shardrun.storage.atomic import NEW_FILE_MODE, utc_now
from shardrun.storage.periodic import Periodic

log = logging.getLogger(__name__)

LEASE_STALE_ENV = "SHARDRUN_LEASE_STALE_SECONDS"
DEFAULT_STALE_SECONDS = 120.0
TAKEN_ASIDE = ".taken-"  # `lease.taken-<token>`: a stale lease moved aside by the process taking over


@dataclass(frozen=True)
class SchedulerJob:
    """The scheduler's job a holder runs in (scheduler/slurm.py makes it from the environment)."""

    scheduler: str  # "slurm"
    cluster: str | None  # the cluster's name: a job id means something on its own cluster only
    element: str  # the id naming this job alone: `<array job>_<task>` for an array element, else the job id
    restart: int  # which run of the job this is: 0, then one more at each requeue
    node: str  # the scheduler's name of the node the holder runs on

    def describe(self) -> str:
        return f"{self.scheduler} job {self.element} (run {self.restart}) on {self.node}"

    @classmethod
    def from_dict(cls, raw: Any) -> SchedulerJob | None:
        if not isinstance(raw, Mapping):
            return None
        try:
            cluster = raw.get("cluster")
            return cls(scheduler=str(raw["scheduler"]), cluster=None if cluster is None else str(cluster),
                       element=str(raw["element"]), restart=int(raw["restart"]), node=str(raw["node"]))
        except (KeyError, TypeError, ValueError):
            return None


@dataclass(frozen=True)
class Holder:
    """Who holds a lease."""

    host: str
    pid: int
    boot_id: str | None
    started: float | None  # the process's start time (psutil), which tells a reused pid apart
    token: str  # unique to one acquisition
    acquired_at: str
    job: SchedulerJob | None = None  # absent in leases written before it was recorded

    @classmethod
    def this_process(cls, job: SchedulerJob | None = None) -> Holder:
        return cls(host=socket.gethostname(), pid=os.getpid(), boot_id=boot_id(), started=process_started(os.getpid()),
                   token=secrets.token_hex(8), acquired_at=utc_now(), job=job)

    def same_machine(self, other: Holder) -> bool:
        """Same host and boot id (hosts sharing a name differ in boot id): only then is a pid meaningful here."""
        return self.host == other.host and self.boot_id == other.boot_id

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> Holder | None:
        try:
            raw = json.loads(text)
            return cls(host=str(raw["host"]), pid=int(raw["pid"]), boot_id=raw.get("boot_id"),
                       started=raw.get("started"), token=str(raw["token"]), acquired_at=str(raw.get("acquired_at")),
                       job=SchedulerJob.from_dict(raw.get("job")))
        except (ValueError, KeyError, TypeError):
            return None


class JobActivity(str, Enum):
    """What a scheduler's answer means for the processes of a job (scheduler/slurm.py maps its states)."""

    GONE = "gone"  # ended, or no longer known: no process of the job runs
    WAITING = "waiting"  # pending (again, after a requeue): no process of the job runs
    RUNNING = "running"  # the run `restart` runs on `nodes`
    PRESENT = "present"  # processes of the job may run on `nodes` (completing, suspended, ...), of whichever run


@dataclass(frozen=True)
class JobSighting:
    """A scheduler's answer, now, about one job (the one a lease's holder recorded)."""

    cluster: str | None  # the name of the cluster that answered
    activity: JobActivity
    state: str  # the scheduler's own word, for messages
    nodes: frozenset[str] | None = None  # where it runs (RUNNING, PRESENT); None: could not be told
    restart: int | None = None  # which run the scheduler is at; None: not said
    node_lost: bool = False  # the scheduler lost the holder's node (down, not responding): what runs there is unknown


@dataclass(frozen=True)
class Judgement:
    """Whether a lease may be taken over, and why (or why not)."""

    stale: bool
    why: str


JobAsker = Callable[[SchedulerJob], "JobSighting | None"]  # None: the scheduler could not be asked


def scheduler_verdict(job: SchedulerJob, sighting: JobSighting, me: SchedulerJob | None = None) -> Judgement | None:
    """Whether the holder's run of `job` is over, by the scheduler; None if the answer settles nothing.

    Sound because SLURM ends or requeues a job only once its processes are gone (COMPLETING until then)."""
    on = f"{job.scheduler} job {job.element}"
    if sighting.cluster is None or sighting.cluster != job.cluster:
        return None  # another cluster's job ids mean other jobs
    if sighting.node_lost:
        return None
    if sighting.restart is not None and sighting.restart < job.restart:
        return None  # the scheduler is at an earlier run than the holder's: not the job the holder ran in
    if sighting.activity is JobActivity.GONE:
        return Judgement(True, f"its {on} has ended ({sighting.state})")
    if sighting.activity is JobActivity.WAITING:
        return Judgement(True, f"its {on} is {sighting.state} (no longer running on {job.node})")
    on_its_node = sighting.nodes is None or job.node in sighting.nodes
    later_run = sighting.restart is not None and sighting.restart > job.restart
    restarted = (me is not None and (me.scheduler, me.cluster, me.element) == (job.scheduler, job.cluster, job.element)
                 and me.restart > job.restart)
    itself = f" (this process is that job's run {me.restart})" if restarted and me is not None else ""
    if not on_its_node:
        where = ", ".join(sorted(sighting.nodes or ()))
        return Judgement(True, f"its {on} now runs on {where}, not on {job.node}{itself}")
    if sighting.activity is JobActivity.RUNNING and later_run:
        return Judgement(True, f"its {on} is at run {sighting.restart} on {job.node}, after the holder's run"
                               f" {job.restart}{itself}")
    return Judgement(False, f"its {on} is {sighting.state} on {job.node} (run {job.restart}): the holder is alive"
                            " there, if perhaps paused")


@dataclass(frozen=True)
class LeaseState:
    """A lease file as a reader finds it."""

    holder: Holder | None  # None: empty or unreadable (being written right now, or its writer died mid-write)
    heartbeat: float  # the file's modification time (seconds since the epoch)
    inode: tuple[int, int]  # (st_dev, st_ino): which file this was, across a rename

    def describe(self, now: float) -> str:
        age = max(now - self.heartbeat, 0.0)
        if self.holder:
            fields = {"host": self.holder.host, "pid": self.holder.pid, "since": self.holder.acquired_at}
            if self.holder.job:
                fields["job"] = self.holder.job.describe()
            who = json.dumps(fields)
        else:
            who = "a lease file being written or left unreadable"
        return f"lease {who}, heartbeat {age:.0f} s ago"


def process_started(pid: int) -> float | None:
    try:
        return psutil.Process(pid).create_time()
    except (psutil.Error, OSError):
        return None


def process_alive(pid: int, started: float | None) -> bool:
    """True if `pid` runs here and started at `started` (not a reused pid); a zombie is gone."""
    try:
        process = psutil.Process(pid)
        if process.status() == psutil.STATUS_ZOMBIE:
            return False
        return started is None or abs(process.create_time() - started) < 0.5
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:
        return True


def staleness(state: LeaseState, me: Holder, now: float, stale_after: float,
              alive: Callable[[int, float | None], bool] = process_alive,
              ask_scheduler: JobAsker | None = None) -> Judgement:
    """Whether `me` may take over the lease in `state`, and why (the rule in the module docstring)."""
    holder = state.holder
    if holder is not None and holder.same_machine(me):
        if alive(holder.pid, holder.started):
            return Judgement(False, f"its process {holder.pid} runs on this host")
        return Judgement(True, f"its process {holder.pid} on this host is gone")
    if holder is not None and holder.job is not None and ask_scheduler is not None:
        sighting = ask_scheduler(holder.job)
        verdict = scheduler_verdict(holder.job, sighting, me.job) if sighting is not None else None
        if verdict is not None:
            return verdict
    age = now - state.heartbeat
    where = f"on host {holder.host}" if holder else "unreadable"
    if age > stale_after:
        return Judgement(True, f"its heartbeat ({where}) is {age:.0f} s old, older than {stale_after:g} s")
    return Judgement(False, f"its heartbeat ({where}) is {max(age, 0):.0f} s old, not older than {stale_after:g} s")


def read_lease(path: Path) -> LeaseState:
    """The lease at `path` (FileNotFoundError if there is none)."""
    with open(path, "rb") as handle:
        stat = os.fstat(handle.fileno())
        text = handle.read().decode("utf-8", "replace")
    return LeaseState(holder=Holder.from_json(text), heartbeat=stat.st_mtime, inode=(stat.st_dev, stat.st_ino))


class LeaseHeld(Exception):
    """Another live process holds the lease (`why`: what showed it alive, when known)."""

    def __init__(self, state: LeaseState | None, why: str | None = None):
        self.state = state
        self.why = why
        held = state.describe(time.time()) if state else "lease held"
        super().__init__(f"{held}: {why}" if why else held)


class Lease:
    """One lease file, held from acquire() to release() and refreshed by its own thread.

    If another process takes it over, the refresher calls `on_lost` once: the holder must stop writing.
    """

    def __init__(self, path: Path, stale_after: float = DEFAULT_STALE_SECONDS, refresh_every: float | None = None,
                 on_lost: Callable[[], None] | None = None, clock: Callable[[], float] = time.time,
                 alive: Callable[[int, float | None], bool] = process_alive, job: SchedulerJob | None = None,
                 ask_scheduler: JobAsker | None = None):
        self.path = path
        self.stale_after = stale_after
        # several refreshes fit in one stale period, so one slow write on a busy filesystem is no loss
        self.refresh_every = refresh_every if refresh_every is not None else max(stale_after / 6, 0.05)
        self._on_lost = on_lost or (lambda: None)
        self._clock = clock
        self._alive = alive
        self._job = job
        self._ask_scheduler = ask_scheduler
        self._fd: int | None = None
        self._inode: tuple[int, int] | None = None
        self._refresher = Periodic("lease-heartbeat", self.refresh_every, self._refresh_once)
        self.holder: Holder | None = None
        self.took_over: str | None = None  # why the lease found here was stale, if one was taken over

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> None:
        """Create the lease, taking over a stale one; LeaseHeld if a live process holds it."""
        me = Holder.this_process(self._job)
        for _ in range(5):
            try:
                fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, NEW_FILE_MODE)
            except FileExistsError:
                self._take_over_if_stale(me)
                continue
            try:
                os.write(fd, me.to_json().encode())
                os.fsync(fd)
                self._beat(fd)
                stat = os.fstat(fd)
            except BaseException:
                os.close(fd)
                self.path.unlink(missing_ok=True)
                raise
            self._fd, self._inode, self.holder = fd, (stat.st_dev, stat.st_ino), me
            self._remove_aside_leftovers()
            self._refresher.start()
            return
        raise LeaseHeld(self._state_or_none())  # contended five times over: someone else keeps winning

    def _take_over_if_stale(self, me: Holder) -> None:
        try:
            state = read_lease(self.path)
        except FileNotFoundError:
            return  # released (or moved aside by another taker) since our create: try again
        judgement = staleness(state, me, self._clock(), self.stale_after, self._alive, self._ask_scheduler)
        if not judgement.stale:
            raise LeaseHeld(state, judgement.why)
        aside = self.path.with_name(f"{self.path.name}{TAKEN_ASIDE}{me.token}")
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return  # another process moved it first; the O_EXCL create decides between us
        # a crash here leaves only the aside file, which the next holder removes
        try:
            moved = read_lease(aside)
        except FileNotFoundError:
            return  # the new holder already removed our aside file: the create will tell
        if moved.inode != state.inode or (moved.holder and state.holder and moved.holder.token != state.holder.token):
            # we moved a newer taker's lease: put it back and give way
            if not os.path.lexists(self.path):
                os.rename(aside, self.path)
            raise LeaseHeld(moved)
        aside.unlink(missing_ok=True)
        self.took_over = judgement.why
        log.warning("took over the lease %s of another process: %s", self.path, judgement.why)

    def _remove_aside_leftovers(self) -> None:
        for leftover in self.path.parent.glob(f"{self.path.name}{TAKEN_ASIDE}*"):
            leftover.unlink(missing_ok=True)

    def _state_or_none(self) -> LeaseState | None:
        try:
            return read_lease(self.path)
        except OSError:
            return None

    def _beat(self, fd: int) -> None:
        now = self._clock()
        # through the fd, so a lease moved aside never touches a newer holder's file
        if os.utime in os.supports_fd:
            os.utime(fd, (now, now))
        else:
            os.utime(self.path, (now, now))

    def still_mine(self) -> bool:
        """True if the file at the lease's path is the one this holder created."""
        try:
            stat = os.stat(self.path)
        except FileNotFoundError:
            return False
        return (stat.st_dev, stat.st_ino) == self._inode

    def refresh(self) -> bool:
        """One heartbeat; False (and on_lost called) if the lease is no longer this holder's."""
        fd = self._fd
        if fd is None:
            return False
        if not self.still_mine():
            log.error("the lease %s was taken over by another process (this one's heartbeat was older than"
                      " %g s, or the file was removed): this process must stop writing the shard", self.path,
                      self.stale_after)
            self._refresher.stop()
            self._on_lost()
            return False
        self._beat(fd)
        return True

    def _refresh_once(self) -> bool:
        try:
            return self.refresh()
        # a brief network filesystem error must not end the heartbeat: the next beat retries
        except OSError as exc:
            log.warning("lease heartbeat could not touch %s: %s", self.path, exc)
            return True

    def release(self) -> None:
        """Stop the heartbeat and remove the lease if it is still this holder's."""
        self._refresher.stop()
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            if self.still_mine():
                self.path.unlink(missing_ok=True)
        finally:
            os.close(fd)
