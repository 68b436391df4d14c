"""A repository (or folder) of GGUF files as a ``ModelInfo``: its quantizations, and the header of one.

Only headers are read, through the hub's range reads: the metadata (architecture, context, layers, heads)
and the tensor infos that llama.cpp's memory placement needs. A hub's variants share one header read (the
others differ only in tensor bytes, which their file sizes give); a local folder reads every header.
"""

from __future__ import annotations

import dataclasses
import fnmatch
from collections import Counter
from collections.abc import Callable, Mapping
from typing import Any

from core.errors import InvalidGgufError, InvalidOptionsError, NoSafetensorsError
from core.gguf import (
    GgufHeader,
    GgufListing,
    GgufModel,
    GgufVariant,
    check_architecture,
    group_gguf_files,
    read_gguf_header,
    require_complete,
)
from core.hubs.base import GgufRepo, ModelFile, ModelInfo, WeightStats
from core.hubs.snapshot import RepoFacts, RepoSnapshot

#: when no quantization is asked for, the header of the first of these the repo has is read (the common
#: middle of the range; any variant would do for the metadata)
PREFERRED_REFERENCE = ("Q4_K_M", "Q5_K_M", "Q4_K_S", "Q6_K", "Q8_0", "Q4_0", "F16", "BF16")
#: small files that travel with the weights (licence, model card)
_METADATA_PATTERNS = ("README.md", "LICENSE", "LICENSE.*", "LICENSE-*", "NOTICE", "USE_POLICY.md")


def _gib(size: int) -> str:
    return f"{size / (1 << 30):.1f} GiB"


def describe_variants(listing: GgufListing) -> str:
    """"Q4_K_M (4.7 GiB), Q8_0 (8.1 GiB)": what a repo offers, for messages."""
    return ", ".join(f"{v.quant or v.key} ({_gib(v.total_size)})" for v in listing.variants if v.complete)


