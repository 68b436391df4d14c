"""Parse and validate what users type as references: a model (``hf:org/name``, ``ms:org/name``, ``org/name`` or a
local folder) and a Docker image (``--base-image``)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from core import errors
from core.errors import InvalidOptionsError, InvalidReferenceError

RefSource = Literal["hf", "ms", "auto", "local"]

_FORMS = (
    "Use hf:org/name (Hugging Face), ms:org/name (ModelScope), org/name (ModelScope first, then "
    "Hugging Face), or the path of a folder on this machine."
)
# One org and one name, each made of letters, digits, dot, underscore and dash (what both hubs allow).
_PART = re.compile(r"[A-Za-z0-9._-]+")
#: the input key errors about a model reference carry (the CLI's MODEL argument, the wizard's model field)
FIELD = errors.MODEL
# Hugging Face caps a repo name at 96 characters (huggingface_hub's validate_repo_id: REPO_ID_REGEX
# `^(\b[\w\-.]+\b/)?\b[\w\-.]{1,96}\b$`); an org is shorter. Paths stop at Linux's PATH_MAX (4096).
MAX_HUB_PART_CHARS = 96
MAX_REFERENCE_CHARS = 4096


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
    directory is packed from disk. Text that looks like a path (starts with ``/``, ``~``, ``.``, has
    more than one ``/``, or starts with a folder that exists here, like ``tests/x``) but is not an
    existing directory is an error, never a hub lookup. Length and characters are checked before
    the file system is asked anything.
    """
    raw = text.strip() if isinstance(text, str) else ""
    if not raw:
        raise _invalid("The model reference is empty.", hint=_FORMS)
    if len(raw) > MAX_REFERENCE_CHARS:
        raise _invalid(
            f"The model reference is {len(raw):,} characters long; no hub id or folder path is longer than "
            f"{MAX_REFERENCE_CHARS:,}.",
            hint=_FORMS,
        )
    if bad := _control_character(raw):
        raise _invalid(f"The model reference {raw!r} contains the control character {bad!r}.", hint=_FORMS)

    prefix, sep, rest = raw.partition(":")
    if sep and prefix.lower() in ("hf", "ms"):
        source: RefSource = "hf" if prefix.lower() == "hf" else "ms"
        return ModelRef(source=source, repo_id=_validate_repo_id(rest.strip(), original=raw))

    candidate = Path(raw).expanduser()
    if _is_dir(candidate):
        return ModelRef(source="local", path=candidate.resolve())
    if _looks_like_path(raw):
        if _exists(candidate):
            raise _invalid(
                f"'{raw}' is a file, not a folder.",
                hint="Give the folder that holds config.json and the *.safetensors files.",
            )
        raise _invalid(
            f"The folder '{raw}' does not exist.",
            hint="Check the path, or " + _FORMS[0].lower() + _FORMS[1:],
        )
    first = raw.split("/", 1)[0]
    if "/" in raw and _is_dir(Path(first)):
        # `tests/nonexistent` beside a folder `tests`: a mistyped path, not a hub id to look up
        raise _invalid(
            f"The folder '{raw}' does not exist (there is a folder '{first}' here, so it is read as a path).",
            hint=f"Check the path; for a model on a hub of that name write hf:{raw} or ms:{raw}.",
        )
    if sep:
        raise _invalid(f"Unknown hub prefix '{prefix}:' in '{raw}'.", hint=_FORMS)
    return ModelRef(source="auto", repo_id=_validate_repo_id(raw, original=raw))


def _invalid(message: str, *, hint: str) -> InvalidReferenceError:
    return InvalidReferenceError(message, hint=hint, field=FIELD)


def _control_character(raw: str) -> str | None:
    return next((c for c in raw if ord(c) < 0x20 or ord(c) == 0x7F), None)


def _is_dir(path: Path) -> bool:
    try:
        return path.is_dir()
    except (OSError, ValueError):  # a name too long for the file system is simply not a folder here
        return False


def _exists(path: Path) -> bool:
    try:
        return path.exists()
    except (OSError, ValueError):
        return False


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
        raise _invalid(f"'{original}' names no model.", hint=_FORMS)
    if repo_id.startswith("/") or repo_id.startswith("~"):
        raise _invalid(
            f"'{original}' uses a file path as a hub id.",
            hint="A hub id is org/name, e.g. hf:Qwen/Qwen2.5-7B-Instruct; give folders without hf:.",
        )
    parts = repo_id.split("/")
    if len(parts) != 2:
        raise _invalid(
            f"'{original}' is not org/name: a hub id has exactly one '/'.",
            hint="For example hf:Qwen/Qwen2.5-7B-Instruct. " + _FORMS,
        )
    for part in parts:
        if part in ("", ".", "..") or not _PART.fullmatch(part) or ".." in part:
            raise _invalid(
                f"'{original}' has an invalid org or name '{part}'.",
                hint="Org and name may only use letters, digits, '.', '_' and '-' (no '..'). " + _FORMS,
            )
        if len(part) > MAX_HUB_PART_CHARS:
            raise _invalid(
                f"'{original}' has an org or name of {len(part)} characters; the hubs allow at most "
                f"{MAX_HUB_PART_CHARS}.",
                hint="Copy the id from the model's page on the hub. " + _FORMS,
            )
    return repo_id


