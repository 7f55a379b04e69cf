#!/usr/bin/env python3
"""`python tools/validate_outputs.py ARGS` runs `validate_outputs ARGS` (a thin shim; see tools/_shim.py)."""

from _shim import run

if __name__ == "__main__":
    run("validate_outputs", __file__)
