#!/usr/bin/env python3
"""The core's weight, as issue 23 measures it: modules and lines (wc -l) of src/shardrun outside
infodynamics/, the functions over 50 lines, and the modules importing more than 10 internal modules
(every import statement counts, those inside functions too).

    python tools/house_size.py [--all]      (--all: every module's lines and fan-out)
"""

from __future__ import annotations

import argparse
import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "shardrun"
LONG_FUNCTION = 50
WIDE_FAN_OUT = 10


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def internal_imports(path: Path, tree: ast.Module, modules: set[str]) -> set[str]:
    """The shardrun modules this one imports (a `from package import module` names the module)."""
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.split(".")[0] == "shardrun")
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1]
                                + ([base] if base else []))
            if base.split(".")[0] != "shardrun":
                continue
            for alias in node.names:
                found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base)
    return found - {module_name(path)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--all", action="store_true", help="every module's lines and fan-out")
    args = parser.parse_args()
    paths = sorted(p for p in PACKAGE.rglob("*.py") if "infodynamics" not in p.relative_to(PACKAGE).parts)
    modules = {module_name(p) for p in paths}
    total, long_functions, fan_outs = 0, [], []
    for path in paths:
        source = path.read_text(encoding="utf-8")
        total += len(source.splitlines())
        tree = ast.parse(source)
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > LONG_FUNCTION:
                    long_functions.append((length, f"{module_name(path)}.{node.name}"))
        fan_outs.append((len(internal_imports(path, tree, modules)), len(source.splitlines()), module_name(path)))
    print(f"core: {len(paths)} modules, {total} lines")
    print(f"functions over {LONG_FUNCTION} lines: {len(long_functions)}")
    for length, name in sorted(long_functions, reverse=True):
        print(f"  {length:4d}  {name}")
    wide = [f for f in fan_outs if f[0] > WIDE_FAN_OUT]
    print(f"modules importing over {WIDE_FAN_OUT} internal modules: {len(wide)}")
    for fan_out, lines, name in sorted(fan_outs if args.all else wide, reverse=True):
        print(f"  {fan_out:4d} imports  {lines:5d} lines  {name}")


if __name__ == "__main__":
    main()
