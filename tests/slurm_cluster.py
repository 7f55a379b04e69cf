"""A private single-node SLURM cluster for the tests: real munged, slurmctld and slurmd (the Debian
packages' binaries, see tools/install_slurm.sh) started in a temporary dir with their own munge key,
config, ports, state and logs, so that several clusters (several test sessions) can run on one machine.

    cluster = SlurmCluster().start()        # or: with SlurmCluster() as cluster: ...
    job = cluster.sbatch("--array=0-3", "--output=/dev/null", script="#!/bin/bash\\n...")
    cluster.wait_until_gone([job], timeout=60)
    cluster.stop()

Every command run through the cluster (`cluster.command`, `cluster.sbatch`, ...) or with `cluster.env`
talks to this cluster only (SLURM_CONF). `stop()` stops what `start()` started, by PID, and kills the
jobs' leftover processes it can identify (those whose environment names this cluster's config, and
their descendants). docs/CLUSTER_TESTS.md describes the set-up and the behaviour measured on it.
"""

from __future__ import annotations

import contextlib
import ctypes
import getpass
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path

import psutil

PACKAGES = "munge slurm-wlm slurmctld slurmd slurm-client"
DAEMONS = ("munged", "slurmctld", "slurmd")
COMMANDS = ("mungekey", "munge", *DAEMONS, "sbatch", "squeue", "scontrol", "scancel", "sinfo")
# Daemons live in sbin, which a non-root PATH often lacks.
SEARCH_PATH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/local/sbin", "/usr/sbin", "/sbin"])
# A job in one of these states is over: its processes are gone (COMPLETING is not among them).
ENDED_STATES = frozenset({"COMPLETED", "CANCELLED", "FAILED", "TIMEOUT", "NODE_FAIL", "PREEMPTED", "BOOT_FAIL",
                          "DEADLINE", "OUT_OF_MEMORY", "REVOKED", "SPECIAL_EXIT"})
# Variables of an enclosing SLURM job or of the user's shell that would steer our commands elsewhere.
FOREIGN_PREFIXES = ("SLURM_", "SBATCH_", "SALLOC_", "SRUN_", "SQUEUE_", "SINFO_", "SCANCEL_", "SCONTROL_")

_running: list[SlurmCluster] = []


def running_clusters() -> list[SlurmCluster]:
    """The clusters this process started and has not stopped yet."""
    return list(_running)


class SlurmClusterError(RuntimeError):
    """The cluster could not be started (or a command failed); the message holds the reason and the logs' tails."""


def missing_commands() -> list[str]:
    return [name for name in COMMANDS if shutil.which(name, path=SEARCH_PATH) is None]


