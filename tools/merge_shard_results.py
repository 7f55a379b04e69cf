#!/usr/bin/env python3
"""`python tools/merge_shard_results.py ARGS` runs `merge_shard_results ARGS` (a thin shim; see tools/_shim.py)."""

from _shim import run

if __name__ == "__main__":
    run("merge_shard_results", __file__)
