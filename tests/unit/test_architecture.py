"""The shape the code must keep: engines sit below the planner, plan types in a leaf, one engine list."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from core.engines import ENGINES, engine_names

CORE = Path(__file__).resolve().parents[2] / "core"


def imported_modules(path: Path) -> set[str]:
    """Every module a file imports, at any level (TYPE_CHECKING blocks and functions included)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


@pytest.mark.parametrize("path", sorted((CORE / "engines").glob("*.py")), ids=lambda p: p.name)
def test_no_engine_imports_the_planner(path: Path) -> None:
    imports = imported_modules(path)
    assert "core.plan" not in imports, f"{path.name} imports core.plan: move the shared type to core/planning.py"


def test_plan_types_live_in_a_leaf_module() -> None:
    core_imports = {m for m in imported_modules(CORE / "planning.py") if m.startswith("core")}
    allowed = {"core.errors", "core.hardware", "core.hubs.base"}
    assert {m.rsplit(".", 1)[0] if m not in allowed else m for m in core_imports} <= allowed


def test_core_never_imports_streamlit() -> None:
    for path in CORE.rglob("*.py"):
        assert not any(m.split(".")[0] == "streamlit" for m in imported_modules(path)), path


def test_one_list_of_engines() -> None:
    assert engine_names() == tuple(ENGINES)
    for name, engine in ENGINES.items():
        assert engine.name == name
        assert (CORE.parent / "templates" / engine.template).is_file()
        assert engine.formats


# How an archive's pieces and sidecars are named, as the code would spell them in a string literal.
_SIDECAR_SPELLINGS = (".sha256", ".parts.sha256", ".partial", ".part", ".load.sh")


def spelled_sidecar_names(path: Path) -> list[str]:
    """String literals (f-string pieces included) in ``path`` that start with a sidecar suffix."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value.startswith(_SIDECAR_SPELLINGS):
            found.append(f"{path.name}:{node.lineno}: {node.value!r}")
    return found


def test_sidecar_file_names_are_spelled_only_in_core_archive_names() -> None:
    names_module = CORE / "archive" / "names.py"
    assert spelled_sidecar_names(names_module), "the test no longer sees the names where they live"
    others = [p for folder in (CORE, CORE.parent / "ezrunner_ui") for p in folder.rglob("*.py") if p != names_module]
    spelled = [hit for path in others for hit in spelled_sidecar_names(path)]
    assert spelled == [], "use core.archive.names instead of spelling these names:\n" + "\n".join(spelled)
