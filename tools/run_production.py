#!/usr/bin/env python3
"""`python tools/run_production.py ARGS` runs `run_production ARGS` (a thin shim; see tools/_shim.py)."""

from _shim import run

if __name__ == "__main__":
    run("run_production", __file__)
