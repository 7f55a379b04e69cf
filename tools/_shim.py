"""The tools/ shims' one job: run a shardrun console script with this project's Python.

`python tools/<command>.py ARGS` is `<command> ARGS`. When the Python that runs the shim cannot
import shardrun (for example the system's python) and the project's .venv exists, the shim runs
itself again with .venv's Python; otherwise it says how to set up.
"""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
VENV_PYTHONS = (REPO / ".venv" / "bin" / "python", REPO / ".venv" / "Scripts" / "python.exe")
REEXEC_MARK = "SHARDRUN_SHIM_REEXEC"


def run(module: str, script: str) -> None:
    try:
        entry = importlib.import_module("shardrun.entry")
    except ImportError:
        _reexec(script)
        return
    raise SystemExit(entry.run(module, sys.argv[1:]))


def _reexec(script: str) -> None:
    venv_python = next((p for p in VENV_PYTHONS if p.is_file()), None)
    if venv_python is None or os.environ.get(REEXEC_MARK):
        print(
            f"error: shardrun is not installed for {sys.executable}"
            + (" nor importable by the project's .venv" if venv_python else " and the project has no .venv yet")
            + ". Set up first with ./run_tests.sh or tools/bootstrap.sh (they create .venv), then run this"
            " command again.",
            file=sys.stderr,
        )
        raise SystemExit(2)
    command = [str(venv_python), script, *sys.argv[1:]]
    env = {**os.environ, REEXEC_MARK: "1"}
    if os.name == "posix":
        os.execve(command[0], command, env)  # the same process: signals and the exit code are the command's
    raise SystemExit(subprocess.call(command, env=env))
