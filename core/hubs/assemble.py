"""What every hub does the same way: read config facts, build ``ModelInfo``, verify a download."""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from core import errors, events
from core.errors import (
    ChecksumMismatchError,
    DownloadError,
    EzRunnerError,
    HubAnswerError,
    ModelConfigError,
    NoSafetensorsError,
)
from core.events import Cancel as CancelFlag
from core.events import Event, EventSink
from core.hubs.base import ModelFile, ModelInfo, WeightStats
from core.refs import ModelRef

#: bytes per element, to turn the hubs' per-dtype parameter counts into a size estimate for search
DTYPE_BYTES: Mapping[str, float] = {
    "F64": 8, "I64": 8, "U64": 8,
    "F32": 4, "I32": 4, "U32": 4,
    "F16": 2, "BF16": 2, "I16": 2, "U16": 2,
    "F8_E4M3": 1, "F8_E5M2": 1, "F8_E8M0": 1, "I8": 1, "U8": 1, "BOOL": 1,
    "F4": 0.5, "F6_E2M3": 0.75, "F6_E3M2": 0.75,
}  # fmt: skip

_CONTEXT_KEYS = ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length", "n_ctx")
# multimodal and wrapper configs keep the language model's settings one level down
_NESTED_CONFIGS = ("text_config", "llm_config", "language_config", "thinker_config")

_HASH_CHUNK = 8 << 20

#: the input key of errors about a model's config.json
CONFIG_FIELD = errors.CONFIG
# The sizes the memory model reads, with the range a real model stays in. Lower bound 1: a model has
# layers, width, heads and a context; lower bound 0: the key may be 0 where a model lacks the part (no
# experts). Upper bounds are orders of magnitude above the largest models published (hidden 16,384,
# 256 experts, 262,144-token vocabularies, 10,485,760 positions for Llama 4 Scout): a value past them is
# a damaged or hostile config, and would plan an astronomical cache.
MAX_CONTEXT_TOKENS = 1 << 28
_CONFIG_BOUNDS: Mapping[str, tuple[int, int]] = {
    "num_hidden_layers": (1, 10_000), "n_layer": (1, 10_000), "num_layers": (1, 10_000),
    "hidden_size": (1, 1 << 20), "n_embd": (1, 1 << 20), "d_model": (1, 1 << 20),
    "num_attention_heads": (1, 1 << 16), "n_head": (1, 1 << 16),
    "num_key_value_heads": (1, 1 << 16), "num_kv_heads": (1, 1 << 16),
    "head_dim": (1, 1 << 16),
    "vocab_size": (1, 1 << 26),
    "intermediate_size": (0, 1 << 24), "moe_intermediate_size": (0, 1 << 24),
    "num_local_experts": (0, 1 << 16), "n_routed_experts": (0, 1 << 16), "num_experts": (0, 1 << 16),
    "num_experts_per_tok": (0, 1 << 16),
    **{key: (1, MAX_CONTEXT_TOKENS) for key in _CONTEXT_KEYS},
}  # fmt: skip


def cut_short(name: str, path: str, error: BaseException) -> HubAnswerError:
    """A file's answer that began and then stopped short of its declared length (not an outage)."""
    return HubAnswerError(
        f"The hub's answer for {path} of {name} ended before the length it declared ({type(error).__name__}).",
        hint="Try again; if it keeps happening, a proxy or mirror between you and the hub cuts answers short.",
        field=errors.MODEL,
    )


@contextmanager
def unreadable_answers(*, hub: str, endpoint: str, endpoint_variable: str, name: str) -> Iterator[None]:
    """Around a hub client's calls only (not our own code): an answer it cannot make sense of, such as an HTML
    page from a proxy, surfaces from inside it as ValueError, KeyError or TypeError."""
    try:
        yield
    except EzRunnerError:
        raise
    except (ValueError, KeyError, TypeError) as error:
        raise HubAnswerError(
            f"{hub} ({endpoint}) answered something unreadable for {name} ({type(error).__name__}).",
            hint=f"Check {endpoint_variable} (a proxy or captive portal may answer instead), then try again.",
        ) from error


