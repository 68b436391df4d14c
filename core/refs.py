"""Parse and validate a model reference: ``hf:org/name``, ``ms:org/name``, ``org/name`` or a local dir."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from core.errors import InvalidReferenceError

RefSource = Literal["hf", "ms", "auto", "local"]

_FORMS = (
    "Use hf:org/name (Hugging Face), ms:org/name (ModelScope), org/name (ModelScope first, then "
    "Hugging Face), or the path of a folder on this machine."
)
# One org and one name, each made of letters, digits, dot, underscore and dash (what both hubs allow).
_PART = re.compile(r"[A-Za-z0-9._-]+")


@dataclass(frozen=True)
class ModelRef:
    """What the user asked for, validated but not yet resolved against any hub.

    ``source`` is ``auto`` for a bare ``org/name`` (ModelScope first, then Hugging Face).
    """

    source: RefSource
    repo_id: str | None = None  # "org/name" for hub references
    path: Path | None = None  # absolute directory for local references

    def __str__(self) -> str:
        if self.source == "local":
            return str(self.path)
        if self.source == "auto":
            return str(self.repo_id)
        return f"{self.source}:{self.repo_id}"


def parse_ref(text: str) -> ModelRef:
    """Turn user text into a ``ModelRef`` or raise ``InvalidReferenceError`` saying what to type.

    An existing directory always wins, so a folder named like ``org/name`` under the current
    directory is packed from disk. Text that looks like a path (starts with ``/``, ``~``, ``.`` or
    has more than one ``/``) but is not an existing directory is an error, never a hub lookup.
    """
    raw = text.strip() if isinstance(text, str) else ""
    if not raw:
        raise InvalidReferenceError("The model reference is empty.", hint=_FORMS)

    prefix, sep, rest = raw.partition(":")
    if sep and prefix.lower() in ("hf", "ms"):
        source: RefSource = "hf" if prefix.lower() == "hf" else "ms"
        return ModelRef(source=source, repo_id=_validate_repo_id(rest.strip(), original=raw))

    candidate = Path(raw).expanduser()
    if candidate.is_dir():
        return ModelRef(source="local", path=candidate.resolve())
    if _looks_like_path(raw):
        if candidate.exists():
            raise InvalidReferenceError(
                f"'{raw}' is a file, not a folder.",
                hint="Give the folder that holds config.json and the *.safetensors files.",
            )
        raise InvalidReferenceError(
            f"The folder '{raw}' does not exist.",
            hint="Check the path, or " + _FORMS[0].lower() + _FORMS[1:],
        )
    if sep:
        raise InvalidReferenceError(f"Unknown hub prefix '{prefix}:' in '{raw}'.", hint=_FORMS)
    return ModelRef(source="auto", repo_id=_validate_repo_id(raw, original=raw))


def _looks_like_path(raw: str) -> bool:
    return (
        raw.startswith(("/", "~", "./", "../", "\\"))
        or raw in (".", "..")
        or raw.count("/") > 1
        or "\\" in raw
        or (len(raw) > 1 and raw[1] == ":" and raw[0].isalpha())  # C:\ style
    )


def _validate_repo_id(repo_id: str, *, original: str) -> str:
    if not repo_id:
        raise InvalidReferenceError(f"'{original}' names no model.", hint=_FORMS)
    if repo_id.startswith("/") or repo_id.startswith("~"):
        raise InvalidReferenceError(
            f"'{original}' uses a file path as a hub id.",
            hint="A hub id is org/name, e.g. hf:Qwen/Qwen2.5-7B-Instruct; give folders without hf:.",
        )
    parts = repo_id.split("/")
    if len(parts) != 2:
        raise InvalidReferenceError(
            f"'{original}' is not org/name: a hub id has exactly one '/'.",
            hint="For example hf:Qwen/Qwen2.5-7B-Instruct. " + _FORMS,
        )
    for part in parts:
        if part in ("", ".", "..") or not _PART.fullmatch(part) or ".." in part:
            raise InvalidReferenceError(
                f"'{original}' has an invalid org or name '{part}'.",
                hint="Org and name may only use letters, digits, '.', '_' and '-' (no '..'). " + _FORMS,
            )
    return repo_id
