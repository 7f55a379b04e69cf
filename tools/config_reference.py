#!/usr/bin/env python3
"""Write docs/CONFIG.md from the code: `python tools/config_reference.py`. A key's type and default are
those the config is read with (parse_config's Section reads, recorded), its meaning the text its
dataclass field is annotated with (`Annotated[type, "meaning"]`). tests/test_config.py fails when
docs/CONFIG.md differs from what this makes."""

from __future__ import annotations

import dataclasses
import json
import typing
from pathlib import Path
from typing import Any, ClassVar
from unittest import mock

import shardrun.config
from shardrun.section import REQUIRED, Section

TARGET = Path(__file__).resolve().parents[1] / "docs" / "CONFIG.md"
REGENERATE = "python tools/config_reference.py"
# The keys the default task requires, and data.timezone so that its timed fields are read too.
SAMPLE = {"data": {"path": "data.csv", "timezone": "UTC"}, "feature_modes": ["activity"],
          "k_selection": {"k_grid": [1]}, "seed": 0}


class RecordedSection(Section):
    """A Section that notes each key read, with its type and default, in `reads`."""

    reads: ClassVar[dict[str, tuple[str, Any]]] = {}

    def get(self, key: str, kind: type | tuple[type, ...], default: Any = REQUIRED, check: Any = None,
            nullable: bool = False) -> Any:
        kinds = kind if isinstance(kind, tuple) else (kind,)
        shown = " or ".join(k.__name__ for k in kinds) + (" or null" if nullable else "")
        self.reads.setdefault(self.name(key), (shown, default))
        return super().get(key, kind, default, check, nullable)

    def int_list(self, key: str, default: Any = REQUIRED, positive: bool = True) -> tuple[int, ...]:
        self.reads.setdefault(self.name(key), (f"list of {'positive ' if positive else ''}int", default))
        return super().int_list(key, default, positive)

    def choice(self, key: str, choices: tuple[str, ...], default: Any = REQUIRED) -> str:
        self.reads.setdefault(self.name(key), ("one of " + ", ".join(choices), default))
        return super().choice(key, choices, default)


def meanings(settings: Any, prefix: str = "") -> dict[str, str]:
    """The meaning of each config key's field in the dataclass `settings` and in the dataclasses it holds."""
    found = {}
    hints = typing.get_type_hints(type(settings), include_extras=True)
    for spec in dataclasses.fields(settings):
        value = getattr(settings, spec.name)
        if typing.get_origin(hints[spec.name]) is typing.Annotated:
            found[prefix + spec.name] = hints[spec.name].__metadata__[0]
        elif dataclasses.is_dataclass(value):
            found |= meanings(value, f"{prefix}{spec.name}.")
    return found


def _cell(text: str) -> str:
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("<", "\\<")


def table(keys: dict[str, str], reads: dict[str, tuple[str, Any]]) -> list[str]:
    lines = ["| key | type | default | meaning |", "|---|---|---|---|"]
    for key, meaning in keys.items():
        kind, default = reads[key]
        shown = "required" if default is REQUIRED else default if isinstance(default, str) else json.dumps(default)
        lines.append(f"| `{key}` | {kind} | {shown if default is REQUIRED else f'`{shown}`'} | {_cell(meaning)} |")
    return lines


def reference() -> str:
    RecordedSection.reads = {}
    with mock.patch.object(shardrun.config, "Section", RecordedSection):
        config = shardrun.config.parse_config(SAMPLE)
    core = meanings(dataclasses.replace(config, settings=None))
    task = meanings(config.settings)
    reads, documented = RecordedSection.reads, set(core) | set(task)
    if set(reads) != documented:
        raise SystemExit(f"keys read without a meaning (Annotated[type, 'meaning']): {sorted(set(reads) - documented)};"
                         f" meanings of keys never read: {sorted(documented - set(reads))}")
    return "\n".join([
        "# Config reference", "",
        f"Generated from the code by `{REGENERATE}`: each key's type and default as the",
        "config is read, its meaning from beside its field. Every key is checked: an unknown key, a wrong",
        "type or a bad value is an error naming the key, and nothing runs.", "",
        "## The core's keys", "",
        "Every top-level key other than these belongs to the task. The config hash (in run.json, shard.json,",
        "every row) covers `task`, `partition` (unless `modulo`) and the task's settings, not `jvm` or",
        "`output`, so a resume may change the heap.", "",
        *table(core, reads), "",
        f"## The default task's keys (`{config.task}`)", "",
        "More on each in [ANALYSIS.md](ANALYSIS.md#config-keys); a task of your own reads its own keys",
        "([TASKS.md](TASKS.md)).", "",
        *table(task, reads), "",
    ])


if __name__ == "__main__":
    TARGET.write_text(reference(), encoding="utf-8")
    print(f"wrote {TARGET}")
