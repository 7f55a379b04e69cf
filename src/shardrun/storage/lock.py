"""At most one live process per shard dir, per run (its launcher) and per merge output.

An OS file lock, which the kernel drops however its process dies, so a SIGKILL never blocks a resume. Where
file locks do not work, a launcher or a merge runs unguarded with a warning, and a shard dir takes a lease
file instead (SHARDRUN_LOCK: auto, flock or lease; each refuses a dir the other holds). The lease (O_EXCL
create, mtime heartbeat) is stale when, on the same host, its holder's pid is gone; on another host, when
its scheduler job no longer runs there, else when its heartbeat is old. Takeover renames the lease aside
first, so two takers never both win: docs/SHARED_FILESYSTEMS.md.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import secrets
import signal
import socket
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from enum import Enum
from pathlib import Path
from typing import IO, Any

import psutil

from shardrun import platforms
from shardrun.errors import AlreadyRunning, EnvironmentProblem, LocksUnsupported, ShardLocked
from shardrun.storage.atomic import NEW_FILE_MODE, utc_now
from shardrun.storage.paths import ShardPaths
from shardrun.storage.periodic import Periodic

log = logging.getLogger(__name__)

LOCK_ENV = "SHARDRUN_LOCK"
LEASE_STALE_ENV = "SHARDRUN_LEASE_STALE_SECONDS"
DEFAULT_STALE_SECONDS = 120.0
TAKEN_ASIDE = ".taken-"  # `lease.taken-<token>`: a stale lease moved aside by the process taking over


def lock_mechanism(value: str | None) -> str:
    """SHARDRUN_LOCK's value (unset or empty: auto)."""
    chosen = (value or "auto").strip().lower()
    if chosen not in ("auto", "flock", "lease"):
        raise EnvironmentProblem(f"{LOCK_ENV}={value!r} is not a lock mechanism; set it to auto (the default),"
                                 " flock or lease, or unset it (docs/SHARED_FILESYSTEMS.md).")
    return chosen


def lease_stale_seconds(value: str | None) -> float:
    """SHARDRUN_LEASE_STALE_SECONDS's value (unset or empty: the default)."""
    if not value or not value.strip():
        return DEFAULT_STALE_SECONDS
    try:
        seconds = float(value)
    except ValueError:
        seconds = float("nan")
    if not seconds > 0 or seconds == float("inf"):
        raise EnvironmentProblem(f"{LEASE_STALE_ENV}={value!r} is not a number of seconds above 0; set it to, for"
                                 f" example, {DEFAULT_STALE_SECONDS:g}, or unset it.")
    return seconds


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


def name_holder(pid: int, host: str, since: str, job: SchedulerJob | None = None) -> str:
    """A holder as its lock file and every refusal name it."""
    fields: dict[str, Any] = {"pid": pid, "host": host, "since": since}
    if job:
        fields["job"] = job.describe()
    return json.dumps(fields)


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
        return cls(host=socket.gethostname(), pid=os.getpid(), boot_id=platforms.boot_id(),
                   started=process_started(os.getpid()), token=secrets.token_hex(8), acquired_at=utc_now(), job=job)

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


JobAsker = Callable[[SchedulerJob], JobSighting | None]  # None: the scheduler could not be asked


