"""A private SLURM cluster for the tests: real munged, slurmctld and slurmd (the Debian packages' binaries,
see tools/install_slurm.sh) started in a temporary dir with their own munge key, config, ports, state and
logs, so that several clusters (several test sessions) can run on one machine. One node (`localhost`) by
default; with `nodes=` several, each slurmd in network and UTS namespaces of its own (its own address and
hostname: tests/node_network.py), as separate hosts sharing one filesystem.

    cluster = SlurmCluster().start()        # or: with SlurmCluster() as cluster: ...
    job = cluster.sbatch("--array=0-3", "--output=/dev/null", script="#!/bin/bash\\n...")
    cluster.wait_until_gone([job], timeout=60)
    cluster.stop()

Every command run through the cluster (`cluster.command`, `cluster.sbatch`, ...) or with `cluster.env`
talks to this cluster only (SLURM_CONF). `stop()` stops what `start()` started, by PID, and kills the
jobs' leftover processes it can identify (those whose environment names this cluster's config, and
their descendants). docs/dev/CLUSTER_TESTS.md describes the set-up and the behaviour measured on it.
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

from node_network import NodeNetwork, NodeNetworkError

PACKAGES = "munge slurm-wlm slurmctld slurmd slurm-client"
DAEMONS = ("munged", "slurmctld", "slurmd")
COMMANDS = ("mungekey", "munge", *DAEMONS, "sbatch", "squeue", "scontrol", "scancel", "sinfo")
# What a multi-node cluster needs besides (packages iproute2, util-linux, hostname).
NODE_COMMANDS = ("ip", "nsenter", "unshare", "hostname")
# Daemons live in sbin, which a non-root PATH often lacks.
SEARCH_PATH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/local/sbin", "/usr/sbin", "/sbin"])
# A job in one of these states is over: its processes are gone (COMPLETING is not among them).
ENDED_STATES = frozenset({"COMPLETED", "CANCELLED", "FAILED", "TIMEOUT", "NODE_FAIL", "PREEMPTED", "BOOT_FAIL",
                          "DEADLINE", "OUT_OF_MEMORY", "REVOKED", "SPECIAL_EXIT"})
# Variables of an enclosing SLURM job or of the user's shell that would steer our commands elsewhere.
FOREIGN_PREFIXES = ("SLURM_", "SBATCH_", "SALLOC_", "SRUN_", "SQUEUE_", "SINFO_", "SCANCEL_", "SCONTROL_")
# A multi-node cluster's slurmctld runs under this hostname (SlurmctldHost), in a UTS namespace of its own.
CONTROLLER_HOST = "ctl"

_running: list[SlurmCluster] = []


def running_clusters() -> list[SlurmCluster]:
    """The clusters this process started and has not stopped yet."""
    return list(_running)


class SlurmClusterError(RuntimeError):
    """The cluster could not be started (or a command failed); the message holds the reason and the logs' tails."""


def missing_commands(names: Iterable[str] = COMMANDS) -> list[str]:
    return [name for name in names if shutil.which(name, path=SEARCH_PATH) is None]


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


def stop_order(daemon: str) -> int:
    """slurmctld first (no new job starts), then the slurmd, munged last (the others talk to it to the end)."""
    return {"slurmctld": 0, "munged": 2}.get(daemon, 1)


