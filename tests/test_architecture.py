"""The code's shape: floors in data-flow order with no back arrows, one owner of the data folder's layout,
small files. Each check reads the source (ast / text); each has a planted violation it must catch."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# Lowest first. A package may import its own floor and the floors below it, never one above.
# `infra` is cluster tooling from the checkout, above the CLI: it parses job entrypoints with the CLI's parsers.
FLOORS = ("tbd_core", "annotation", "media", "pipelines", "tbd_lightning", "evaluation", "tbd", "infra")
DATA_FOLDER_MODULE = REPO / "pipelines" / "data_folder.py"
# A folder name of the layout joined into a path (`x / "ledger"`, `"annotations" / v`), or the manifest's name.
# (The command name `tbd annotations` is a word, not a path: it does not count.)
LAYOUT_NAMES = re.compile(
    r'/\s*"(annotations|ledger|media)"|"(annotations|ledger|media)"\s*/|manifest\.parquet'
)
MAX_LINES = 400


def package_files() -> list[Path]:
    return sorted(p for floor in FLOORS for p in (REPO / floor).rglob("*.py"))


def imported_packages(source: str) -> set[str]:
    """Top-level project packages a module imports, at module level or inside functions (lazy imports)."""
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found & set(FLOORS)


def back_arrows(package: str, source: str) -> list[str]:
    own = FLOORS.index(package)
    return sorted(p for p in imported_packages(source) if FLOORS.index(p) > own)


def test_no_floor_imports_a_higher_floor():
    problems = []
    for path in package_files():
        package = path.relative_to(REPO).parts[0]
        for target in back_arrows(package, path.read_text()):
            problems.append(f"{path.relative_to(REPO)} ({package}) imports {target}")
    assert not problems, "back arrows:\n" + "\n".join(problems)


def test_the_floor_check_catches_a_planted_back_arrow():
    lazy = "def f():\n    from tbd_lightning.sampler import GuidanceConfig\n"
    assert back_arrows("pipelines", lazy) == ["tbd_lightning"]
    assert back_arrows("annotation", "import tbd.cli\n") == ["tbd"]
    assert back_arrows("evaluation", "from tbd_lightning import pipeline\nfrom media import face\n") == []


def test_only_the_data_folder_module_spells_its_layout():
    offenders = [
        f"{path.relative_to(REPO)}:{n}: {line.strip()}"
        for path in package_files()
        if path != DATA_FOLDER_MODULE
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if LAYOUT_NAMES.search(line)
    ]
    assert not offenders, (
        "paths inside the data folder spelled outside pipelines/data_folder.py:\n" + "\n".join(offenders)
    )
    assert LAYOUT_NAMES.search('root / "ledger" / "x.parquet"')  # the pattern itself can match


@pytest.mark.parametrize("floor", FLOORS)
def test_no_source_file_over_400_lines(floor):
    long = {
        str(p.relative_to(REPO)): n
        for p in (REPO / floor).rglob("*.py")
        if (n := len(p.read_text().splitlines())) > MAX_LINES
    }
    assert not long, f"split these files (lines): {long}"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def module_imports(source: str, modules: set[str]) -> set[str]:
    """Project modules a module imports, at module level, inside functions or under TYPE_CHECKING
    (`from pkg import mod` counts as importing `pkg.mod`)."""
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
    return found & modules


def import_circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected groups of more than one module (Tarjan's algorithm), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    groups: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while (w := stack.pop()) != v:
                group.append(w)
            group.append(v)
            if len(group) > 1:
                groups.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(groups)


def test_no_import_circles_between_modules():
    sources = {module_name(p): p.read_text() for p in package_files()}
    graph = {m: module_imports(s, set(sources)) - {m} for m, s in sources.items()}
    circles = import_circles(graph)
    assert not circles, f"import circles (move what both sides need one floor down): {circles}"


def test_the_circle_check_catches_a_planted_circle():
    modules = {"a.x", "a.y", "a.z", "a"}
    assert module_imports("def f():\n    from a import x\n", modules) == {"a", "a.x"}
    assert import_circles({"a.x": {"a.y"}, "a.y": {"a.z"}, "a.z": {"a.x"}, "a": {"a.x"}}) == [
        ["a.x", "a.y", "a.z"]
    ]
    assert import_circles({"a.x": {"a.y"}, "a.y": set()}) == []
