"""What the wizard remembers of one browser tab, and which options a model or engine change invalidates.

The wizard (``ezrunner_ui``) keeps its live state in Streamlit's session, which a browser refresh drops.
This module holds the part worth keeping as plain JSON in a small file per tab
(``<data dir>/wizard-sessions/<tab>.json``): the model reference and pinned commit, the revision typed, the
target, the plan options, the language, the job or record the tab follows and the Try page's conversations
and settings. A refresh finds the file
again through the tab id in the URL. No access token is ever written.

It also says which options belong to a model or an engine, so that a custom base image, a quantization or
a revision chosen for one plan is not carried silently into the next.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import tempfile
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from core.hardware import Gpu, Target, default_data_dir
from core.planning import Options

SESSION_DIR_NAME = "wizard-sessions"
#: a tab id is what ``new_tab_id`` makes: never a path, so it cannot name a file outside the folder
_TAB_ID = re.compile(r"^[0-9a-f]{16}$")
#: sessions untouched for this long are deleted when another one is saved (a month of idle tabs)
SESSION_MAX_AGE_S = 30 * 24 * 3600
SNAPSHOT_VERSION = 1

#: the llama.cpp options the CLI offers (``--engine``, ``--quant``, ``--kv-cache-type``, ``--parallel``)
ENGINE_OPTION_FIELDS: tuple[str, ...] = ("engine", "quant", "kv_cache_type", "parallel")
#: ``ezrunner plan --kv-cache-type`` choices (ezrunner_ui/cli/common.py); llama.cpp knows more
#: (core.llamacpp_memory.CACHE_TYPES), but these are the ones with a flash-attention kernel on every backend
KV_CACHE_TYPES: tuple[str, ...] = ("f16", "bf16", "q8_0", "q4_0")
#: options that mean something only to llama.cpp: another engine refuses them
LLAMACPP_ONLY: tuple[str, ...] = ("quant", "kv_cache_type", "parallel", "gguf_pre_tokenizer")
#: options that belong to one model: a new model starts without them
MODEL_OPTIONS: tuple[str, ...] = (
    "tensor_parallel_size",
    "max_model_len",
    "base_image",
    "quant",
    "gguf_pre_tokenizer",
)


# WHAT A CHANGE RESETS


@dataclass(frozen=True)
class OptionsChange:
    """New options after a change, and the names of the options that change reset (for a notice)."""

    options: Options
    reset: tuple[str, ...] = ()


def change_options(*, old: Options, new: Options) -> OptionsChange:
    """``new`` as the user set it, less what an engine change made stale.

    A custom base image is the image of one engine: a new engine drops it unless the same change set a new
    one. The llama.cpp-only options are dropped when the engine becomes vLLM or transformers.
    """
    if new.engine == old.engine:
        return OptionsChange(options=new)
    reset: dict[str, Any] = {}
    if new.base_image is not None and new.base_image == old.base_image:
        reset["base_image"] = None
    if new.engine not in ("auto", "llama.cpp"):
        reset.update({name: None for name in LLAMACPP_ONLY if getattr(new, name) is not None})
    return OptionsChange(options=replace(new, **reset), reset=tuple(reset))


def options_for_model(*, options: Options) -> OptionsChange:
    """The options a newly chosen model starts with: the port, engine and llama.cpp cache settings stay;
    what belonged to the previous model (context, TP, base image, quantization) is reset."""
    reset: dict[str, Any] = {name: None for name in MODEL_OPTIONS if getattr(options, name) is not None}
    return OptionsChange(options=replace(options, **reset), reset=tuple(reset))


# TARGET AND OPTIONS AS JSON


def target_to_dict(target: Target) -> dict[str, Any]:
    return asdict(target)


def target_from_dict(data: Mapping[str, Any]) -> Target:
    """The ``Target`` of ``target_to_dict``; unknown keys (from a newer version) are ignored."""
    gpu_names = {f.name for f in fields(Gpu)}
    gpus = tuple(
        Gpu(**{k: tuple(v) if k == "compute_capability" else v for k, v in gpu.items() if k in gpu_names})  # type: ignore[arg-type]
        for gpu in data.get("gpus", ())
    )
    known = {f.name for f in fields(Target)} - {"gpus", "notes"}
    values = {k: v for k, v in data.items() if k in known}
    return Target(gpus=gpus, notes=tuple(data.get("notes", ())), **values)


def options_to_dict(options: Options) -> dict[str, Any]:
    return asdict(options)


def options_from_dict(data: Mapping[str, Any]) -> Options:
    known = {f.name for f in fields(Options)}
    return Options(**{k: v for k, v in data.items() if k in known})


# A REVISION BELONGS TO ONE MODEL


def revision_for_lookup(*, text: str, typed: str, previous_text: str, previous_revision: str) -> tuple[str, bool]:
    """The revision to look ``text`` up at, and whether the typed one was dropped.

    A revision typed for one model (a branch, tag or commit) means nothing for another: when the model
    changes but the revision field still holds what was typed for the previous model, the new model is
    looked up at its default branch instead.
    """
    typed = typed.strip()
    if typed and previous_text and text.strip() != previous_text.strip() and typed == previous_revision.strip():
        return "", True
    return typed, False


# PROGRESS THAT NEVER GOES BACK


def monotonic_fraction(*, seen: dict[str, float], key: str, fraction: float) -> float:
    """``fraction``, or the highest shown before under ``key`` (a stage's total can grow as it runs, e.g. the
    export's estimate, which would draw the bar backwards); ``seen`` is the caller's memory."""
    shown = max(min(fraction, 1.0), seen.get(key, 0.0))
    seen[key] = shown
    return shown


# THE SESSION FILE


@dataclass(frozen=True)
class SessionSnapshot:
    """One tab's wizard, as JSON types. ``model_commit`` pins what was inspected, so a restore sees the
    same files even when the branch moved."""

    model_text: str = ""
    model_commit: str | None = None
    revision: str = ""
    target: Mapping[str, Any] | None = None
    options: Mapping[str, Any] = field(default_factory=dict)
    language: str | None = None
    job_id: str | None = None
    record_id: str | None = None
    search_query: str = ""
    # the Build page's output choices: output_dir, compress, split, split_gib
    build: Mapping[str, Any] = field(default_factory=dict)
    # the Try page: its mode, packs, settings, conversations and the answer, comparison or bench it follows
    try_page: Mapping[str, Any] = field(default_factory=dict)
    # one more each time a session takes the tab over (a refresh): an older session of the same tab, still
    # running in the server after its browser left, never writes over the newer one's file
    generation: int = 0


def new_tab_id() -> str:
    return secrets.token_hex(8)


def is_tab_id(text: str | None) -> bool:
    return bool(text) and _TAB_ID.match(text or "") is not None


def sessions_dir(*, data_dir: Path | None = None) -> Path:
    return (data_dir or default_data_dir()) / SESSION_DIR_NAME


def save_session(*, tab_id: str, snapshot: SessionSnapshot, data_dir: Path | None = None) -> Path | None:
    """Write the tab's snapshot (atomically: a refresh mid-write reads the old one). None for a bad id, and
    when the file holds a later ``generation`` (a newer session of the tab).

    Best effort: a read-only or full disk loses only the memory across refreshes, so errors are swallowed.
    """
    if not is_tab_id(tab_id):
        return None
    folder = sessions_dir(data_dir=data_dir)
    path = folder / f"{tab_id}.json"
    payload = json.dumps({"version": SNAPSHOT_VERSION, **asdict(snapshot)}, sort_keys=True, default=str)
    try:
        current = path.read_text(encoding="utf-8")  # read once: unchanged, or whose it is
    except OSError:
        current = None
    if current == payload:
        return path  # unchanged: no write on every rerun
    held = _snapshot_from_text(current) if current is not None else None
    if held is not None and held.generation > snapshot.generation:
        return None  # a newer session of this tab owns the file
    try:
        folder.mkdir(parents=True, exist_ok=True)
        handle, staging = tempfile.mkstemp(prefix=f".{tab_id}-", suffix=".json", dir=folder)
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            out.write(payload)
        os.replace(staging, path)
        _forget_old(folder)
    except OSError:
        return None
    return path


def load_session(*, tab_id: str | None, data_dir: Path | None = None) -> SessionSnapshot | None:
    """The tab's snapshot, or None when there is none (or it cannot be read: a fresh wizard then)."""
    if tab_id is None or not is_tab_id(tab_id):
        return None
    path = sessions_dir(data_dir=data_dir) / f"{tab_id}.json"
    try:
        text = path.read_text(encoding="utf-8")
    except OSError:
        return None
    return _snapshot_from_text(text)


def _snapshot_from_text(text: str) -> SessionSnapshot | None:
    try:
        data = json.loads(text)
    except ValueError:
        return None
    if not isinstance(data, dict) or data.get("version") != SNAPSHOT_VERSION:
        return None
    known = {f.name for f in fields(SessionSnapshot)}
    try:
        return SessionSnapshot(**{k: v for k, v in data.items() if k in known})
    except TypeError:
        return None


def _forget_old(folder: Path) -> None:
    cutoff = time.time() - SESSION_MAX_AGE_S
    for old in folder.glob("*.json"):
        with contextlib.suppress(OSError):
            if old.stat().st_mtime < cutoff:
                old.unlink()


__all__ = [
    "ENGINE_OPTION_FIELDS",
    "KV_CACHE_TYPES",
    "LLAMACPP_ONLY",
    "MODEL_OPTIONS",
    "OptionsChange",
    "SessionSnapshot",
    "change_options",
    "is_tab_id",
    "load_session",
    "monotonic_fraction",
    "new_tab_id",
    "options_for_model",
    "options_from_dict",
    "options_to_dict",
    "revision_for_lookup",
    "save_session",
    "sessions_dir",
    "target_from_dict",
    "target_to_dict",
]
