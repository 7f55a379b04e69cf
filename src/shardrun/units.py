"""Sizes in bytes: the binary units, JVM heap sizes ("512m") and their display."""

from __future__ import annotations

import re

MIB = 1024**2
GIB = 1024**3

_HEAP_SIZE = re.compile(r"^([1-9][0-9]*)([kKmMgGtT]?)$")
_HEAP_UNITS = {"": 1, "k": 1024, "m": MIB, "g": GIB, "t": 1024**4}


def is_heap_size(value: str) -> bool:
    """True for a size the JVM takes after -Xmx: digits and an optional k, m, g or t."""
    return _HEAP_SIZE.match(value) is not None


def heap_bytes(value: str) -> int:
    """'512m' -> 536870912, as the JVM reads -Xmx."""
    match = _HEAP_SIZE.match(value)
    if not match:
        raise ValueError(value)
    return int(match.group(1)) * _HEAP_UNITS[match.group(2).lower()]


def heap_flag_value(n_bytes: float) -> str:
    """The smallest whole number of MiB that holds `n_bytes`, as a heap size ("129m")."""
    return f"{-(-int(n_bytes) // MIB)}m"


def format_bytes(n: int | float) -> str:
    n = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"