# REVISIONS
#
# A branch, tag or commit: git's ref-name rules (git-check-ref-format(1): no "..", no control characters,
# space, ~ ^ : ? * [ or backslash, no "//", no "@{", no part that starts with "." or ends with ".lock", not
# ending in "/" or "."), which both hubs follow; it becomes part of a hub URL, so nothing else gets through.
_REVISION_CHARS = re.compile(r"[A-Za-z0-9._/+=-]+")
MAX_REVISION_CHARS = 255


def validate_revision(text: str) -> str:
    """``text`` stripped, when it can name a branch, tag or commit; else ``InvalidReferenceError`` (field
    ``revision``) saying what to type."""
    raw = text.strip() if isinstance(text, str) else ""
    hint = "Use a branch (main or master), a tag or a commit sha from the model's page on the hub."
    shown = raw if len(raw) <= 80 else raw[:80] + "…"
    if not raw:
        raise InvalidReferenceError("The revision is empty.", hint=hint, field=errors.REVISION)
    parts = raw.split("/")
    bad = (
        len(raw) > MAX_REVISION_CHARS
        or not _REVISION_CHARS.fullmatch(raw)
        or ".." in raw
        or raw.startswith("-")
        or raw.endswith((".", ".lock"))
        or any(not part or part.startswith(".") or part.endswith(".lock") for part in parts)
    )
    if bad:
        raise InvalidReferenceError(
            f"The revision {shown!r} cannot name a branch, tag or commit.", hint=hint, field=errors.REVISION
        )
    return raw


# DOCKER IMAGE REFERENCES
#
# The grammar Docker itself parses (github.com/distribution/reference, reference.go lines 4-26 at v0.5.0):
#   reference := name [":" tag] ["@" digest];  name := [domain "/"] path-component ["/" path-component]*
#   domain-component := [a-zA-Z0-9] | [a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9];  port := [0-9]+
#   path-component := [a-z0-9]+ (separator [a-z0-9]+)*;  separator := [_.] | "__" | "-"+
#   tag := [\w][\w.-]{0,127};  digest := algorithm ":" hex{32,}
# and a name is at most 255 characters (NameTotalLengthMax).

_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN = rf"(?:{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*|\[[0-9a-fA-F:]+\])(?::[0-9]+)?"
_PATH_COMPONENT = r"[a-z0-9]+(?:(?:[_.]|__|-+)[a-z0-9]+)*"
_NAME = rf"(?:{_DOMAIN}/)?{_PATH_COMPONENT}(?:/{_PATH_COMPONENT})*"
_IMAGE_REF = re.compile(
    rf"(?P<name>{_NAME})(?::(?P<tag>[A-Za-z0-9_][A-Za-z0-9_.-]{{0,127}}))?"
    r"(?:@(?P<digest>[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}))?"
)
MAX_IMAGE_NAME_CHARS = 255
_IMAGE_FORMS = (
    "Use a Docker image reference such as vllm/vllm-openai:v0.11.0, registry.example.com:5000/team/engine:tag "
    "or name@sha256:<64 hex digits> (lower-case name, no spaces)."
)


def validate_image_ref(text: str, *, field: str = errors.BASE_IMAGE, pinned: bool = True) -> str:
    """``text``, when Docker would accept it as an image reference (and, with ``pinned``, it names a
    tag other than ``latest`` or a digest); else ``InvalidOptionsError``.

    It ends up in a Dockerfile's ``FROM`` line and in ``docker run``: anything but a reference (a space, a
    newline, a shell character) is refused here rather than rendered."""
    raw = text if isinstance(text, str) else ""
    if not raw.strip():
        raise InvalidOptionsError("The image reference is empty.", hint=_IMAGE_FORMS, field=field)
    if raw != raw.strip():  # a newline would end a Dockerfile line: refuse rather than guess
        raise InvalidOptionsError(
            f"{raw.strip()[:200]!r} has spaces or a line break around it.", hint=_IMAGE_FORMS, field=field
        )
    match = _IMAGE_REF.fullmatch(raw)
    if match is None:
        shown = raw if len(raw) <= 200 else raw[:200] + "…"
        raise InvalidOptionsError(f"{shown!r} is not a Docker image reference.", hint=_IMAGE_FORMS, field=field)
    first, slash, _rest = match["name"].partition("/")
    if slash and first != first.lower() and not any(c in first for c in ".:[") and first != "localhost":
        # Docker reads a first part without '.', ':' or "localhost" as a path, where capitals are refused
        raise InvalidOptionsError(
            f"{raw!r} is not a Docker image reference: repository names are lower-case.",
            hint=_IMAGE_FORMS,
            field=field,
        )
    if len(match["name"]) > MAX_IMAGE_NAME_CHARS:
        raise InvalidOptionsError(
            f"The image name is {len(match['name'])} characters long; Docker allows at most {MAX_IMAGE_NAME_CHARS}.",
            hint=_IMAGE_FORMS,
            field=field,
        )
    if pinned and not match["digest"] and (not match["tag"] or match["tag"] == "latest"):
        raise InvalidOptionsError(
            f"The image {raw!r} is not pinned: 'latest' (or no tag) changes under you and breaks reproducible builds.",
            hint="Name an explicit tag or digest, e.g. python:3.11-slim-bookworm.",
            field=field,
        )
    return raw