def with_hostname(hostname: str) -> list[str]:
    """The command prefix that runs a program in a new UTS namespace whose hostname is `hostname` (the
    program keeps the PID the prefix started with: unshare and sh exec)."""
    return ["unshare", "--uts", "sh", "-c", 'hostname "$0" && exec "$@"', hostname]


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
    """One slurmctld and one slurmd (node `localhost`) with their own munged, in a fresh temporary dir; or,
    with `nodes`, one slurmd per node, each in its own network and UTS namespace (its own address and
    hostname, tests/node_network.py), on this one machine.

    cpus, real_memory_mb: the node's size (default: this machine's usable CPUs and total memory; the
        config is trusted over the hardware, SlurmdParameters=config_overrides, so a test may ask for more).
    nodes: node name -> CPUs, for a multi-node cluster (needs root), e.g. {"nodea": 3, "nodeb": 1}. SLURM fills
        the nodes in the order given (Weight 1, 2, ...); each has real_memory_mb (default: the machine's
        memory shared equally). cpus must not be given with it.
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
                 shared: bool = False, nodes: dict[str, int] | None = None):
        if nodes is not None and (cpus is not None or not nodes or "localhost" in nodes):
            raise ValueError("nodes= gives every node's CPUs (not cpus=), and names at least one node, not localhost")
        self.multi_node = nodes is not None
        self.nodes = dict(nodes) if nodes else {"localhost": cpus or len(os.sched_getaffinity(0))}
        self.cpus = next(iter(self.nodes.values()))
        self.real_memory_mb = real_memory_mb or psutil.virtual_memory().total // 2**20 // len(self.nodes)
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
        self.network = NodeNetwork(self.name[1:], list(self.nodes)) if self.multi_node else None

    # --- start --------------------------------------------------------------------------------------

    def start(self, attempts: int = 3) -> SlurmCluster:
        """Start munged, slurmctld and slurmd (one per node); return once `sinfo` shows every node idle. A
        port taken between choosing it and binding it (another session) is retried with new ports."""
        missing = missing_commands()
        if missing:
            raise SlurmClusterError(
                f"SLURM is not installed here: {', '.join(missing)} not found. Install it with "
                f"tools/install_slurm.sh as root (Debian/Ubuntu packages: {PACKAGES}).")
        missing = missing_commands(NODE_COMMANDS) if self.multi_node else []
        if missing:
            raise SlurmClusterError(
                f"a multi-node cluster needs {', '.join(missing)}, not found. Install them with "
                f"tools/install_slurm.sh as root (Debian/Ubuntu packages: iproute2, util-linux, hostname).")
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
        if self.network is not None:
            try:
                self.network.create()
            except NodeNetworkError as error:
                raise SlurmClusterError(f"the nodes' network could not be made: {error}") from error
            for node in self.nodes:
                (self.root / "spool" / node).mkdir(mode=0o755)

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
        if self.network is None:
            self._spawn("slurmctld", ["slurmctld", "-D"])
            self._spawn("slurmd", ["slurmd", "-D", "-N", "localhost"])
        else:
            # slurmctld starts only where the hostname is SlurmctldHost's: its own UTS namespace, named ctl.
            # It stays in this network namespace, where the test's commands reach it on the bridge's address.
            self._spawn("slurmctld", [*with_hostname(CONTROLLER_HOST), "slurmctld", "-D"])
            for node in self.nodes:
                self._spawn(f"slurmd-{node}", [*self.network.enter(node), *with_hostname(node),
                                                "slurmd", "-D", "-N", node])
        self._wait(lambda: set(self.node_states().values()) == {"idle"}, "every node to be idle")
        self.startup_seconds = time.monotonic() - began
        return self

    @property
    def munge_socket(self) -> Path:
        return self.root / "munge" / "munge.socket"

    def config_text(self) -> str:
        r = self.root
        auth = f"socket={self.munge_socket}" + (f",cred_expire={self.cred_expire}" if self.cred_expire else "")
        memory = max(1, min(self.real_memory_mb // cpus for cpus in self.nodes.values()))
        if self.network is None:
            controller = "localhost(127.0.0.1)"
            slurmd_files = f"""\
SlurmdSpoolDir={r / 'spool'}
SlurmdPidFile={r / 'run/slurmd.pid'}
SlurmdLogFile={r / 'log/slurmd.log'}"""
            node_lines = (f"NodeName=localhost NodeAddr=127.0.0.1 CPUs={self.cpus} RealMemory={self.real_memory_mb} "
                          "State=UNKNOWN")
        else:
            controller = f"{CONTROLLER_HOST}({self.network.gateway})"
            # %n: the node's name, so that each slurmd has its own spool, pid file and log.
            slurmd_files = f"""\
SlurmdSpoolDir={r / 'spool/%n'}
SlurmdPidFile={r / 'run/slurmd-%n.pid'}
SlurmdLogFile={r / 'log/slurmd-%n.log'}"""
            node_lines = "\n".join(
                f"NodeName={node} NodeHostname={node} NodeAddr={self.network.addresses[node]} CPUs={cpus} "
                f"RealMemory={self.real_memory_mb} Weight={weight} State=UNKNOWN"
                for weight, (node, cpus) in enumerate(self.nodes.items(), start=1))
        return f"""\
