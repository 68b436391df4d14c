"""Model discovery: one entry for search, inspect and download over Hugging Face, ModelScope and folders.

A bare ``org/name`` is looked up on ModelScope first, with a short probe (``MODELSCOPE_PROBE_TIMEOUT_S``):
when ModelScope does not have it, or does not answer in time, Hugging Face is asked. ``ModelInfo.answered_by``
names the hub that answered and ``ModelInfo.lookup_note`` says why that one, so the user learns both.
"""

from __future__ import annotations

import dataclasses
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Literal

from core import errors
from core.errors import HubUnreachableError, InvalidOptionsError, ModelNotFoundError
from core.events import Cancel as CancelFlag
from core.events import EventSink, ignore_events
from core.hubs.base import Hub, HubName, ModelInfo, ModelSummary, SearchFilters
from core.refs import ModelRef, parse_ref, validate_revision

SearchSource = Literal["hf", "ms", "both"]
#: how long a bare org/name waits for ModelScope before asking Hugging Face
MODELSCOPE_PROBE_TIMEOUT_S = 5.0
#: the most results ``search`` asks one hub for (Hugging Face pages by 1,000)
MAX_SEARCH_LIMIT = 1000

__all__ = ["download", "hub_for", "inspect", "model_to_dict", "search"]


def hub_for(source: HubName) -> Hub:
    """The hub behind a resolved source ("hf", "ms" or "local").

    The clients are imported here, not at module import: ``core.hubs.base`` (the value types every step
    uses) then costs nothing, and the packer and the planner do not load two hub SDKs they never call.
    """
    if source == "hf":
        from core.hubs.hf import HuggingFaceHub

        return HuggingFaceHub()
    if source == "ms":
        from core.hubs.modelscope import ModelScopeHub

        return ModelScopeHub()
    if source == "local":
        from core.hubs.local import LocalFolderHub

        return LocalFolderHub()
    raise ValueError(f"no hub for source {source!r}; resolve 'auto' references with inspect()")


def search(
    *, query: str, source: SearchSource = "both", limit: int = 20, filters: SearchFilters | None = None
) -> list[ModelSummary]:
    """Search one hub or both; ``limit`` applies per hub.

    With ``both``, a hub that cannot be reached is left out as long as the other one answers (its
    results are still useful); when neither answers, the first error is raised.
    """
    if not 1 <= limit <= MAX_SEARCH_LIMIT:
        raise InvalidOptionsError(
            f"The search limit {limit:,} is out of range.",
            hint=f"Ask for 1 to {MAX_SEARCH_LIMIT:,} results per hub.",
            field=errors.LIMIT,
        )
    if source != "both":
        return hub_for(source).search(query=query, limit=limit, filters=filters)
    # both at once: a blocked hub spends ~20 s in its client's retries, the other need not wait in line
    with ThreadPoolExecutor(max_workers=2) as pool:
        asked = [pool.submit(hub_for(name).search, query=query, limit=limit, filters=filters) for name in ("ms", "hf")]
    results: list[ModelSummary] = []
    failures: list[HubUnreachableError] = []
    for future in asked:
        try:
            results.extend(future.result())
        except HubUnreachableError as error:
            failures.append(error)
    if len(failures) == len(asked):
        raise failures[0]
    return results


def inspect(
    *, ref: ModelRef | str, revision: str | None = None, token: str | None = None, quant: str | None = None
) -> ModelInfo:
    """Resolve a reference to a pinned ``ModelInfo`` (files, sizes, sha256, config, weight stats)."""
    model_ref = parse_ref(ref) if isinstance(ref, str) else ref
    if revision is not None and model_ref.source != "local":
        revision = validate_revision(revision)  # it becomes part of a hub URL
    if model_ref.source != "auto":
        return hub_for(model_ref.source).inspect(
            ref=model_ref, revision=revision, token=_token_for(model_ref.source, token, explicit=True), quant=quant
        )
    from core.hubs import modelscope

    repo = str(model_ref.repo_id)
    on_modelscope = modelscope.probe(repo=repo, token=_token_for("ms", token), timeout_s=MODELSCOPE_PROBE_TIMEOUT_S)
    if on_modelscope == "found":
        try:
            info = hub_for("ms").inspect(ref=model_ref, revision=revision, token=_token_for("ms", token), quant=quant)
            return dataclasses.replace(info, lookup_note=f"{repo}: found on ModelScope ({modelscope.endpoint()}).")
        except ModelNotFoundError:
            on_modelscope = "missing"  # listed, yet its files are not there: Hugging Face may have it
    why = (
        "not on ModelScope"
        if on_modelscope == "missing"
        else f"ModelScope did not answer within {MODELSCOPE_PROBE_TIMEOUT_S:g} s ({on_modelscope})"
    )
    # ModelScope's default branch is master, Hugging Face's is main: translate the default only
    hf_revision = None if revision == "master" else revision
    try:
        info = hub_for("hf").inspect(ref=model_ref, revision=hf_revision, token=_token_for("hf", token), quant=quant)
    except ModelNotFoundError as on_hf:
        raise ModelNotFoundError(
            f"{repo} is not on Hugging Face, and {why}."
            if on_modelscope != "missing"
            else f"{repo} was found neither on ModelScope nor on Hugging Face.",
            hint="Check the spelling (org/name, case matters); for a private or gated model set HF_TOKEN "
            "(or MODELSCOPE_API_TOKEN) and name the hub with hf: or ms:.",
            field=errors.MODEL,
        ) from on_hf
    except HubUnreachableError as hf_down:
        if on_modelscope == "missing":
            raise
        raise HubUnreachableError(
            f"Neither hub answered for {repo}: {why}, and then: {hf_down.message}",
            hint="Check the network or proxy, or use a reachable mirror (HF_ENDPOINT=https://hf-mirror.com, or "
            "MODELSCOPE_ENDPOINT=https://www.modelscope.ai outside China) and name its hub with hf: or ms:.",
        ) from hf_down
    return dataclasses.replace(info, lookup_note=f"{repo}: {why}; found on Hugging Face.")