def scheduler_verdict(job: SchedulerJob, sighting: JobSighting, me: SchedulerJob | None = None) -> Judgement | None:
    """Whether the holder's run of `job` is over, by the scheduler; None if the answer settles nothing.

    Sound because SLURM ends or requeues a job only once its processes are gone (COMPLETING until then)."""
    on = f"{job.scheduler} job {job.element}"
    # another cluster's job ids mean other jobs; what runs on a lost node is unknown; a scheduler at an
    # earlier run than the holder's is not at the job the holder ran in
    if (sighting.cluster is None or sighting.cluster != job.cluster or sighting.node_lost
            or (sighting.restart is not None and sighting.restart < job.restart)):
        return None
    if sighting.activity is JobActivity.GONE:
        return Judgement(True, f"its {on} has ended ({sighting.state})")
    if sighting.activity is JobActivity.WAITING:
        return Judgement(True, f"its {on} is {sighting.state} (no longer running on {job.node})")
    restarted = (me is not None and (me.scheduler, me.cluster, me.element) == (job.scheduler, job.cluster, job.element)
                 and me.restart > job.restart)
    itself = f" (this process is that job's run {me.restart})" if restarted and me is not None else ""
    if sighting.nodes is not None and job.node not in sighting.nodes:
        where = ", ".join(sorted(sighting.nodes))
        return Judgement(True, f"its {on} now runs on {where}, not on {job.node}{itself}")
    if sighting.activity is JobActivity.RUNNING and sighting.restart is not None and sighting.restart > job.restart:
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
        holder = self.holder
        who = (name_holder(holder.pid, holder.host, holder.acquired_at, holder.job) if holder
               else "a lease file being written or left unreadable")
        return f"lease {who}, heartbeat {max(now - self.heartbeat, 0.0):.0f} s ago"


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
              ask_scheduler: JobAsker | None = None) -> Judgement:
    """Whether `me` may take over the lease in `state`, and why (the rule in the module docstring)."""
    holder = state.holder
    # same host and boot id (hosts sharing a name differ in boot id): only then is a pid meaningful here
    if holder is not None and (holder.host, holder.boot_id) == (me.host, me.boot_id):
        if process_alive(holder.pid, holder.started):
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


def inode_of(path: Path) -> tuple[int, int] | None:
    try:
        stat = os.stat(path)
    except FileNotFoundError:
        return None
    return stat.st_dev, stat.st_ino


def shard_in_use(shard_dir: Path, holder: str, lease_stale_after: float | None = None) -> ShardLocked:
    lease = "" if lease_stale_after is None else (
        " A lease is taken over when its process is gone (on the same host), at once when its scheduler says the"
        " holder's job no longer runs on the holder's node, or else when its heartbeat is older than"
        f" {lease_stale_after:g} s ({LEASE_STALE_ENV}).")
    return ShardLocked(f"shard dir {shard_dir} is in use by another process ({holder}); wait for it to end, or stop"
                       f" it, then resume. Two processes must never run one shard.{lease}")


