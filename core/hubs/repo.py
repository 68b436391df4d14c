"""One way to turn any model repository into a ``ModelInfo``, whichever hub holds it.

Each hub supplies only its transport, a ``RepoSnapshot``: the listing of one pinned commit, whole reads of
small files and range reads of big ones. What is packed, which config and index are read, how weight
headers are read (safetensors JSON headers, GGUF headers) is decided here, once, for Hugging Face,
ModelScope and local folders alike.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from core import errors
from core.errors import HubAnswerError, ModelConfigError, NoSafetensorsError
from core.hubs.assemble import build_model_info, check_config_values, missing_config
from core.hubs.base import ModelFile, ModelInfo
from core.hubs.gguf_repo import inspect_gguf
from core.hubs.safetensors_header import (
    FIRST_READ_BYTES,
    MAX_HEADER_BYTES,
    TensorEntry,
    header_length,
    parse_header,
    weight_stats,
)
from core.hubs.selection import CONFIG_FILE, INDEX_FILE, restrict_to_index, select_files, weight_files
from core.hubs.snapshot import RepoFacts, RepoSnapshot

# config.json and the shard index are small; anything bigger is not what it claims to be.
MAX_JSON_BYTES = 16 << 20
HEADER_WORKERS = 8
# No model file is named deeper or longer than this (Linux's PATH_MAX).
MAX_LISTED_PATH_CHARS = 4096


def check_listing(snapshot: RepoSnapshot) -> None:
    """Refuse a listing with a file name that would leave the model folder once downloaded or packed:
    absolute, with ``..``, ``.`` or empty parts, backslashes or control characters. An honest hub never
    lists one, so the whole answer is refused rather than the file skipped."""
    for path in snapshot.files:
        parts = path.split("/")
        unsafe = (
            not path
            or len(path) > MAX_LISTED_PATH_CHARS
            or any(part in ("", ".", "..") for part in parts)
            or "\\" in path
            or any(ord(c) < 0x20 or ord(c) == 0x7F for c in path)
            or (len(path) > 1 and path[1] == ":")  # C:... on Windows
        )
        if unsafe:
            shown = path if len(path) <= 200 else path[:200] + "…"
            raise HubAnswerError(
                f"'{snapshot.label}' lists a file named {shown!r}, which would land outside the model folder.",
                hint="EZ Runner refuses such a listing: check the hub or mirror (HF_ENDPOINT / MODELSCOPE_ENDPOINT) "
                "you use, or rename the file if it is in your own folder.",
                field=errors.MODEL,
            )


def read_json_file(snapshot: RepoSnapshot, path: str) -> dict[str, Any]:
    """A small JSON file of the repository, refused past ``MAX_JSON_BYTES`` by its listed size (nothing is
    read then) and when the bytes that came are not the listed size or not one JSON object."""
    size = snapshot.files[path].size
    broken = f"The file is damaged; restore the model's original {path}, or pick another revision."
    if size > MAX_JSON_BYTES:
        raise ModelConfigError(
            f"'{snapshot.label}': {path} is {size:,} bytes, far more than a JSON config holds "
            f"(at most {MAX_JSON_BYTES:,}).",
            hint=broken,
            field=_json_field(path),
        )
    raw = snapshot.read(path, max_bytes=MAX_JSON_BYTES)
    if len(raw) != size:
        raise HubAnswerError(
            f"'{snapshot.label}': {path} came with {len(raw):,} bytes, but the listing says {size:,}.",
            hint="The answer was cut short or the file changed meanwhile; try again, or pick another revision.",
            field=_json_field(path),
        )
    if not raw.strip():
        raise ModelConfigError(f"'{snapshot.label}': {path} is empty.", hint=broken, field=_json_field(path))
    try:
        value = json.loads(raw.decode("utf-8"), parse_constant=_refuse_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as error:
        raise ModelConfigError(
            f"'{snapshot.label}': {path} cannot be read as JSON ({error}).", hint=broken, field=_json_field(path)
        ) from error
    if not isinstance(value, dict):
        raise ModelConfigError(
            f"'{snapshot.label}': {path} is not a JSON object.", hint=broken, field=_json_field(path)
        )
    return value


def _json_field(path: str) -> str:
    return errors.CONFIG if path == CONFIG_FILE else errors.WEIGHTS  # the shard index is about the weights


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number JSON allows")


def safetensors_header(snapshot: RepoSnapshot, path: str) -> list[TensorEntry]:
    """A shard's tensor entries from two range reads at most: the first 100 kB, then the rest."""
    size = snapshot.files[path].size
    first = snapshot.read_range(path, start=0, length=min(FIRST_READ_BYTES, max(size, 8)))
    length = header_length(first[:8], file=path)
    if 8 + length > size:
        raise NoSafetensorsError(
            f"'{path}' says its header is {length:,} bytes long, but the file has only {size:,}.",
            hint="The file is truncated or not safetensors; pick another revision or re-download it.",
            field=errors.WEIGHTS,
        )
    raw = first[8 : 8 + length]
    if len(raw) < length:
        raw += snapshot.read_range(path, start=8 + len(raw), length=min(length - len(raw), MAX_HEADER_BYTES))
    if len(raw) < length:
        raise NoSafetensorsError(
            f"'{path}' ended inside its header ({len(raw):,} of {length:,} bytes).",
            hint="The file is truncated; pick another revision or re-download it.",
            field=errors.WEIGHTS,
        )
    return parse_header(raw, file=path, data_bytes=size - 8 - length)


def inspect_snapshot(
    *,
    snapshot: RepoSnapshot,
    facts: RepoFacts,
    quant: str | None = None,
    read_all_gguf_headers: bool = False,
) -> ModelInfo:
    """The ``ModelInfo`` of a pinned repository: safetensors weights when it has them at the top level (and
    no GGUF quantization was asked for), else its GGUF files (``read_all_gguf_headers`` for cheap reads)."""
    check_listing(snapshot)
    paths = list(snapshot.files)
    top_safetensors = any(p.endswith(".safetensors") and "/" not in p for p in paths)
    has_gguf = any(p.lower().endswith(".gguf") for p in paths)
    if has_gguf and (quant is not None or not top_safetensors):
        return inspect_gguf(snapshot=snapshot, facts=facts, quant=quant, read_all=read_all_gguf_headers)
    selected = select_files(paths, repo=snapshot.label)
    if CONFIG_FILE not in selected:
        raise missing_config(snapshot.label)
    config = read_json_file(snapshot, CONFIG_FILE)
    check_config_values(config, label=snapshot.label)
    if INDEX_FILE in selected:
        selected = restrict_to_index(selected, read_json_file(snapshot, INDEX_FILE), repo=snapshot.label)
    shards = weight_files(selected)
    with ThreadPoolExecutor(max_workers=HEADER_WORKERS) as pool:
        entries = [e for shard in pool.map(lambda s: safetensors_header(snapshot, s), shards) for e in shard]
    files = [ModelFile(path=p, size=snapshot.files[p].size, sha256=snapshot.files[p].sha256) for p in selected]
    return build_model_info(
        ref=facts.ref,
        repo_id=facts.repo_id,
        revision=facts.revision,
        commit=facts.commit,
        files=files,
        config=config,
        weights=weight_stats(entries),
        license=facts.license,
        gated=facts.gated,
        answered_by=facts.answered_by,
    )
