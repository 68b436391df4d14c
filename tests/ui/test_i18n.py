"""The two catalogs stay in step, and every key the code asks for exists."""

from __future__ import annotations

import ast
import string
from pathlib import Path
from typing import get_args

import pytest

from core import errors
from core.events import Stage
from core.jobs import JobState
from ezrunner_ui.i18n import LANGUAGES, catalog

UI_ROOT = Path(__file__).resolve().parents[2] / "ezrunner_ui"


def literal_keys() -> set[str]:
    """First arguments of every ``t("...")`` call with a plain string in ezrunner_ui/."""
    keys: set[str] = set()
    for path in UI_ROOT.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Name)
                and node.func.id == "t"
                and node.args
                and isinstance(node.args[0], ast.Constant)
                and isinstance(node.args[0].value, str)
            ):
                keys.add(node.args[0].value)
    return keys


def fields_of(text: str) -> set[str]:
    return {name for _, name, _, _ in string.Formatter().parse(text) if name}


def test_both_languages_have_the_same_keys() -> None:
    english, chinese = set(catalog("en")), set(catalog("zh"))
    assert english - chinese == set(), "keys missing from zh.toml"
    assert chinese - english == set(), "keys missing from en.toml"
    assert set(LANGUAGES) == {"en", "zh"}


def test_every_key_used_in_code_exists() -> None:
    used = literal_keys()
    assert len(used) > 150  # the scan really found the pages' calls
    assert used - set(catalog("en")) == set()


@pytest.mark.parametrize(
    ("prefix", "names"),
    [
        ("job_state", get_args(JobState)),
        ("stage", get_args(Stage)),
        ("engine", ("auto", "vllm", "transformers")),
        ("source", ("hf", "ms", "both", "local")),
        ("hardware.mode", ("detect", "describe")),
    ],
)
def test_keys_built_at_run_time_exist(prefix: str, names: tuple[str, ...]) -> None:
    separator = "_" if prefix == "hardware.mode" else "."
    missing = [f"{prefix}{separator}{name}" for name in names if f"{prefix}{separator}{name}" not in catalog("en")]
    assert missing == []


def test_every_error_code_has_a_headline() -> None:
    codes = {
        cls.code for cls in vars(errors).values() if isinstance(cls, type) and issubclass(cls, errors.EzRunnerError)
    }
    assert "docker_unavailable" in codes
    assert {code for code in codes if f"error.{code}" not in catalog("en")} == set()


def test_translations_use_the_same_placeholders() -> None:
    english, chinese = catalog("en"), catalog("zh")
    different = {key for key in english if fields_of(english[key]) != fields_of(chinese[key])}
    assert different == set()


def test_chinese_strings_are_translated() -> None:
    english, chinese = catalog("en"), catalog("zh")
    # product names, units and pure placeholders may stay as they are; sentences may not
    same = {key for key in english if english[key] == chinese[key] and len(fields_of(english[key])) == 0}
    assert {key for key in same if " " in english[key] and not key.startswith(("engine.", "source."))} == set()