class Lease:
    """One lease file, held from acquire() to release() and refreshed by its own thread.

    If another process takes it over, the refresher calls `on_lost` once: the holder must stop writing.
    """

    def __init__(self, path: Path, stale_after: float = DEFAULT_STALE_SECONDS, refresh_every: float | None = None,
                 on_lost: Callable[[], None] | None = None, job: SchedulerJob | None = None,
                 ask_scheduler: JobAsker | None = None):
        self.path = path
        self.stale_after = stale_after
        # several refreshes fit in one stale period, so one slow write on a busy filesystem is no loss
        refresh_every = refresh_every if refresh_every is not None else max(stale_after / 6, 0.05)
        self._on_lost = on_lost or (lambda: None)
        self._job = job
        self._ask_scheduler = ask_scheduler
        self._fd: int | None = None
        self._inode: tuple[int, int] | None = None
        self._refresher = Periodic("lease-heartbeat", refresh_every, self._refresh)
        self.holder: Holder | None = None
        self.took_over: str | None = None  # why the lease found here was stale, if one was taken over

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> None:
        """Create the lease, taking over a stale one; ShardLocked if a live process holds it."""
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
            for leftover in self.path.parent.glob(f"{self.path.name}{TAKEN_ASIDE}*"):
                leftover.unlink(missing_ok=True)
            self._refresher.start()
            return
        try:  # contended five times over: someone else keeps winning
            state = read_lease(self.path)
        except OSError:
            state = None
        raise self._in_use(state)

    def judge(self, me: Holder | None = None) -> tuple[LeaseState, Judgement] | None:
        """The lease here and why it is stale (None: there is none); ShardLocked if it is not stale."""
        me = me or Holder.this_process(self._job)
        try:
            state = read_lease(self.path)
        except FileNotFoundError:
            return None
        judgement = staleness(state, me, time.time(), self.stale_after, self._ask_scheduler)
        if not judgement.stale:
            raise self._in_use(state, judgement.why)
        return state, judgement

    def _in_use(self, state: LeaseState | None, why: str | None = None) -> ShardLocked:
        held = state.describe(time.time()) if state is not None else "a lease"
        return shard_in_use(self.path.parent, f"{held}; {why}" if why else held, self.stale_after)

    def _take_over_if_stale(self, me: Holder) -> None:
        judged = self.judge(me)
        if judged is None:
            return  # released (or moved aside by another taker) since our create: try again
        state, judgement = judged
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
            raise self._in_use(moved)
        aside.unlink(missing_ok=True)
        self.took_over = judgement.why
        log.warning("took over the lease %s of another process: %s", self.path, judgement.why)

    def _beat(self, fd: int) -> None:
        now = time.time()
        # through the fd, so a lease moved aside never touches a newer holder's file (Windows: by path)
        os.utime(fd if os.utime in os.supports_fd else self.path, (now, now))

    def _refresh(self) -> bool:
        """One heartbeat; False (and on_lost called) once the lease is no longer this holder's."""
        fd = self._fd
        if fd is None:
            return False
        try:
            if inode_of(self.path) == self._inode:
                self._beat(fd)
                return True
        # a brief network filesystem error must not end the heartbeat: the next beat retries
        except OSError as exc:
            log.warning("lease heartbeat could not touch %s: %s", self.path, exc)
            return True
        log.error("the lease %s was taken over by another process (this one's heartbeat was older than %g s, or"
                  " the file was removed): this process must stop writing the shard", self.path, self.stale_after)
        self._on_lost()
        return False

    def release(self) -> None:
        """Stop the heartbeat and remove the lease if it is still this holder's."""
        self._refresher.stop()
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            if inode_of(self.path) == self._inode:
                self.path.unlink(missing_ok=True)
        finally:
            os.close(fd)


def take_os_lock(path: Path, refusal: Callable[[str], Exception],
                 os_lock: Callable[[IO[Any]], None] | None = None) -> tuple[IO[Any], OSError | None]:
    """`path` open and locked, or open with the error where its filesystem has no locks; if another process
    holds it, raises `refusal(the holder's name)`."""
    for _ in range(5):
        handle = open(path, "a+", encoding="utf-8")  # noqa: SIM115 (held with the lock)
        try:
            # looked up at each call: a stand-in for a filesystem without locks replaces it
            (os_lock or platforms.lock_exclusive)(handle)
        except OSError as exc:
            if platforms.locks_unsupported(exc):
                return handle, exc
            with handle:
                if not platforms.lock_is_held(exc):
                    raise
                handle.seek(0)
                holder = handle.read().strip() or "a process that has not written its name yet"
            raise refusal(holder) from None
        # a holder that removes the file on release may have done so after our open: lock the path again
        held = os.fstat(handle.fileno())
        if inode_of(path) == (held.st_dev, held.st_ino):
            return handle, None
        handle.close()
    raise refusal("several processes contend for it right now")


def write_name(handle: IO[Any]) -> None:
    handle.seek(0)
    handle.truncate()
    handle.write(name_holder(os.getpid(), socket.gethostname(), utc_now()))
    handle.flush()


class ExclusiveFile:
    """One launcher per run, one merge per output: `path` held from acquire() to release(), refused at once;
    `what` and `fix` word the refusal."""

    def __init__(self, path: Path, what: str, fix: str):
        self.path = path
        self.what = what
        self.fix = fix
        self._handle: IO[Any] | None = None

    def acquire(self) -> None:
        handle, unsupported = take_os_lock(
            self.path, lambda holder: AlreadyRunning(f"{self.what} is already running ({holder}); {self.fix}"))
        if unsupported:
            log.warning("the filesystem of %s has no file locks: %s runs without the guard against a second one at"
                        " the same time", self.path, self.what)
            handle.close()
            return
        write_name(handle)
        self._handle = handle

    def release(self) -> None:
        """Remove the lock file (while still holding it, so no one takes a file about to vanish) and let go."""
        handle, self._handle = self._handle, None
        if handle is None:
            return
        try:
            self.path.unlink(missing_ok=True)
        except OSError as exc:
            # a lock file left behind is harmless: the next command takes it over
            log.debug("left the lock file %s: %s", self.path, exc.strerror or exc)
        finally:
            handle.close()


