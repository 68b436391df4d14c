"""The two catalogs stay in step, and every key the code asks for exists."""

from __future__ import annotations

import ast
import re
import string
from pathlib import Path
from typing import get_args

import pytest

from core import errors
from core.engines import engine_names
from core.events import Stage
from core.jobs import JobState
from ezrunner_ui.i18n import LANGUAGES, catalog

UI_ROOT = Path(__file__).resolve().parents[2] / "ezrunner_ui"
CORE_ROOT = Path(__file__).resolve().parents[2] / "core"
#: the classes whose first argument (or ``code=``) is a planner code, and the catalog table it is read from
#: (a ShapeAssumption becomes a PlanWarning in core/engines/vllm.py)
CODE_CLASSES = {"Note": "note", "PlanWarning": "warning", "ShapeAssumption": "warning"}


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


def planner_codes() -> tuple[dict[tuple[str, str], str], list[str]]:
    """Every ``(table, code)`` core can emit as a note or warning, with where; and the calls whose code is
    not a string literal nor a local name bound only to literals (so a new code cannot hide in a variable).

    ``PlanWarning(x.code, ...)`` passes on the code of an object made elsewhere (a ShapeAssumption, which is
    enumerated itself) and is the one form allowed besides literals.
    """
    found: dict[tuple[str, str], str] = {}
    unresolved: list[str] = []
    for path in sorted(CORE_ROOT.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        literals: dict[str, set[str]] = {}
        for node in ast.walk(tree):
            if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant):
                for name in node.targets:
                    if isinstance(name, ast.Name) and isinstance(node.value.value, str):
                        literals.setdefault(name.id, set()).add(node.value.value)
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            func = node.func
            called = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else ""
            if called not in CODE_CLASSES:
                continue
            where = f"{path.relative_to(CORE_ROOT.parent)}:{node.lineno}"
            arg = node.args[0] if node.args else next((k.value for k in node.keywords if k.arg == "code"), None)
            if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                codes = {arg.value}
            elif isinstance(arg, ast.Name) and arg.id in literals:
                codes = literals[arg.id]
            elif isinstance(arg, ast.Attribute) and arg.attr == "code":
                continue
            else:
                unresolved.append(where)
                continue
            for code in codes:
                found.setdefault((CODE_CLASSES[called], code), where)
    return found, unresolved


def test_every_planner_code_has_a_message_in_both_languages() -> None:
    found, unresolved = planner_codes()
    assert unresolved == [], "planner codes that are neither literals nor literal-bound names"
    codes = {code for _, code in found}
    # the scan sees every engine's codes (vLLM's TP choice is a variable bound to literals)
    assert {"engine_gguf", "gguf_quant", "llamacpp_partial_offload", "tp_longest_context", "gguf_route",
            "vllm_would_serve_more", "sliding_window_not_smaller"} <= codes  # fmt: skip
    for language in LANGUAGES:
        messages = catalog(language)
        missing = {
            f"{table}.{code} ({where})" for (table, code), where in found.items() if f"{table}.{code}" not in messages
        }
        assert missing == set(), f"planner codes without a message in {language}.toml"


def test_every_option_has_a_label() -> None:
    from dataclasses import fields

    from core.planning import Options

    names = {f.name for f in fields(Options)}
    assert {name for name in names if f"option.{name}" not in catalog("en")} == set()


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
        ("engine", ("auto", *engine_names())),
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


#: Streamlit calls that put their first argument on the page
SHOWN_BY = {
    "title", "header", "subheader", "markdown", "write", "caption", "info", "warning", "error", "success", "button",
    "selectbox", "text_input", "number_input", "checkbox", "radio", "metric", "expander", "tabs", "page_link",
    "download_button", "link_button", "toggle", "form_submit_button", "spinner", "text_area", "segmented_control",
    "select_slider", "progress", "toast",
}  # fmt: skip
_ICON = re.compile(r":material/[a-z_]+:")


def page_literals() -> list[str]:
    """Words a page shows that are written in the code, not taken from a catalog (icons aside)."""
    found: list[str] = []
    for path in sorted(UI_ROOT.rglob("*.py")):
        if "cli" in path.relative_to(UI_ROOT).parts:
            continue  # the CLI speaks English by design
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.args):
                continue
            if node.func.attr not in SHOWN_BY:
                continue
            first = node.args[0]
            if isinstance(first, ast.Constant) and isinstance(first.value, str):
                text = first.value
            elif isinstance(first, ast.JoinedStr):
                text = "".join(str(v.value) for v in first.values if isinstance(v, ast.Constant))
            else:
                continue
            if re.search(r"[A-Za-z]{2,}", _ICON.sub("", text)):
                found.append(f"{path.relative_to(UI_ROOT)}:{node.lineno} {text!r}")
    return found


def test_pages_show_no_english_literal() -> None:
    assert page_literals() == []


def test_every_field_core_can_name_has_a_label() -> None:
    """Core names the input at fault with a key (``error.field``); the wizard shows the field's label. The keys
    are core's ``errors.FIELDS`` where core has that set; the plan options are such keys in any case."""
    from dataclasses import fields

    from core.planning import Options

    keys = set(getattr(errors, "FIELDS", ())) | {f.name for f in fields(Options)}
    for language in LANGUAGES:
        assert {key for key in keys if f"field.{key}" not in catalog(language)} == set(), language


def test_an_error_names_its_field_in_the_users_words() -> None:
    from ezrunner_ui.ui_errors import error_text

    text = error_text(code="invalid_options", message="max_model_len 100000 is too long.", field="max_model_len")
    assert text.endswith("Field to change: Context length (tokens)")
    assert "Field to change" not in error_text(code="invalid_options", message="x", field=None)
