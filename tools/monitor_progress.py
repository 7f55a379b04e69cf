#!/usr/bin/env python3
"""`python tools/monitor_progress.py ARGS` runs `monitor_progress ARGS` (a thin shim; see tools/_shim.py)."""

from _shim import run

if __name__ == "__main__":
    run("monitor_progress", __file__)