def missing_config(repo: str) -> NoSafetensorsError:
    return NoSafetensorsError(
        f"'{repo}' has no config.json, so it is not a Hugging Face transformers model.",
        hint="Pick the transformers/safetensors variant of this model (the one with config.json).",
    )


def check_config_values(config: Mapping[str, Any], *, label: str | None = None) -> None:
    """Refuse a config.json whose sizes no real model has (negative, zero, fractional, astronomical) or
    that contradict each other (more key/value heads than heads), naming the key: it would otherwise be
    planned with a negative or astronomical context. Absent and null keys are left to the defaults."""
    where = f"config.json of {label}" if label else "config.json"
    for prefix, table in _config_tables(config):
        for key, (low, high) in _CONFIG_BOUNDS.items():
            value = table.get(key)
            if value is None:
                continue
            integral = isinstance(value, int) or (isinstance(value, float) and value.is_integer())
            if isinstance(value, bool) or not integral or not low <= value <= high:
                raise ModelConfigError(
                    f"{where}: {prefix}{key} is {value!r}; it must be a whole number from {low} to {high:,}.",
                    hint="The config.json is damaged or was edited by hand: restore the model's original one, "
                    "or pick another revision.",
                    field=CONFIG_FIELD,
                )
        heads, kv_heads = table.get("num_attention_heads"), table.get("num_key_value_heads")
        if isinstance(heads, int) and isinstance(kv_heads, int) and kv_heads > heads:
            raise ModelConfigError(
                f"{where}: {prefix}num_key_value_heads ({kv_heads}) is more than "
                f"{prefix}num_attention_heads ({heads}), which no attention layer has.",
                hint="Restore the model's original config.json, or pick another revision.",
                field=CONFIG_FIELD,
            )


def _config_tables(config: Mapping[str, Any]) -> list[tuple[str, Mapping[str, Any]]]:
    tables: list[tuple[str, Mapping[str, Any]]] = [("", config)]
    for nested in _NESTED_CONFIGS:
        sub = config.get(nested)
        if isinstance(sub, Mapping):
            tables.append((f"{nested}.", sub))
    return tables


def _lookup(config: Mapping[str, Any], keys: tuple[str, ...]) -> Any:
    for key in keys:
        if config.get(key) is not None:
            return config[key]
    for nested in _NESTED_CONFIGS:
        sub = config.get(nested)
        if isinstance(sub, Mapping):
            for key in keys:
                if sub.get(key) is not None:
                    return sub[key]
    return None


def architecture_of(config: Mapping[str, Any]) -> str | None:
    architectures = config.get("architectures")
    if isinstance(architectures, list) and architectures:
        return str(architectures[0])
    return None


def context_length_of(config: Mapping[str, Any]) -> int | None:
    value = _lookup(config, _CONTEXT_KEYS)
    return int(value) if isinstance(value, int | float) and value > 0 else None


def quantization_of(config: Mapping[str, Any]) -> Mapping[str, Any] | None:
    value = _lookup(config, ("quantization_config", "compression_config"))
    return value if isinstance(value, Mapping) else None


def build_model_info(
    *,
    ref: ModelRef,
    repo_id: str,
    revision: str,
    commit: str,
    files: list[ModelFile],
    config: Mapping[str, Any],
    weights: WeightStats,
    license: str | None,
    gated: bool,
    answered_by: str,
) -> ModelInfo:
    return ModelInfo(
        ref=ref,
        repo_id=repo_id,
        revision=revision,
        commit=commit,
        files=tuple(sorted(files, key=lambda f: f.path)),
        config=config,
        weights=weights,
        architecture=architecture_of(config),
        context_length=context_length_of(config),
        quantization=quantization_of(config),
        license=license,
        gated=gated,
        answered_by=answered_by,
    )