# Written by tests/slurm_cluster.py for one test session's private cluster.
ClusterName={self.name}
SlurmctldHost={controller}
SlurmctldPort={self.ctld_port}
SlurmdPort={self.slurmd_port}
SlurmUser={self.user}
SlurmdUser={self.user}
AuthType=auth/munge
CredType=cred/munge
AuthInfo={auth}
StateSaveLocation={r / 'state'}
SlurmctldPidFile={r / 'run/slurmctld.pid'}
SlurmctldLogFile={r / 'log/slurmctld.log'}
{slurmd_files}
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
DefMemPerCPU={memory}
SlurmdParameters=config_overrides
ReturnToService=2
KillWait={self.kill_wait}
MinJobAge=300
MaxArraySize={self.max_array_size}
{node_lines}
PartitionName={self.partition} Nodes={','.join(self.nodes)} Default=YES MaxTime=INFINITE State=UP
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

    def node_states(self) -> dict[str, str]:
        """Each node's state as sinfo says it (idle, mixed, allocated, down*, drained, ...)."""
        lines = self.command("sinfo", "--noheader", "--Node", "--format=%N %T", timeout=10).stdout.split("\n")
        return dict(line.split(maxsplit=1) for line in lines if line.strip())

    def node_state(self, node: str | None = None) -> str:
        """A node's state (default: the first node's)."""
        return self.node_states()[node or next(iter(self.nodes))]

    def node(self, node: str | None = None) -> dict[str, str]:
        """`scontrol show node`'s record of a node (default: the first): State, CPUTot, CPUAlloc, RealMemory, ..."""
        (record,) = parse_records(self.scontrol("--oneliner", "show", "node", node or next(iter(self.nodes))))
        return record

    def jobs(self, job_id: str) -> list[dict[str, str]]:
        """`scontrol show job`'s records of a job id (an array's id gives one record per element, and one for
        its elements still pending together); [] once SLURM has forgotten the job (MinJobAge=300 s)."""
        for _ in range(3):  # a loaded slurmctld may fail a query without a word: asked again
            result = self.command("scontrol", "--oneliner", "show", "job", str(job_id), check=False)
            if result.returncode == 0 or result.stderr.strip():
                break
            time.sleep(1)
        if result.returncode != 0:
            if "Invalid job id" in result.stderr:
                return []
            raise SlurmClusterError(f"scontrol show job {job_id}: exit {result.returncode}: {result.stderr.strip()}")
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
        """Processes of this cluster's jobs that can be identified, the daemons excepted: every process whose
        environment names this cluster's slurm.conf (slurmstepd inherits it from slurmd; SLURM sets it in a
        job's environment) and their descendants; in a multi-node cluster also every process living in a
        node's network namespace (node_pids). Never this process nor its ancestors."""
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
        for node in self.nodes if self.network is not None else ():
            found |= self.node_pids(node)
        return found - spared - self.daemon_pids()

    def node_pids(self, node: str) -> set[int]:
        """A multi-node cluster's node: every process in its network namespace now (its slurmd, the
        slurmstepd and programs of its jobs, whatever they started)."""
        if self.network is None:
            raise SlurmClusterError("node_pids: a single-node cluster's jobs share the machine's namespaces")
        return self.network.pids(node)

    def kill_node(self, node: str) -> set[int]:
        """The node fails, as in a power cut: its slurmd and every process of its jobs (node_pids) stop at
        once and die, none of them telling slurmctld anything (an admin marks the node down, or
        SlurmdTimeout does). Each is frozen (SIGSTOP) before any is killed: a slurmstepd that saw its
        program die first would report the job ended (FAILED) and SLURM would not requeue it.
        Returns the PIDs killed."""
        frozen: dict[int, psutil.Process] = {}
        while fresh := self.node_pids(node) - frozen.keys():  # a process may fork until frozen: look again
            for pid in fresh:
                try:
                    process = psutil.Process(pid)
                    process.suspend()
                except psutil.NoSuchProcess:
                    continue
                frozen[pid] = process
        for process in frozen.values():
            with contextlib.suppress(psutil.NoSuchProcess):
                process.kill()
        slurmd = self.processes[f"slurmd-{node}"]
        slurmd.wait(timeout=10)
        psutil.wait_procs([process for pid, process in frozen.items() if pid != slurmd.pid], timeout=10)
        return set(frozen)

    def stop(self, timeout: float = 15.0) -> None:
        """Stop the cluster: cancel its jobs (politely, bounded), SIGTERM each daemon by its PID and SIGKILL
        what is left after `timeout`, SIGKILL the jobs' leftover processes (see job_pids), remove the nodes'
        namespaces and links and the dir. Safe to call again, and after a start that failed half way."""
        controller = self.processes.get("slurmctld")
        if self.root is not None and controller is not None and controller.poll() is None and any(
                name.startswith("slurmd") and process.poll() is None for name, process in self.processes.items()):
            with contextlib.suppress(SlurmClusterError, TimeoutError, subprocess.TimeoutExpired):
                self.cancel_all(timeout=self.kill_wait + 5)
        for name in sorted(self.processes, key=stop_order):
            process = self.processes[name]
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for process in self.processes.values():
            try:
                process.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if self.conf is not None:
            leftovers = []
            for pid in self.job_pids():
                with contextlib.suppress(psutil.Error):
                    process = psutil.Process(pid)
                    process.kill()
                    leftovers.append(process)
            psutil.wait_procs(leftovers, timeout=10)
        try:
            if self.network is not None:
                self.network.remove()
        finally:
            if self in _running:
                _running.remove(self)
            if self.root is not None and not self.keep_files:
                shutil.rmtree(self.root, ignore_errors=True)
            self.root = None
            self.processes = {}

    def __enter__(self) -> SlurmCluster:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()


def started_for_test(cluster: SlurmCluster) -> SlurmCluster:
    """The cluster started, or the asking test failed (never skipped) with the reason and the daemons' logs."""
    import pytest

    try:
        return cluster.start()
    except SlurmClusterError as error:
        kind = f"{len(cluster.nodes)}-node " if len(cluster.nodes) > 1 else ""
        pytest.fail(f"no {kind}SLURM cluster for this test: {error}", pytrace=False)
