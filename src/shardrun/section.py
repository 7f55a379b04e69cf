"""Strict reading of one mapping of the YAML config, shared by the core and tasks so errors look alike."""

from __future__ import annotations

import difflib
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from shardrun.errors import ConfigError

REQUIRED = object()


class Section:
    """Reads one mapping of the config; remembers which keys were read so `finish` can reject the rest."""

    def __init__(self, data: Any, where: str = ""):
        if data is None:
            data = {}
        if not isinstance(data, Mapping):
            what = f"config key '{where}'" if where else "the config file"
            raise ConfigError(f"{what} must be a mapping (key: value lines), got {describe_value(data)}.")
        self._data = dict(data)
        self._where = where
        self._seen: set[str] = set()
        self._children: list[Section] = []

    def name(self, key: str) -> str:
        return f"{self._where}.{key}" if self._where else key

    def get(self, key: str, kind: type | tuple[type, ...], default: Any = REQUIRED,
            check: Callable[[Any], str | None] | None = None, nullable: bool = False) -> Any:
        """The value of `key`, checked: right type, and `check(value)` returns None (or a reason)."""
        self._seen.add(key)
        if key not in self._data:
            if default is REQUIRED:
                near = close_matches(key, [k for k in self._data if k not in self._seen])
                fix = (f"did you mean {near}? Rename it to '{key}'" if near else "add it to the config")
                raise ConfigError(f"config key '{self.name(key)}' is required but missing; {fix}.")
            return default
        value = self._data[key]
        if value is None and nullable:
            return None
        kinds = kind if isinstance(kind, tuple) else (kind,)
        # bool is an int in Python; a YAML `true` where a number belongs is a mistake.
        if (isinstance(value, bool) and bool not in kinds) or not isinstance(value, kinds):
            expected = " or ".join(k.__name__ for k in kinds) + (" or null" if nullable else "")
            hint = ""
            if int in kinds and float not in kinds and isinstance(value, (str, float)):
                hint = " Write it as a whole number such as 100 (YAML reads 1e3 as text, and 1.0e+3 as a float)."
            raise ConfigError(f"config key '{self.name(key)}' must be {expected}, got {describe_value(value)}.{hint}")
        if check is not None:
            reason = check(value)
            if reason:
                raise ConfigError(f"config key '{self.name(key)}' {reason}, got {describe_value(value)}.")
        return value

    def int_list(self, key: str, default: Any = REQUIRED, positive: bool = True) -> tuple[int, ...]:
        values = self.get(key, list, default=default)
        if not values:
            raise ConfigError(f"config key '{self.name(key)}' must be a non-empty list of integers, got [].")
        for v in values:
            if isinstance(v, bool) or not isinstance(v, int) or (positive and v <= 0):
                raise ConfigError(f"config key '{self.name(key)}' must list {'positive ' if positive else ''}integers"
                                  f" only, got {describe_value(v)} in {values!r}.")
        if len(set(values)) != len(values):
            raise ConfigError(f"config key '{self.name(key)}' lists a value twice: {values!r}.")
        return tuple(values)

    def choice(self, key: str, choices: tuple[str, ...], default: Any = REQUIRED) -> str:
        return self.get(key, str, default,
                        check=lambda v: None if v in choices else f"must be one of {', '.join(choices)}")

    def section(self, key: str) -> Section:
        self._seen.add(key)
        child = type(self)(self._data.get(key), self.name(key))
        self._children.append(child)
        return child

    def finish(self) -> None:
        """Reject keys nobody asked for, here and in every sub-section read through `section`."""
        unknown = sorted(set(self._data) - self._seen)
        if unknown:
            names = ", ".join(f"'{self.name(k)}'" for k in unknown)
            near = [f"'{self.name(k)}' -> {match}" for k in unknown if (match := close_matches(k, sorted(self._seen)))]
            hint = f" Did you mean: {'; '.join(near)}?" if near else ""
            raise ConfigError(f"unknown config key {names}; check the spelling against the config reference"
                              f" (docs/CONFIG.md).{hint}")
        for child in self._children:
            child.finish()


def close_matches(key: str, candidates: Sequence[str]) -> str:
    """The candidates spelt like `key` (a letter off, a plural), quoted, or ''."""
    found = difflib.get_close_matches(str(key), [str(c) for c in candidates], n=2, cutoff=0.75)
    return " or ".join(f"'{match}'" for match in found)


def describe_value(value: Any) -> str:
    text = repr(value)
    if len(text) > 60:
        text = text[:57] + "..."
    return f"{type(value).__name__} {text}"
