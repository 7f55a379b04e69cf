#!/usr/bin/env python3
"""`python tools/launch_shards.py ARGS` runs `launch_shards ARGS` (a thin shim; see tools/_shim.py)."""

from _shim import run

if __name__ == "__main__":
    run("launch_shards", __file__)
