"""What a wheel holds: every package, the templates (mapped from the top-level templates/) and the catalogs.

The wheel is installed and used outside the checkout by scripts/check-wheel; these tests catch a package
or data file left out of pyproject.toml before that.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


def _packages_on_disk() -> set[str]:
    found = set()
    for top in ("core", "ezrunner_ui"):
        for init_or_module in (ROOT / top).rglob("*.py"):
            folder = init_or_module.parent.relative_to(ROOT)
            if "__pycache__" not in folder.parts:
                found.add(".".join(folder.parts))
    return found


def _tracked(pattern: str) -> list[str]:
    out = subprocess.run(["git", "ls-files", pattern], cwd=ROOT, capture_output=True, text=True, check=True)
    return sorted(out.stdout.split())


def test_every_package_on_disk_is_listed_for_the_wheel() -> None:
    listed = set(PYPROJECT["tool"]["setuptools"]["packages"])
    assert listed == _packages_on_disk() | {"core.templates"}


def test_the_templates_folder_is_mapped_into_core() -> None:
    assert PYPROJECT["tool"]["setuptools"]["package-dir"] == {"core.templates": "templates"}


def _source_copy(into: Path) -> Path:
    # Build from a copy of the files git knows: setuptools builds in the source folder, and a stale build/
    # there would put files into the wheel that the checkout no longer has.
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT, capture_output=True,
        check=True,
    ).stdout.decode().split("\0")
    for name in filter(None, listed):
        if (ROOT / name).is_file():
            (into / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, into / name)
    return into


@pytest.mark.slow
def test_the_wheel_holds_the_templates_catalogs_and_modules_but_no_tests(tmp_path: Path) -> None:
    source = _source_copy(tmp_path / "src")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(tmp_path),
         str(source)],
        check=True, capture_output=True, cwd=tmp_path,
    )  # fmt: skip
    (wheel,) = tmp_path.glob("ezrunner-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    templates = {f"core/templates/{Path(t).name}" for t in _tracked("templates/*.j2")}
    catalogs = set(_tracked("ezrunner_ui/i18n/*.toml"))
    modules = set(_tracked("core/*.py")) | set(_tracked("ezrunner_ui/*.py"))
    assert templates and templates <= names
    assert catalogs and catalogs <= names
    assert modules <= names
    assert not [n for n in names if n.startswith(("tests/", "templates/", "bench/", "scripts/"))]