def _free_port() -> int:
    """A TCP port free right now on every address (the daemons bind to all of them)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("", 0))
        return probe.getsockname()[1]


def _die_with_parent() -> None:
    """In the daemon's process, before exec: its own session (a Ctrl-C in the terminal reaches pytest, whose
    teardown stops the cluster), and SIGTERM when pytest dies without a teardown (Linux)."""
    os.setsid()
    with contextlib.suppress(Exception):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def parse_records(text: str) -> list[dict[str, str]]:
    """`scontrol -o show job|node` output: one record a line, `Key=Value` fields separated by spaces."""
    records = []
    for line in text.splitlines():
        if not line.strip():
            continue
        record = {}
        for field in re.split(r" +(?=[A-Za-z][\w/:]*=)", line.strip()):
            key, _, value = field.partition("=")
            record[key] = value
        records.append(record)
    return records


class SlurmCluster:
    """One slurmctld and one slurmd (node `localhost`) with their own munged, in a fresh temporary dir.

    cpus, real_memory_mb: the node's size (default: this machine's usable CPUs and total memory; the
        config is trusted over the hardware, SlurmdParameters=config_overrides, so a test may ask for more).
    max_array_size: MaxArraySize (the largest array index is one less).
    kill_wait: KillWait, seconds between SIGTERM and SIGKILL at a time limit or a cancel (SLURM's default: 30).
    cred_expire: AuthInfo's cred_expire; also how long a requeued job waits before it may start again
        (None: SLURM's default, 120 s; its minimum is 5).
    extra_config: lines appended to slurm.conf (they override the lines above them).
    shared: used by many tests (the session fixture `slurm_cluster`); tests/conftest.py stops a cluster a
        test started for itself and left running, never a shared one.
    """

    def __init__(self, *, cpus: int | None = None, real_memory_mb: int | None = None, max_array_size: int = 1001,
                 kill_wait: int = 5, cred_expire: int | None = None, partition: str = "debug",
                 extra_config: str = "", start_timeout: float = 60.0, keep_files: bool = False,
                 shared: bool = False):
        self.cpus = cpus or len(os.sched_getaffinity(0))
        self.real_memory_mb = real_memory_mb or psutil.virtual_memory().total // 2**20
        self.max_array_size = max_array_size
        self.kill_wait = kill_wait
        self.cred_expire = cred_expire
        self.partition = partition
        self.extra_config = extra_config
        self.start_timeout = start_timeout
        self.keep_files = keep_files
        self.shared = shared
        self.name = "t" + secrets.token_hex(5)  # ClusterName: lower case, unique
        self.user = getpass.getuser()
        self.root: Path | None = None
        self.conf: Path | None = None
        self.ctld_port = self.slurmd_port = 0
        self.env: dict[str, str] = {}
        self.processes: dict[str, subprocess.Popen] = {}
        self.startup_seconds: float | None = None

    # --- start --------------------------------------------------------------------------------------

    def start(self, attempts: int = 3) -> SlurmCluster:
        """Start munged, slurmctld and slurmd; return once `sinfo` shows the node idle. A port taken
        between choosing it and binding it (another session) is retried with new ports."""
        missing = missing_commands()
        if missing:
            raise SlurmClusterError(
                f"SLURM is not installed here: {', '.join(missing)} not found. Install it with "
                f"tools/install_slurm.sh as root (Debian/Ubuntu packages: {PACKAGES}).")
        for attempt in range(1, attempts + 1):
            try:
                return self._start_once()
            except SlurmClusterError as error:
                port_taken = "Address already in use" in str(error)
                self.stop()
                if not port_taken or attempt == attempts:
                    raise
        raise AssertionError("unreachable")

    def _start_once(self) -> SlurmCluster:
        began = time.monotonic()
        self.root = Path(tempfile.mkdtemp(prefix="shardrun-slurm-"))
        # munged wants its socket's dir searchable by everyone and its key private.
        self.root.chmod(0o755)
        for sub in ("munge", "log", "state", "spool", "run"):
            (self.root / sub).mkdir(mode=0o755)
        _running.append(self)
        self.env = {key: value for key, value in os.environ.items() if not key.startswith(FOREIGN_PREFIXES)}
        self.env["PATH"] = SEARCH_PATH
        self.env["SLURM_CONF"] = str(self.root / "slurm.conf")
        self.conf = self.root / "slurm.conf"

        munge = self.root / "munge"
        subprocess.run(["mungekey", "--create", f"--keyfile={munge / 'munge.key'}"], env=self.env,
                       check=True, capture_output=True, timeout=30)
        self._spawn("munged", ["munged", "--foreground", f"--socket={self.munge_socket}",
                               f"--key-file={munge / 'munge.key'}", f"--pid-file={munge / 'munged.pid'}",
                               f"--seed-file={munge / 'munged.seed'}", f"--log-file={self.root / 'log/munged.log'}"])
        self._wait(lambda: self.munge_socket.exists(), "munged's socket")

        self.ctld_port, self.slurmd_port = _free_port(), _free_port()
        while self.slurmd_port == self.ctld_port:
            self.slurmd_port = _free_port()
        self.conf.write_text(self.config_text())
        self._spawn("slurmctld", ["slurmctld", "-D"])
        self._spawn("slurmd", ["slurmd", "-D", "-N", "localhost"])
        self._wait(lambda: self.node_state() == "idle", "the node to be idle")
        self.startup_seconds = time.monotonic() - began
        return self

    @property
    def munge_socket(self) -> Path:
        return self.root / "munge" / "munge.socket"

    def config_text(self) -> str:
        r = self.root
        auth = f"socket={self.munge_socket}" + (f",cred_expire={self.cred_expire}" if self.cred_expire else "")
        return f"""\
# Written by tests/slurm_cluster.py for one test session's private cluster.
ClusterName={self.name}
SlurmctldHost=localhost(127.0.0.1)
SlurmctldPort={self.ctld_port}
SlurmdPort={self.slurmd_port}
SlurmUser={self.user}
SlurmdUser={self.user}
AuthType=auth/munge
CredType=cred/munge
AuthInfo={auth}
StateSaveLocation={r / 'state'}
SlurmdSpoolDir={r / 'spool'}
SlurmctldPidFile={r / 'run/slurmctld.pid'}
SlurmdPidFile={r / 'run/slurmd.pid'}
SlurmctldLogFile={r / 'log/slurmctld.log'}
SlurmdLogFile={r / 'log/slurmd.log'}
# No cgroups, no accounting: what a container or a CI machine allows.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
MpiDefault=none
SwitchType=switch/none
# Schedule at once: a requeued job whose begin time passed waits for the main loop (sched_interval,
# 60 s by default) and a finished job's successor for batch_sched_delay (3 s by default).
SchedulerType=sched/backfill
SchedulerParameters=batch_sched_delay=0,sched_interval=2,sched_min_interval=100000,bf_interval=1
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU_Memory
DefMemPerCPU={max(1, self.real_memory_mb // self.cpus)}
SlurmdParameters=config_overrides
ReturnToService=2
KillWait={self.kill_wait}
MinJobAge=300
MaxArraySize={self.max_array_size}
NodeName=localhost NodeAddr=127.0.0.1 CPUs={self.cpus} RealMemory={self.real_memory_mb} State=UNKNOWN
PartitionName={self.partition} Nodes=localhost Default=YES MaxTime=INFINITE State=UP
{self.extra_config}
"""

    def _spawn(self, name: str, argv: list[str]) -> None:
        out = open(self.root / "log" / f"{name}.out", "wb")  # noqa: SIM115 (the child holds it)
        try:
            self.processes[name] = subprocess.Popen(argv, env=self.env, cwd=self.root, stdin=subprocess.DEVNULL,
                                                    stdout=out, stderr=subprocess.STDOUT,
                                                    preexec_fn=_die_with_parent)
        finally:
            out.close()

    def _wait(self, ready, what: str) -> None:
        deadline = time.monotonic() + self.start_timeout
        while True:
            for name, process in self.processes.items():
                if process.poll() is not None:
                    raise SlurmClusterError(f"{name} exited with status {process.returncode} while waiting for "
                                            f"{what}\n{self.log_tail()}")
            with contextlib.suppress(SlurmClusterError, subprocess.TimeoutExpired):
                if ready():
                    return
            if time.monotonic() > deadline:
                raise SlurmClusterError(f"no {what} after {self.start_timeout:.0f} s\n{self.log_tail()}")
            time.sleep(0.1)

    def log_tail(self, lines: int = 25) -> str:
        """The last lines of every daemon's log and output, for an error message."""
        if self.root is None:
            return ""
        parts = []
        for path in sorted((self.root / "log").glob("*")):
            text = path.read_text(errors="replace").splitlines()[-lines:]
            if text:
                parts.append(f"--- {path.name} (last {len(text)} lines)\n" + "\n".join(text))
        return "\n".join(parts)

    # --- commands -----------------------------------------------------------------------------------

    def command(self, *argv: str, check: bool = True, timeout: float = 60, input: str | None = None,
                cwd: str | Path | None = None) -> subprocess.CompletedProcess:
        """Run a SLURM command against this cluster; with check, a non-zero exit raises SlurmClusterError."""
        result = subprocess.run(list(argv), env=self.env, capture_output=True, text=True, timeout=timeout,
                                input=input, cwd=cwd)
        if check and result.returncode != 0:
            raise SlurmClusterError(f"{' '.join(argv)} exited {result.returncode}: {result.stderr.strip()}")
        return result

    def sbatch(self, *args: str, script: str | None = None, cwd: str | Path | None = None) -> str:
        """Submit; return the job id (for an array, the array's id). The script is given on stdin, or by
        `--wrap=...` or a path among args."""
        result = self.command("sbatch", "--parsable", *args, input=script, cwd=cwd)
        return result.stdout.strip().split(";")[0]

    def squeue(self, *args: str) -> str:
        return self.command("squeue", *args).stdout

    def scontrol(self, *args: str) -> str:
        return self.command("scontrol", *args).stdout

    def scancel(self, *args: str) -> None:
        self.command("scancel", *args)

    def sinfo(self, *args: str) -> str:
        return self.command("sinfo", *args).stdout

    def node_state(self) -> str:
        # sinfo --Node lists the node once per partition it is in (extra_config may add partitions).
        states = set(self.command("sinfo", "--noheader", "--Node", "--format=%T", timeout=10).stdout.split())
        return states.pop() if len(states) == 1 else " ".join(sorted(states))

    def node(self) -> dict[str, str]:
        """`scontrol show node localhost`'s record (State, CPUTot, CPUAlloc, RealMemory, ...)."""
        (record,) = parse_records(self.scontrol("--oneliner", "show", "node", "localhost"))
        return record

    def jobs(self, job_id: str) -> list[dict[str, str]]:
        """`scontrol show job`'s records of a job id (an array's id gives one record per element, and one for
        its elements still pending together); [] once SLURM has forgotten the job (MinJobAge=300 s)."""
        result = self.command("scontrol", "--oneliner", "show", "job", str(job_id), check=False)
        if result.returncode != 0:
            if "Invalid job id" in result.stderr:
                return []
            raise SlurmClusterError(f"scontrol show job {job_id}: {result.stderr.strip()}")
        return parse_records(result.stdout)

    def job(self, job_id: str) -> dict[str, str]:
        """The one record of a job or of an array element (`<array id>_<index>`)."""
        records = self.jobs(job_id)
        if len(records) != 1:
            raise SlurmClusterError(f"job {job_id} has {len(records)} records, not one")
        return records[0]

    def state(self, job_id: str) -> str:
        return self.job(job_id)["JobState"]

    def active(self, job_ids: Iterable[str]) -> list[str]:
        """Of these jobs (or arrays, or elements), the records still pending, running or completing."""
        left = []
        for job_id in job_ids:
            for record in self.jobs(job_id):
                if record.get("JobState") not in ENDED_STATES:
                    task = record.get("ArrayTaskId")
                    left.append(f"{record['ArrayJobId']}_{task}" if task else record["JobId"])
        return left

    def queued_job_ids(self) -> set[str]:
        """Every job and array element the queue holds now (pending, running, completing, ...)."""
        return set(self.command("squeue", "--noheader", "--array", "--format=%i", timeout=30).stdout.split())

    def wait_until_gone(self, job_ids: Iterable[str], timeout: float = 120.0, poll: float = 0.5) -> None:
        """Wait until every listed job (arrays: every element) has ended and its processes are gone."""
        job_ids = [str(job_id) for job_id in job_ids]
        deadline = time.monotonic() + timeout
        while left := self.active(job_ids):
            if time.monotonic() > deadline:
                raise TimeoutError(f"jobs {', '.join(left)} still active after {timeout:.0f} s\n"
                                   f"{self.squeue('--array')}")
            time.sleep(poll)

    def wait_for_state(self, job_id: str, states: str | Iterable[str], timeout: float = 60.0,
                       poll: float = 0.2) -> dict[str, str]:
        """Wait until one job (or element) is in one of the states (e.g. RUNNING); return its record."""
        wanted = {states} if isinstance(states, str) else set(states)
        deadline = time.monotonic() + timeout
        while True:
            record = self.job(job_id)
            if record["JobState"] in wanted:
                return record
            if time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} is {record['JobState']} ({record.get('Reason')}), not "
                                   f"{'/'.join(sorted(wanted))}, after {timeout:.0f} s")
            time.sleep(poll)

    def start_now(self, job_id: str) -> None:
        """Let a pending job start at once: after `scontrol requeue` a job may not start again before its
        begin time (cred_expire + 1 s later, 121 s by default); this moves it to now. (`scontrol release`
        does not: it only lifts a hold.)"""
        self.scontrol("update", f"JobId={job_id}", "StartTime=now")

    def cancel_all(self, timeout: float = 60.0) -> None:
        """Cancel every job of the cluster and wait until they are gone."""
        ids = self.queued_job_ids()
        if ids:
            self.scancel(*sorted(ids))
            self.wait_until_gone(ids, timeout=timeout)

    # --- processes and stop -------------------------------------------------------------------------

    def daemon_pids(self) -> set[int]:
        """The daemons this cluster started and every process below them (slurmctld's slurmscriptd,
        slurmd's short-lived forks; a job's slurmstepd is reparented away from slurmd, see job_pids)."""
        pids = set()
        for process in self.processes.values():
            if process.poll() is None:
                pids.add(process.pid)
                with contextlib.suppress(psutil.Error):
                    pids.update(child.pid for child in psutil.Process(process.pid).children(recursive=True))
        return pids

    def job_pids(self) -> set[int]:
        """Processes of this cluster's jobs that can be identified: every process whose environment
        names this cluster's slurm.conf (slurmstepd inherits it from slurmd; SLURM sets it in a job's
        environment), and their descendants. Never this process nor its ancestors."""
        marker = f"SLURM_CONF={self.conf}".encode()
        spared = {os.getpid(), *(parent.pid for parent in psutil.Process().parents())}
        found = set()
        for process in psutil.process_iter():
            if process.pid in spared:
                continue
            try:
                with open(f"/proc/{process.pid}/environ", "rb") as environ:
                    if marker + b"\0" not in environ.read() + b"\0":
                        continue
                found.add(process.pid)
                found.update(child.pid for child in process.children(recursive=True))
            except (OSError, psutil.Error):
                continue
        return found - spared

    def stop(self, timeout: float = 15.0) -> None:
        """Stop the cluster: cancel its jobs (politely, bounded), SIGTERM each daemon by its PID and SIGKILL
        what is left after `timeout`, SIGKILL the jobs' leftover processes (see job_pids), remove the dir."""
        if self.root is None:
            return
        if all(process.poll() is None for process in self.processes.values()) and "slurmd" in self.processes:
            with contextlib.suppress(SlurmClusterError, TimeoutError, subprocess.TimeoutExpired):
                self.cancel_all(timeout=self.kill_wait + 5)
        for name in ("slurmctld", "slurmd", "munged"):
            process = self.processes.get(name)
            if process is not None and process.poll() is None:
                process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for process in self.processes.values():
            try:
                process.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        leftovers = []
        for pid in self.job_pids():
            with contextlib.suppress(psutil.Error):
                process = psutil.Process(pid)
                process.kill()
                leftovers.append(process)
        psutil.wait_procs(leftovers, timeout=10)
        if self in _running:
            _running.remove(self)
        if not self.keep_files:
            shutil.rmtree(self.root, ignore_errors=True)
        self.root = None
        self.processes = {}

    def __enter__(self) -> SlurmCluster:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()
