#!/usr/bin/env python3
"""`python tools/stop_shards.py ARGS` runs `stop_shards ARGS` (a thin shim; see tools/_shim.py)."""

from _shim import run

if __name__ == "__main__":
    run("stop_shards", __file__)