def download(
    *,
    model: ModelInfo,
    token: str | None = None,
    on_event: EventSink = ignore_events,
    cancel: CancelFlag | None = None,
    cache_dir: Path | None = None,
) -> Path:
    """Fetch exactly ``model.files`` (resuming), verify them, and return the folder that holds them."""
    source = model.ref.source
    if source == "auto":
        raise ValueError("ModelInfo.ref must be resolved; inspect() never returns 'auto'")
    return hub_for(source).download(
        model=model,
        token=_token_for(source, token, explicit=True),
        on_event=on_event,
        cancel=cancel,
        cache_dir=cache_dir,
    )


def model_to_dict(info: ModelInfo) -> dict[str, Any]:
    """A JSON-ready view of ``ModelInfo`` (for ``--json`` output and logs)."""
    return {
        "ref": str(info.ref),
        "source": info.ref.source,
        "repo_id": info.repo_id,
        "name": info.name,
        "revision": info.revision,
        "commit": info.commit,
        "answered_by": info.answered_by,
        "lookup_note": info.lookup_note,
        "architecture": info.architecture,
        "context_length": info.context_length,
        "quantization": dict(info.quantization) if info.quantization is not None else None,
        "license": info.license,
        "gated": info.gated,
        "total_bytes": info.total_bytes,
        "files": [{"path": f.path, "size": f.size, "sha256": f.sha256} for f in info.files],
        "weights": {
            "parameters_by_dtype": dict(info.weights.parameters_by_dtype),
            "bytes_by_dtype": dict(info.weights.bytes_by_dtype),
            "total_parameters": info.weights.total_parameters,
            "total_bytes": info.weights.total_bytes,
            "tensor_count": info.weights.tensor_count,
            "lm_head_bytes": info.weights.lm_head_bytes,
        },
        "config": dict(info.config),
        "format": info.format,
        "gguf": None
        if info.gguf is None
        else {
            "reference": info.gguf.reference,
            "variants": [
                {
                    "key": v.key,
                    "quant": v.quant,
                    "size": v.total_size,
                    "files": [f.path for f in v.files],
                    "split_count": v.split_count,
                    "complete": v.complete,
                    "missing": list(v.missing),
                }
                for v in info.gguf.listing.variants
            ],
            "projectors": [{"path": p.path, "size": p.size} for p in info.gguf.listing.projectors],
        },
    }


def _token_for(source: HubName, token: str | None, *, explicit: bool = False) -> str | None:
    """A token goes only to the hub it belongs to: never leak a Hugging Face token to ModelScope.

    With a hub named (hf:/ms:) the token is for that hub. For a bare org/name it is routed by its
    prefix: ``hf_`` tokens to Hugging Face, ``ms-`` tokens to ModelScope (with a hub named too), anything
    else to Hugging Face only (gated models are a Hugging Face feature; ModelScope reads MODELSCOPE_API_TOKEN).
    """
    if source == "local":
        return None
    routed = _route_token(source, token, explicit=explicit)
    if routed is None and source == "ms":
        # A Hugging Face token was given (or none): ModelScope gets its own, if the user set one.
        return os.environ.get("MODELSCOPE_API_TOKEN") or None
    return routed


def _route_token(source: HubName, token: str | None, *, explicit: bool) -> str | None:
    if not token:
        return None
    # A token's prefix names its hub: it never goes to the other one, even with a hub named.
    if token.startswith("hf_"):
        return token if source == "hf" else None
    if token.startswith("ms-"):
        return token if source == "ms" else None
    if explicit:
        return token
    return token if source == "hf" else None
    if token.startswith("ms-"):
        return token if source == "ms" else None
    if explicit:
        return token
    return token if source == "hf" else None