def estimate_bytes(parameters_by_dtype: Mapping[str, int]) -> int | None:
    """Weight bytes from per-dtype parameter counts (search results), None when a dtype is unknown."""
    total = 0.0
    for dtype, count in parameters_by_dtype.items():
        width = DTYPE_BYTES.get(dtype.upper())
        if width is None:
            return None
        total += width * count
    return int(total) if parameters_by_dtype else None


def raise_if_cancelled(cancel: CancelFlag | None) -> None:
    events.raise_if_cancelled(
        cancel, message="The download was cancelled.", hint="Start it again to resume where it stopped."
    )


class StopDownload(BaseException):
    """Raised from inside the hub clients' progress hooks when the user cancels.

    It derives from BaseException on purpose: both clients catch ``Exception`` around each chunk to
    retry, and a cancel must not be retried; it unwinds to our ``download`` and becomes CancelledError.
    """


class ByteProgress:
    """Turns the clients' per-chunk byte counts (from several threads) into monotonic download Events."""

    def __init__(self, *, on_event: EventSink, total: int, cancel: CancelFlag | None) -> None:
        self._on_event = on_event
        self._total = total
        self._cancel = cancel
        self._lock = threading.Lock()
        self._done = 0
        self._reported = 0

    def check_cancel(self) -> None:
        if self._cancel is not None and self._cancel.is_set():
            raise StopDownload

    def add(self, count: int, *, file: str | None = None) -> None:
        self.check_cancel()
        with self._lock:
            self._done += count  # a restarted file reports a negative count: never shown as going back
            value = max(0, min(self._done, self._total))
            if value <= self._reported:
                return
            self._reported = value
        self._on_event(Event(stage="download", done=value, total=self._total, unit="B", file=file))

    def finish(self) -> None:
        """Files already on disk report nothing; the download still ends at its total."""
        with self._lock:
            if self._reported >= self._total:
                return
            self._reported = self._total
        self._on_event(Event(stage="download", done=self._total, total=self._total, unit="B"))


def verify_download(*, folder: Path, model: ModelInfo, on_event: EventSink, cancel: CancelFlag | None) -> None:
    """Check every packed file's size, and sha256 where the hub gave one (reads each file once)."""
    to_hash = sum(f.size for f in model.files if f.sha256)
    hashed = 0
    for entry in model.files:
        raise_if_cancelled(cancel)
        path = folder / entry.path
        if not path.is_file():
            raise DownloadError(
                f"'{entry.path}' is missing from the download of {model.repo_id}.",
                hint="Run the download again; it resumes and fetches the missing file.",
            )
        size = path.stat().st_size
        if size != entry.size:
            _discard(path)
            raise ChecksumMismatchError(
                f"'{entry.path}' of {model.repo_id} had {size} bytes on disk, the hub lists {entry.size}.",
                hint="The bad copy was deleted; run the download again to fetch it fresh.",
            )
        if not entry.sha256:
            continue
        digest = hashlib.sha256()
        with path.open("rb") as handle:
            while block := handle.read(_HASH_CHUNK):
                digest.update(block)
                hashed += len(block)
                on_event(Event(stage="verify", done=hashed, total=to_hash, unit="B", file=entry.path))
                raise_if_cancelled(cancel)
        if digest.hexdigest() != entry.sha256.lower():
            _discard(path)
            raise ChecksumMismatchError(
                f"'{entry.path}' of {model.repo_id} does not match the hub's sha256 "
                f"(expected {entry.sha256[:12]}…, got {digest.hexdigest()[:12]}…).",
                hint="The bad copy was deleted; run the download again to fetch it fresh.",
            )


def _discard(path: Path) -> None:
    """Remove a bad file from a hub cache, and the blob behind it (HF snapshots are symlinks to blobs),
    so the next download fetches it instead of trusting the cached copy."""
    target = path.resolve()
    path.unlink(missing_ok=True)
    if target != path:
        target.unlink(missing_ok=True)
