"""A job's program for tests/scheduler/test_slurm_cluster.py: it appends JSON lines to OUT, one when it starts (its pid,
its parent's, SLURM's variables) and one for every signal it receives (with the seconds since it started).

    python slurm_probe.py OUT [--exit-on SIGTERM ...] [--seconds S]

It runs until it is killed, until S seconds have passed, or until a signal named by --exit-on arrives.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time

WATCHED = (signal.SIGUSR1, signal.SIGUSR2, signal.SIGTERM, signal.SIGCONT, signal.SIGINT, signal.SIGHUP)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("--exit-on", action="append", default=[])
    parser.add_argument("--seconds", type=float, default=3600.0)
    args = parser.parse_args()
    began = time.monotonic()

    def record(event: dict) -> None:
        event.update(pid=os.getpid(), wall=time.time(), after=round(time.monotonic() - began, 3))
        with open(args.out, "a") as out:
            out.write(json.dumps(event) + "\n")

    def on_signal(number, frame) -> None:
        name = signal.Signals(number).name
        record({"event": "signal", "signal": name})
        if name in args.exit_on:
            sys.exit(0)

    for number in WATCHED:
        signal.signal(number, on_signal)
    record({"event": "start", "ppid": os.getppid(),
            "env": {key: value for key, value in os.environ.items() if key.startswith("SLURM_")}})
    while time.monotonic() - began < args.seconds:
        time.sleep(0.05)
    record({"event": "end"})


if __name__ == "__main__":
    main()
