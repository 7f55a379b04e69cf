"""A process that takes a shard dir's lease as a shard takes it (storage/lock.py's ShardLock with
SHARDRUN_LOCK=lease, told its SLURM job and how to ask SLURM by scheduler/slurm.py's lease_scheduler,
as shard/run.py does), for tests/scheduler/test_slurm_lease.py:

    python tests/lease_contender.py SHARD_DIR REPORT [--hold] [--pretend-host NAME]

It appends one JSON line to REPORT: {"outcome": "held" or "refused", "why": the takeover's reason or the
refusal, "pid", "host", "job"}; with --hold it then keeps the lease until it is killed (or loses it),
else it releases it and exits 0.

Stand-ins, each for what one machine cannot be:
- flock fails with ENOLCK, as on an NFS mount without lock support: on one machine, and across the
  two network namespaces of a two-node test cluster (one kernel), flock works across "hosts" and would
  refuse a newcomer by itself while the holder lives, so the lease's rule would not be what is tested.
- --pretend-host NAME: the host name its lease records ("{restart}" in it becomes SLURM_RESTART_COUNT, 0
  when unset): another host, for a cluster whose nodes all run on this host under its own name. Not
  needed where the nodes have host names of their own (the two-node cluster).
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import socket
import time
from pathlib import Path

from shardrun.errors import ShardLocked
from shardrun.scheduler.slurm import lease_scheduler
from shardrun.storage.lock import ShardLock
from shardrun.storage.paths import ShardPaths


def flock_on_a_filesystem_without_locks(handle) -> None:
    raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("shard_dir", type=Path)
    parser.add_argument("report", type=Path)
    parser.add_argument("--hold", action="store_true")
    parser.add_argument("--pretend-host")
    args = parser.parse_args()
    if args.pretend_host:
        name = args.pretend_host.replace("{restart}", os.environ.get("SLURM_RESTART_COUNT", "0"))
        socket.gethostname = lambda: name
    scheduler = lease_scheduler(os.environ)
    lock = ShardLock(ShardPaths(args.shard_dir), mechanism="lease", os_lock=flock_on_a_filesystem_without_locks,
                     **scheduler)
    job = scheduler["job"]
    report = {"pid": os.getpid(), "host": socket.gethostname(), "job": job.describe() if job else None}
    try:
        lock.acquire()
    except ShardLocked as refused:
        report |= {"outcome": "refused", "why": str(refused)}
    else:
        report |= {"outcome": "held", "why": lock._lease.took_over if lock._lease else None}
    with open(args.report, "a", encoding="utf-8") as out:
        out.write(json.dumps(report) + "\n")
    if report["outcome"] == "held":
        while args.hold:
            time.sleep(1)
        lock.release()


if __name__ == "__main__":
    main()