class ShardLock:
    """The shard dir's OS lock, with its lease where locks fail or lock one host only."""

    def __init__(self, paths: ShardPaths, mechanism: str | None = None, stale_after: float | None = None,
                 os_lock: Callable[[IO[Any]], None] | None = None, on_lease_lost: Callable[[], None] | None = None,
                 job: SchedulerJob | None = None, ask_scheduler: JobAsker | None = None):
        self._paths = paths
        self.mechanism = lock_mechanism(mechanism if mechanism is not None else os.environ.get(LOCK_ENV))
        self.stale_after = (stale_after if stale_after is not None
                            else lease_stale_seconds(os.environ.get(LEASE_STALE_ENV)))
        self._os_lock = os_lock
        # a lost lease: SIGTERM, so the shard drains and is resumed later
        self._lease = Lease(paths.lease, self.stale_after, job=job, ask_scheduler=ask_scheduler,
                            on_lost=on_lease_lost or (lambda: signal.raise_signal(signal.SIGTERM)))
        self._handle: IO[Any] | None = None

    @property
    def uses_lease(self) -> bool:
        return self._lease.held

    def acquire(self) -> None:
        handle, unsupported = take_os_lock(
            self._paths.lock, lambda holder: shard_in_use(self._paths.dir, holder), self._os_lock)
        try:
            if self._lease_needed(unsupported):
                self._lease.acquire()
            else:  # a lease's holder does not show in the OS lock
                self._lease.judge()
        except BaseException:
            handle.close()
            raise
        write_name(handle)
        self._handle = handle

    def _lease_needed(self, unsupported: OSError | None) -> bool:
        shard_dir = self._paths.dir
        if self.mechanism == "lease":
            return True
        if unsupported is not None:
            where = platforms.describe_filesystem(shard_dir)
            code = errno.errorcode.get(unsupported.errno or 0, unsupported.errno)
            if self.mechanism == "flock":
                raise LocksUnsupported(
                    f"file locks are not supported in shard dir {shard_dir} ({where}): flock failed with {code}"
                    f" ({unsupported.strerror}), and {LOCK_ENV}=flock asks for them. Unset {LOCK_ENV} (or set it to"
                    " lease) to use a lease file instead (docs/SHARED_FILESYSTEMS.md), or mount the filesystem with"
                    " locking (NFS: without nolock, with the lock manager running), then resume."
                )
            log.warning(
                "file locks are not supported in %s (%s: flock failed with %s, %s); using a lease file (%s) instead."
                " A shard killed on this host is taken over at once; one killed on another host at once when SLURM"
                " says its job no longer runs there, else once its heartbeat is %g s old (%s). Set %s=lease for every"
                " process of the run to choose it on purpose (docs/SHARED_FILESYSTEMS.md).",
                shard_dir, where, code, unsupported.strerror, self._paths.lease.name, self.stale_after,
                LEASE_STALE_ENV, LOCK_ENV)
            return True
        fs = platforms.filesystem_of(shard_dir)
        if self.mechanism == "auto" and fs is not None and platforms.flock_is_host_local(fs):
            log.warning(
                "%s is on %s, whose flock locks only this host (local_lock=%s): another host would get the same"
                " lock at once. Using a lease file (%s) as well. Set %s=lease for every process of the run to"
                " choose it on purpose (docs/SHARED_FILESYSTEMS.md).",
                shard_dir, fs.describe(), fs.option("local_lock"), self._paths.lease.name, LOCK_ENV)
            return True
        return False

    def release(self) -> None:
        self._lease.release()
        if self._handle is not None:
            self._handle.close()
            self._handle = None

    def __enter__(self) -> ShardLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
