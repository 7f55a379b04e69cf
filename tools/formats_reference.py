#!/usr/bin/env python3
"""Write the field tables of docs/FORMATS.md from the code: `python tools/formats_reference.py`. Each table stands
between `<!-- fields: NAME -->` and `<!-- end fields -->`; its rows are the fields of the typed definition NAME
maps to in DEFINITIONS (a TypedDict beside the code that writes the file, or MergeReport's dataclass with its
properties), each with its type and the meaning it is annotated with (`Annotated[type, "meaning"]`). The prose
around the tables is written by hand. tests/test_formats.py fails when docs/FORMATS.md differs from what this
makes, and when a real run writes a key these definitions do not have."""

from __future__ import annotations

import inspect
import re
import types
import typing
from pathlib import Path
from typing import Any

from shardrun.launch.report import LauncherJson, LauncherShard
from shardrun.results.read import MergedShard
from shardrun.results.timeline import ShardMemory, TraceRow
from shardrun.results.validate import MergeReport, ValidationJson
from shardrun.scheduler.slurm import SlurmSubmission
from shardrun.storage.commits import BatchHeader, BatchRecord, ErrorLine
from shardrun.storage.paths import RunJson, ShardJson
from shardrun.storage.status import StatusJson

TARGET = Path(__file__).resolve().parents[1] / "docs" / "FORMATS.md"
REGENERATE = "python tools/formats_reference.py"
# the name in a table's marker -> its definition and the word heading its first column
DEFINITIONS: dict[str, tuple[type, str]] = {
    "run.json": (RunJson, "field"),
    "shard.json": (ShardJson, "field"),
    "status.json": (StatusJson, "field"),
    "batch header": (BatchHeader, "field"),
    "batch record": (BatchRecord, "field"),
    "errors.jsonl": (ErrorLine, "field"),
    "launcher.json": (LauncherJson, "field"),
    "launcher.json shards": (LauncherShard, "field"),
    "slurm.json submissions": (SlurmSubmission, "field"),
    "merge_report.json": (MergeReport, "field"),
    "merge_report.json shards": (MergedShard, "field"),
    "merge_report.json memory": (ShardMemory, "key"),
    "validation.json": (ValidationJson, "field"),
    "trace.tsv": (TraceRow, "column"),
}
TYPE_NAMES = {str: "text", int: "int", float: "number", bool: "bool", type(None): "null"}
MARKED = re.compile(r"(<!-- fields: (?P<name>[^>]+?) -->\n)(.*?)(<!-- end fields -->)", re.DOTALL)


def fields(definition: type) -> dict[str, tuple[Any, str, bool]]:
    """Each field of a TypedDict or a dataclass (then its properties) as (type, meaning, required), in order."""
    found = {}
    total = getattr(definition, "__total__", True)
    for name, hint in typing.get_type_hints(definition, include_extras=True).items():
        required = total
        if typing.get_origin(hint) in (typing.NotRequired, typing.Required):
            # read from the hint: __required_keys__ is wrong under `from __future__ import annotations` (3.11)
            required, hint = typing.get_origin(hint) is typing.Required, typing.get_args(hint)[0]
        if typing.get_origin(hint) is not typing.Annotated:
            raise SystemExit(f"{definition.__name__}.{name} has no meaning: annotate it Annotated[type, 'meaning']")
        found[name] = (typing.get_args(hint)[0], hint.__metadata__[0], required)
    for name, value in vars(definition).items():
        if isinstance(value, property):  # a dataclass's to_json writes its properties too
            found[name] = (typing.get_type_hints(value.fget)["return"], inspect.getdoc(value.fget) or "", True)
    return found


def shown(kind: Any) -> str:
    """A field's type in JSON's words."""
    if typing.get_origin(kind) in (typing.Union, types.UnionType):
        return " or ".join(shown(arg) for arg in typing.get_args(kind))
    if typing.get_origin(kind) is list:
        return f"list of {shown(typing.get_args(kind)[0])}"
    return TYPE_NAMES.get(kind, "object")  # a dict, a mapping, a TypedDict


def _cell(text: str) -> str:
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("<", "\\<")


def table(definition: type, word: str) -> str:
    lines = [f"| {word} | type | meaning |", "|---|---|---|"]
    for name, (kind, meaning, required) in fields(definition).items():
        lines.append(f"| `{name}` | {shown(kind)}{'' if required else ' (optional)'} | {_cell(meaning)} |")
    return "\n".join(lines) + "\n"


def reference(page: str | None = None) -> str:
    """docs/FORMATS.md (or `page`) with each marked table made from its definition."""
    page = TARGET.read_text(encoding="utf-8") if page is None else page
    marked = [match["name"] for match in MARKED.finditer(page)]
    if sorted(marked) != sorted(DEFINITIONS):
        raise SystemExit(f"tables marked without a definition: {sorted(set(marked) - set(DEFINITIONS))}; definitions"
                         f" without a marked table (or marked twice): {sorted(set(DEFINITIONS) - set(marked))}")
    return MARKED.sub(lambda match: match[1] + table(*DEFINITIONS[match["name"]]) + match[4], page)


if __name__ == "__main__":
    TARGET.write_text(reference(), encoding="utf-8")
    print(f"wrote {TARGET}")