def choose_reference(listing: GgufListing, *, quant: str | None, label: str) -> GgufVariant:
    """The variant whose header is read: the one asked for, else a typical one."""
    if not listing.variants:
        raise NoSafetensorsError(
            f"'{label}' has .gguf files, but none is a model (only projectors: "
            f"{', '.join(p.path for p in listing.projectors)}).",
            hint="Pick the repository that holds the model's own .gguf files.",
        )
    if quant is not None:
        matching = listing.by_quant(quant)
        if not matching:
            raise InvalidOptionsError(
                f"'{label}' has no {quant} quantization; it has {describe_variants(listing) or 'no complete one'}.",
                hint="Choose one of those with --quant, or leave --quant out to let the planner pick.",
            )
        complete = [v for v in matching if v.complete]
        return complete[0] if complete else require_complete(matching[0])
    complete = [v for v in listing.variants if v.complete]
    if not complete:
        return require_complete(listing.variants[0])
    for name in PREFERRED_REFERENCE:
        for variant in complete:
            if variant.quant == name:
                return variant
    return complete[len(complete) // 2]


def _range_reader(snapshot: RepoSnapshot, path: str) -> Callable[[int, int], bytes]:
    def read_at(offset: int, length: int) -> bytes:
        return snapshot.read_range(path, start=offset, length=length)

    return read_at


def read_variant_header(snapshot: RepoSnapshot, variant: GgufVariant) -> GgufHeader:
    """The header of a variant; for a split set, every part's tensor infos joined under the first part's
    metadata (each part lists only its own tensors)."""
    require_complete(variant)
    headers = [read_gguf_header(read_at=_range_reader(snapshot, part.path), file=part.path, file_size=part.size)
               for part in variant.files]  # fmt: skip
    first = headers[0]
    if len(headers) == 1:
        return first
    expected = first.model.split_tensors_count
    tensors = tuple(t for header in headers for t in header.tensors)
    if expected is not None and expected != len(tensors):
        raise InvalidGgufError(
            f"The split set '{variant.key}' lists {len(tensors)} tensors in its parts, but its first part says "
            f"{expected}.",
            hint="The parts come from different conversions: download all of them again from one revision.",
        )
    return dataclasses.replace(first, tensors=tensors)


def config_from_gguf(model: GgufModel) -> dict[str, Any]:
    """The model's shape in config.json terms, so the sizing shared by every engine can read it."""
    head = model.head_count_at(0)
    config: dict[str, Any] = {
        "model_type": model.architecture,
        "num_hidden_layers": model.n_layer,
        "hidden_size": model.embedding_length,
        "num_attention_heads": head,
        "num_key_value_heads": model.head_count_kv_at(0) or head,
        "head_dim": model.key_length,
        "intermediate_size": model.feed_forward_length_at(0) or None,
        "vocab_size": model.vocab_size,
        "max_position_embeddings": model.context_length,
        "torch_dtype": "bfloat16",
        "tie_word_embeddings": False,
    }
    if model.sliding_window and model.swa_layers:
        config["sliding_window"] = model.sliding_window
        config["layer_types"] = [
            "sliding_attention" if model.is_swa_layer(i) else "full_attention" for i in range(model.n_layer)
        ]
    if model.expert_count:
        config["num_experts"] = model.expert_count
    return {key: value for key, value in config.items() if value is not None}


def weight_stats_of(header: GgufHeader) -> WeightStats:
    """Elements and bytes per ggml type, from the tensor infos."""
    elements: Counter[str] = Counter()
    sizes: Counter[str] = Counter()
    for tensor in header.tensors:
        elements[tensor.ggml_type] += tensor.n_elements
        sizes[tensor.ggml_type] += tensor.nbytes
    lm_head = next((t.nbytes for t in header.tensors if t.name == "output.weight"), 0)
    return WeightStats(
        parameters_by_dtype=dict(elements), bytes_by_dtype=dict(sizes), tensor_count=len(header.tensors),
        lm_head_bytes=lm_head,
    )  # fmt: skip


def _metadata_files(files: Mapping[str, Any]) -> list[str]:
    return [p for p in files if "/" not in p and any(fnmatch.fnmatchcase(p, pat) for pat in _METADATA_PATTERNS)]


def variant_files(snapshot: RepoSnapshot, variant: GgufVariant) -> tuple[ModelFile, ...]:
    """What a pack of ``variant`` carries: its .gguf file(s) and the repo's licence and model card."""
    paths = [f.path for f in variant.files] + _metadata_files(snapshot.files)
    return tuple(
        sorted(
            (ModelFile(path=p, size=snapshot.files[p].size, sha256=snapshot.files[p].sha256) for p in paths),
            key=lambda f: f.path,
        )
    )


def inspect_gguf(*, snapshot: RepoSnapshot, facts: RepoFacts, quant: str | None, read_all: bool) -> ModelInfo:
    listing = group_gguf_files((path, listed.size) for path, listed in snapshot.files.items())
    reference = choose_reference(listing, quant=quant, label=snapshot.label)
    headers = {reference.key: read_variant_header(snapshot, reference)}
    if read_all:
        for variant in listing.variants:
            if variant.complete and variant.key not in headers:
                headers[variant.key] = read_variant_header(snapshot, variant)
    header = headers[reference.key]
    model = check_architecture(header.model)
    return ModelInfo(
        ref=facts.ref,
        repo_id=facts.repo_id,
        revision=facts.revision,
        commit=facts.commit,
        files=variant_files(snapshot, reference),
        config=config_from_gguf(model),
        weights=weight_stats_of(header),
        architecture=model.architecture,
        context_length=model.context_length,
        quantization=None,
        license=facts.license or _license_from(header),
        gated=facts.gated,
        answered_by=facts.answered_by,
        format="gguf",
        gguf=GgufRepo(listing=listing, headers=headers, reference=reference.key),
    )


def _license_from(header: GgufHeader) -> str | None:
    value = header.metadata.get("general.license")
    return value if isinstance(value, str) and value else None
