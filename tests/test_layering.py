"""Layering: every module of ``agent/`` imports only the parts docs/architecture.md allows.

The table of what each part may import is read from the doc itself, so the doc and this test
cannot drift apart. Imports are found with ``ast`` anywhere in a module: at the top, inside
functions, and under ``if TYPE_CHECKING:``.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "agent"
DOC = ROOT / "docs" / "architecture.md"
RULES_HEADING = "## What each part may import"
NAME = re.compile(r"`(agent(?:\.[A-Za-z_][A-Za-z0-9_]*)*)`")


@dataclass(frozen=True)
class Import:
    """One import of a project module: where it is written and what it names."""

    file: str
    line: int
    target: str  # dotted module or attribute name, e.g. "agent.sources.capture"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def project_imports(module: str, source: str, *, is_package: bool, file: str = "<src>") -> list[Import]:
    """Every import of an ``agent`` module in ``source``, however deeply nested."""
    found: list[Import] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [Import(file, node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".") if is_package else module.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                origin = ".".join(base + ([node.module] if node.module else []))
            else:
                origin = node.module or ""
            # `from agent.x import y` may name a submodule y; keep the name so the part resolves.
            found += [Import(file, node.lineno, f"{origin}.{alias.name}") for alias in node.names]
    return [i for i in found if i.target == "agent" or i.target.startswith("agent.")]


def part_of(target: str, parts: set[str]) -> str:
    """The longest part that ``target`` lies in; ``agent`` (the root package) otherwise."""
    pieces = target.split(".")
    for n in range(len(pieces), 1, -1):
        if ".".join(pieces[:n]) in parts:
            return ".".join(pieces[:n])
    return "agent"


def read_tables(doc: str) -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    """The rules (part -> parts it may import) and the exceptions (module -> extra parts)."""
    section = doc.split(RULES_HEADING, 1)[1].split("\n## ", 1)[0]
    tables: list[dict[str, set[str]]] = []
    current: dict[str, set[str]] | None = None
    for line in section.splitlines():
        if not line.startswith("|"):
            current = None
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if current is None:  # the header row opens a new table
            current = {}
            tables.append(current)
            continue
        subject = NAME.findall(cells[0])
        if subject:
            current[subject[0]] = set(NAME.findall(cells[1]))
    assert len(tables) == 2, f"{DOC}: expected the rules table and the exceptions table"
    return tables[0], tables[1]


@pytest.fixture(scope="module")
def tables() -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    return read_tables(DOC.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def all_imports() -> dict[str, list[Import]]:
    out: dict[str, list[Import]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        module = module_name(path)
        out[module] = project_imports(module, path.read_text(encoding="utf-8"),
                                      is_package=path.name == "__init__.py",
                                      file=str(path.relative_to(ROOT)))
    return out


def violations(rules: dict[str, set[str]], exceptions: dict[str, set[str]],
               imports: dict[str, list[Import]]) -> tuple[list[str], set[tuple[str, str]]]:
    """Imports the table forbids, and the (module, part) exceptions that were used."""
    parts = set(rules)
    bad: list[str] = []
    used: set[tuple[str, str]] = set()
    for module, found in imports.items():
        own = part_of(module, parts)
        for imp in found:
            target = part_of(imp.target, parts)
            if target == own or target in rules[own]:
                continue
            if target in exceptions.get(module, set()):
                used.add((module, target))
                continue
            bad.append(f"{imp.file}:{imp.line}: {own} imports {imp.target} ({target}); "
                       f"{own} may import only {', '.join(sorted(rules[own])) or 'nothing of the project'}")
    return bad, used


def test_every_part_has_a_row(tables: tuple[dict[str, set[str]], dict[str, set[str]]],
                              all_imports: dict[str, list[Import]]) -> None:
    rules, _ = tables
    missing = set()
    for module in all_imports:
        top = ".".join(module.split(".")[:2])
        if top not in rules:
            missing.add(top)
    assert not missing, (f"no row in {DOC.name} for {sorted(missing)}: add each new part to the "
                         "'What each part may import' table")
    unknown = {p for allowed in rules.values() for p in allowed} - set(rules)
    assert not unknown, f"{DOC.name} allows imports of parts that have no row: {sorted(unknown)}"


def test_imports_follow_the_table(tables: tuple[dict[str, set[str]], dict[str, set[str]]],
                                  all_imports: dict[str, list[Import]]) -> None:
    bad, _ = violations(*tables, all_imports)
    assert not bad, ("imports against docs/architecture.md (move the shared code down a layer, "
                     "or change the table with a reason):\n" + "\n".join(bad))


def test_every_exception_is_still_needed(tables: tuple[dict[str, set[str]], dict[str, set[str]]],
                                         all_imports: dict[str, list[Import]]) -> None:
    rules, exceptions = tables
    _, used = violations(rules, exceptions, all_imports)
    stale = sorted(f"{m} -> {p}" for m, extra in exceptions.items() for p in extra
                   if (m, p) not in used)
    assert not stale, f"exceptions in {DOC.name} no longer needed, remove them: {stale}"


def test_core_imports_nothing_else_of_the_project(
        tables: tuple[dict[str, set[str]], dict[str, set[str]]]) -> None:
    rules, exceptions = tables
    assert rules["agent.core"] == set()
    assert not any(m.startswith("agent.core") for m in exceptions)


def test_the_stated_rules_are_in_the_table(
        tables: tuple[dict[str, set[str]], dict[str, set[str]]]) -> None:
    rules, _ = tables
    assert not rules["agent.config"] & {"agent.storage", "agent.sources"}
    assert "agent.service" not in rules["agent.diag"]
    assert "agent.sources" not in rules["agent.inference"]
    assert not rules["agent.service"] & {"agent.backend", "agent.bench", "agent.devtools", "agent.diag"}


PARTS = {"agent", "agent.errors", "agent.kernels", "agent.sources", "agent.core"}


def test_finds_imports_inside_functions_and_type_checking_blocks() -> None:
    source = (
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n"
        "    from agent.sources.capture import CapturedFrame\n"
        "def f():\n"
        "    def g():\n"
        "        import agent.errors as e\n"
        "    return g\n"
        "class C:\n"
        "    def m(self):\n"
        "        from agent import kernels, __version__\n"
    )
    found = project_imports("agent.core.x", source, is_package=False)
    assert {(i.line, part_of(i.target, PARTS)) for i in found} == {
        (3, "agent.sources"), (6, "agent.errors"), (10, "agent.kernels"), (10, "agent")}


def test_resolves_relative_imports() -> None:
    found = project_imports("agent.core.x", "from ..sources import capture\nfrom . import y\n",
                            is_package=False)
    assert [part_of(i.target, PARTS) for i in found] == ["agent.sources", "agent.core"]
    found = project_imports("agent.core", "from .. import errors\n", is_package=True)
    assert [part_of(i.target, PARTS) for i in found] == ["agent.errors"]


def test_a_forbidden_nested_import_is_reported() -> None:
    rules = {"agent.core": set(), "agent.sources": {"agent.core"}}
    imports = {"agent.core.x": project_imports(
        "agent.core.x", "def f():\n    from agent.sources import capture\n", is_package=False,
        file="agent/core/x.py")}
    bad, _ = violations(rules, {}, imports)
    assert bad == ["agent/core/x.py:2: agent.core imports agent.sources.capture (agent.sources); "
                   "agent.core may import only nothing of the project"]
