"""The one command, `shardrun SUB` (the console script and `python -m shardrun`): its list of commands,
each command's own parser under its new name, the hints spelled as the command was started, and the
generated CLI reference kept equal to the parsers."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

from shardrun.cli import SUBCOMMANDS
from shardrun.cli.common import command_spelling

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
MAIN = REPO / "src" / "shardrun" / "__main__.py"


def shardrun(*args: str, script: bool = False) -> subprocess.CompletedProcess:
    program = [str(BIN / "shardrun")] if script else [sys.executable, "-m", "shardrun"]
    return subprocess.run([*program, *args], check=False, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("script", [False, True], ids=["python-m", "console-script"])
def test_help_lists_the_six_commands_one_line_each(script):
    result = shardrun("--help", script=script)
    assert result.returncode == 0, result.stderr
    listed = [line.split()[0] for line in result.stdout.splitlines() if line.startswith("  ")]
    assert listed == ["run", "launch", "merge", "validate", "monitor", "stop"]
    assert "shardrun" in shardrun("--version", script=script).stdout


@pytest.mark.parametrize("args", [["frob"], []], ids=["unknown", "none"])
def test_an_unknown_or_missing_command_is_a_usage_error(args):
    result = shardrun(*args)
    assert result.returncode == 2 and result.stdout == ""
    assert "error:" in result.stderr and "run, launch, merge, validate, monitor, stop" in result.stderr


@pytest.mark.parametrize("sub, name", [(sub, name) for sub, name, _ in SUBCOMMANDS])
def test_each_command_shows_its_own_parser_under_its_new_name_and_its_old_one(sub, name):
    new = shardrun(sub, "--help")
    assert new.returncode == 0 and new.stdout.startswith(f"usage: shardrun {sub} "), new.stdout + new.stderr
    old = subprocess.run([str(BIN / name), "--help"], check=False, capture_output=True, text=True, timeout=120)
    assert old.returncode == 0 and old.stdout.startswith(f"usage: {name} "), old.stdout + old.stderr
    assert new.stdout.split("options:")[1] == old.stdout.split("options:")[1]


@pytest.mark.parametrize("started, spelled", [
    (BIN / "shardrun", "shardrun merge"), (MAIN, "shardrun merge"), (BIN / "run_production", "merge_shard_results"),
], ids=["console-script", "python-m", "old-name"])
def test_hints_spell_a_command_the_way_this_one_was_started(monkeypatch, started, spelled):
    monkeypatch.setattr(sys, "argv", [str(started)])
    assert command_spelling("merge_shard_results") == spelled
    # a venv not activated: the script by its path
    monkeypatch.setenv("PATH", os.pathsep.join(p for p in os.environ["PATH"].split(os.pathsep) if Path(p) != BIN))
    script, *sub = spelled.split()
    assert command_spelling("merge_shard_results") == " ".join([str(BIN / script), *sub])


def test_the_cli_reference_is_what_the_parsers_say_now():
    spec = importlib.util.spec_from_file_location("cli_reference", REPO / "tools" / "cli_reference.py")
    generator = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(generator)
    assert generator.TARGET.read_text(encoding="utf-8") == generator.reference(), (
        f"docs/CLI.md is stale: regenerate it with `{generator.REGENERATE}` and commit it")
