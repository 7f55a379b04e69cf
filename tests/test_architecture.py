"""The package's shape, as docs/ARCHITECTURE.md states it: layers, no cycles, entry points that run once.

Every import statement counts, those inside functions included (grimp reads them all), so a late
import cannot hide a wrong-way dependency or a cycle.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import grimp
import pytest

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's algorithm: the groups of modules that import each other, directly or not."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for other in graph.get(node, ()):
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            groups.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return groups


def import_graph() -> dict[str, set[str]]:
    graph = grimp.build_graph("shardrun", cache_dir=None)
    return {module: set(graph.find_modules_directly_imported_by(module)) for module in graph.modules}


def test_the_cycle_finder_finds_a_cycle():
    groups = strongly_connected({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}})
    assert [g for g in groups if len(g) > 1] == [["a", "b", "c"]]


def test_no_module_imports_itself_back():
    cycles = [group for group in strongly_connected(import_graph()) if len(group) > 1]
    assert cycles == [], f"import cycles: {cycles}"


def test_the_layer_contracts_of_pyproject_hold():
    result = subprocess.run([str(BIN / "lint-imports"), "--no-cache"], cwd=REPO, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout, result.stdout


def imported_by(*command: str) -> set[str]:
    """The modules `python -m shardrun COMMAND --help` imports (python -X importtime lists each once)."""
    result = subprocess.run([sys.executable, "-X", "importtime", "-m", "shardrun", *command, "--help"],
                            cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    return {line.rsplit("|", 1)[-1].strip() for line in result.stderr.splitlines() if line.startswith("import time:")}


@pytest.mark.parametrize("command", ["run", "launch", "merge", "validate", "monitor", "stop"])
def test_the_entry_module_is_not_imported_a_second_time(command):
    # Run with -m it is __main__; a second copy under its own name would hold its own globals.
    assert "shardrun.__main__" not in imported_by(command)


@pytest.mark.parametrize("command", ["merge", "validate", "monitor"])
def test_reading_commands_do_not_load_the_shard_stack(command):
    modules = imported_by(command)
    loaded = sorted(m for m in modules if m.split(".")[:2] in (["shardrun", "shard"], ["shardrun", "launch"])
                    or m.split(".")[0] in ("jpype", "_jpype", "tenacity"))
    assert loaded == []


def test_the_list_of_commands_imports_none_of_them():
    assert sorted(m for m in imported_by() if m.startswith("shardrun.")) == [
        "shardrun.cli", "shardrun.early_signals", "shardrun.entry"]


# The words of the default analysis (its library, its package on PyPI, its measure), as whole words.
ANALYSIS_WORDS = re.compile(r"\b(jidt|idtxl|ais)\b", re.IGNORECASE)
def test_the_words_of_the_default_analysis_find_what_they_should():
    assert ANALYSIS_WORDS.search("the JIDT jar") and ANALYSIS_WORDS.search("pip install idtxl-uv")
    assert ANALYSIS_WORDS.search("AIS(k) in bits") and ANALYSIS_WORDS.search('measure "ais"')
    assert not ANALYSIS_WORDS.search("waist, ais_k1_bits, raising, jidtish")


def test_no_module_outside_the_default_task_names_its_analysis():
    """The core and every other module say "the task", never JIDT, idtxl or AIS (comments and docstrings too)."""
    package = REPO / "src" / "shardrun"
    found = []
    for path in sorted(package.rglob("*.py")):
        relative = path.relative_to(package).as_posix()
        if relative.startswith("infodynamics/"):
            continue
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if ANALYSIS_WORDS.search(line):
                found.append(f"{relative}:{number}: {line.strip()}")
    assert found == [], "\n".join(found)
