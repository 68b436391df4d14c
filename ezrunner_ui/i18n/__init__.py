"""UI strings in English and Simplified Chinese, and the number formats the wizard shows.

Catalogs are TOML files next to this module (``en.toml``, ``zh.toml``); nested tables become dotted
keys, so ``[model] title = "..."`` is ``t("model.title")``. Placeholders use ``str.format``
syntax (``{size}``). A key missing from the chosen language falls back to English, then to the key
itself, so a gap shows up as a readable key instead of an exception.
"""

from __future__ import annotations

import functools
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import streamlit as st

from core.hardware import Target

LANGUAGES: Mapping[str, str] = {"en": "English", "zh": "简体中文"}
DEFAULT_LANGUAGE = "en"
#: the session-state key holding the chosen language, and the key of its selectbox in the app frame
LANGUAGE_KEY = "language"
LANGUAGE_WIDGET = "lang"
CATALOG_DIR = Path(__file__).resolve().parent


def _flatten(table: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    flat: dict[str, str] = {}
    for key, value in table.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(_flatten(value, prefix=f"{dotted}."))
        else:
            flat[dotted] = str(value)
    return flat


@functools.cache
def catalog(language: str) -> Mapping[str, str]:
    """All strings of one language as ``{dotted.key: text}``."""
    with (CATALOG_DIR / f"{language}.toml").open("rb") as handle:
        return _flatten(tomllib.load(handle))


def current_language() -> str:
    chosen = st.session_state.get(LANGUAGE_KEY, DEFAULT_LANGUAGE)
    return chosen if chosen in LANGUAGES else DEFAULT_LANGUAGE


def has(key: str) -> bool:
    return key in catalog(current_language()) or key in catalog(DEFAULT_LANGUAGE)


def t(key: str, /, **params: Any) -> str:
    """The text for ``key`` in the session's language, with ``params`` filled in."""
    text = catalog(current_language()).get(key) or catalog(DEFAULT_LANGUAGE).get(key) or key
    if not params:
        return text
    try:
        return text.format(**params)
    except (KeyError, IndexError, ValueError):
        # a translation naming a parameter the caller did not pass: show it unfilled rather than fail
        return text


def translate_note(*, code: str, text: str, params: Mapping[str, Any], prefix: str = "note") -> str:
    """A planner note in the session's language: ``<prefix>.<code>`` filled with ``params``, else ``text``.

    English pages get core's own sentence, which carries more detail than the catalog's line. For
    other languages the English sentence is the fallback whenever there is no translation or the
    translation needs a parameter the note does not carry. Every ``<name>_bytes`` parameter is also
    offered as ``<name>_size`` ("1.5 GiB").
    """
    language = current_language()
    key = f"{prefix}.{code}"
    if (language == DEFAULT_LANGUAGE and text) or key not in catalog(language):
        return text or catalog(DEFAULT_LANGUAGE).get(key, code)
    values = dict(params)
    for name, value in params.items():
        if name.endswith("_bytes") and isinstance(value, int | float):
            values[name.removesuffix("_bytes") + "_size"] = fmt_bytes(value)
    try:
        return catalog(language)[key].format(**values)
    except (KeyError, IndexError, ValueError, TypeError):
        return text


def option_label(name: str) -> str:
    """A plan option's name in the user's words ("context length"), not the flag or the field name."""
    key = f"option.{name}"
    return t(key) if has(key) else name


def option_labels(names: str) -> str:
    """``"base_image, quant"`` → ``"base image, GGUF quantization"`` (the fields a notice names)."""
    return ", ".join(option_label(name.strip()) for name in names.split(",") if name.strip())


# NUMBER FORMATS (unit symbols are the same in both languages)

_BYTE_UNITS = ("B", "KiB", "MiB", "GiB", "TiB")


def fmt_bytes(num: float | None) -> str:
    """1536 → '1.5 KiB'; None → '—'."""
    if num is None:
        return "—"
    value = float(num)
    for unit in _BYTE_UNITS:
        if abs(value) < 1024 or unit == _BYTE_UNITS[-1]:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"  # unreachable: the loop returns at the last unit


def fmt_rate(bytes_per_s: float | None) -> str:
    return "—" if not bytes_per_s else f"{fmt_bytes(bytes_per_s)}/s"


def fmt_duration(seconds: float | None) -> str:
    """65 → '1:05'; 3725 → '1:02:05'; None → '—'."""
    if seconds is None:
        return "—"
    total = round(seconds)
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def fmt_count(num: int | None) -> str:
    """7615616512 → '7.6 B'; 125000 → '125 K' (parameters, downloads)."""
    if num is None:
        return "—"
    for limit, suffix in ((10**12, "T"), (10**9, "B"), (10**6, "M"), (10**3, "K")):
        if abs(num) >= limit:
            return f"{num / limit:.1f} {suffix}".replace(".0 ", " ")
    return str(num)


def fmt_target(target: Target) -> str:
    """The target in the current language ("2 × NVIDIA A100 80GB (driver …, CUDA …)", "仅 CPU，64 GiB 内存")."""
    if target.is_cpu_only:
        ram = fmt_bytes(target.ram_bytes) if target.ram_bytes else None
        return t("target.cpu_only_ram", ram=ram) if ram else t("target.cpu_only")
    counts: dict[str, int] = {}
    for gpu in target.gpus:
        counts[gpu.name] = counts.get(gpu.name, 0) + 1
    cards = " + ".join(f"{count} × {name}" for name, count in counts.items())
    details = [t("target.driver", version=target.driver_version)] if target.driver_version else []
    if target.cuda_version:
        details.append(f"CUDA {target.cuda_version}")
    return f"{cards} ({', '.join(details)})" if details else cards
