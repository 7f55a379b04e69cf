#!/usr/bin/env python3
"""Write docs/CLI.md from the commands' own argparse parsers: `python tools/cli_reference.py`.
tests/test_entry.py fails when docs/CLI.md differs from what this makes."""

from __future__ import annotations

import argparse
import importlib
import textwrap
from pathlib import Path

from shardrun.cli import SUBCOMMANDS
from shardrun.cli.common import HelpWithDefaults

TARGET = Path(__file__).resolve().parents[1] / "docs" / "CLI.md"
REGENERATE = "python tools/cli_reference.py"
WIDTH = 100  # the lines' width, whatever the terminal


def _markdown(text: str, indent: str = "") -> str:
    text = text.replace("\\", "\\\\").replace("*", "\\*").replace("<", "\\<")
    return textwrap.fill(text, WIDTH, subsequent_indent=indent, break_long_words=False, break_on_hyphens=False)


def command_section(sub: str, module: str) -> list[str]:
    parser = importlib.import_module(f"shardrun.cli.{module}").parser()
    parser.prog = f"shardrun {sub}"
    parser.formatter_class = lambda prog: HelpWithDefaults(prog, width=WIDTH)
    formatter = parser._get_formatter()  # argparse's own rendering of each flag and its help, as in --help
    lines = [f"## shardrun {sub}", "", _markdown(parser.description or ""), "",
             f"Also `{module}` and `python tools/{module}.py`.", "", "```", parser.format_usage().strip(), "```"]
    for group in parser._action_groups:
        actions = [a for a in group._group_actions if a.help is not argparse.SUPPRESS]
        if actions:
            lines += ["", f"{group.title}:", ""]
            lines += [_markdown(f"- `{formatter._format_action_invocation(a)}`: {formatter._expand_help(a)}", "  ")
                      for a in actions]
    return [*lines, ""]


def reference() -> str:
    lines = ["# Command-line reference", "",
             f"Generated from the commands' parsers by `{REGENERATE}`; `shardrun COMMAND --help`",
             "says the same. Each command also runs by its original name, shown under it.", "",
             *(f"- [`shardrun {sub}`](#shardrun-{sub}): {line}" for sub, _, line in SUBCOMMANDS), ""]
    for sub, module, _ in SUBCOMMANDS:
        lines += command_section(sub, module)
    return "\n".join(lines)


if __name__ == "__main__":
    TARGET.write_text(reference(), encoding="utf-8")
    print(f"wrote {TARGET}")
