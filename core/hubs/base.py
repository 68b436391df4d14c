"""What every hub returns: summaries for search, a full ``ModelInfo`` for inspect, a folder for download."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Literal, Protocol

from core.events import Cancel as CancelFlag
from core.events import EventSink
from core.gguf import GgufHeader, GgufListing, GgufVariant
from core.refs import ModelRef

HubName = Literal["hf", "ms", "local"]
ModelFormat = Literal["safetensors", "gguf"]


@dataclass(frozen=True)
class SearchFilters:
    task: str | None = None  # pipeline tag, e.g. "text-generation"
    min_params: int | None = None
    max_params: int | None = None
    safetensors_only: bool = False


@dataclass(frozen=True)
class ModelSummary:
    id: str
    source: HubName
    downloads: int | None = None
    likes: int | None = None
    updated: datetime | None = None
    pipeline_tag: str | None = None
    gated: bool = False
    parameters: int | None = None
    size_bytes: int | None = None
    license: str | None = None


@dataclass(frozen=True)
class ModelFile:
    path: str  # relative to the repo root, "/"-separated
    size: int
    sha256: str | None = None  # from the hub (LFS oid) where it gives one


@dataclass(frozen=True)
class WeightStats:
    """Read from the safetensors headers only (HTTP range or local header read, never the data)."""

    parameters_by_dtype: Mapping[str, int] = field(default_factory=dict)  # {"BF16": 8030261248}
    bytes_by_dtype: Mapping[str, int] = field(default_factory=dict)  # exact tensor bytes per dtype
    tensor_count: int = 0
    lm_head_bytes: int = 0  # bytes of lm_head.weight, so tied embeddings can be de-duplicated

    @property
    def total_parameters(self) -> int:
        return sum(self.parameters_by_dtype.values())

    @property
    def total_bytes(self) -> int:
        return sum(self.bytes_by_dtype.values())


@dataclass(frozen=True)
class GgufRepo:
    """The GGUF side of a repository: every quantization it offers and the headers that were read.

    A hub reads one variant's header (``reference``; the others share its tensors and metadata and differ
    in tensor bytes, which their file sizes give); a local folder reads them all."""

    listing: GgufListing
    headers: Mapping[str, GgufHeader]  # variant key -> its header
    reference: str  # the variant whose header stands in for those not read

    def variant(self, key: str) -> GgufVariant:
        for variant in self.listing.variants:
            if variant.key == key:
                return variant
        raise KeyError(key)

    @property
    def header(self) -> GgufHeader:
        return self.headers[self.reference]


@dataclass(frozen=True)
class ModelInfo:
    """Everything planning needs; nothing below ``plan()`` asks the hub again."""

    ref: ModelRef  # resolved: source is "hf", "ms" or "local", never "auto"
    repo_id: str  # "org/name", or the folder name for a local model
    revision: str  # what was asked ("main", "master", a tag or a sha)
    commit: str  # the pinned commit sha; for a local folder a content digest of the packed files
    files: tuple[ModelFile, ...]  # exactly the files that will be packed
    config: Mapping[str, Any]  # parsed config.json
    weights: WeightStats
    architecture: str | None = None
    context_length: int | None = None
    quantization: Mapping[str, Any] | None = None
    license: str | None = None
    gated: bool = False
    answered_by: str = ""  # human words for who answered ("ModelScope", "Hugging Face", "local folder")
    format: ModelFormat = "safetensors"  # what the packed weights are
    gguf: GgufRepo | None = None  # the GGUF variants, when format is "gguf"
    # For a bare org/name: which hub answered and why that one ("not on ModelScope; found on Hugging Face")
    lookup_note: str = ""

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)

    @property
    def name(self) -> str:
        """Last path component, used for ``/models/<name>`` and the served model name."""
        return self.repo_id.rsplit("/", 1)[-1]


class Hub(Protocol):
    name: HubName

    def search(self, *, query: str, limit: int = 20, filters: SearchFilters | None = None) -> list[ModelSummary]: ...

    def inspect(
        self, *, ref: ModelRef, revision: str | None = None, token: str | None = None, quant: str | None = None
    ) -> ModelInfo:
        """Pin ``revision`` and read what planning needs; ``quant`` picks a GGUF quantization's header."""
        ...

    def download(
        self,
        *,
        model: ModelInfo,
        token: str | None = None,
        on_event: EventSink,
        cancel: CancelFlag | None = None,
        cache_dir: Path | None = None,
    ) -> Path:
        """Fetch exactly ``model.files`` at ``model.commit`` (resuming), verify sha256, return the folder.

        ``cache_dir`` None means the hub client's own cache (HF_HUB_CACHE / MODELSCOPE_CACHE)."""
        ...
