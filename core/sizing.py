"""Memory model: weights by actual dtype, KV cache bytes per token, and the fixed overheads of a server.

Everything here reads ``config.json`` and the safetensors header statistics only (never weight data).
The constants are the measured numbers collected in ``shared/notes/llm-memory-sizing.md`` (sources are
vLLM issue threads and the llm-d-planner accuracy report; each constant names its source below).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from core.errors import PlanError
from core.hubs.base import WeightStats

GIB = 1 << 30

# Bytes per element of each safetensors dtype. Packed quantized weights (AWQ/GPTQ int4 in I32, bitsandbytes
# in U8) are stored as whole elements, so count × size is still their exact size on disk and in memory.
SAFETENSORS_DTYPE_BYTES: Mapping[str, int] = {
    "F64": 8,
    "I64": 8,
    "U64": 8,
    "F32": 4,
    "I32": 4,
    "U32": 4,
    "F16": 2,
    "BF16": 2,
    "I16": 2,
    "U16": 2,
    "F8_E4M3": 1,
    "F8_E5M2": 1,
    "F8_E8M0": 1,
    "I8": 1,
    "U8": 1,
    "BOOL": 1,
}
# Floating-point tensors of an unquantized checkpoint are cast to the serving dtype when loaded.
_CASTABLE_DTYPES = frozenset({"F64", "F32", "F16", "BF16"})

TORCH_DTYPE_BYTES: Mapping[str, int] = {"float32": 4, "float16": 2, "bfloat16": 2, "float64": 8}
_DTYPE_ALIASES: Mapping[str, str] = {
    "bf16": "bfloat16",
    "fp16": "float16",
    "half": "float16",
    "float": "float32",
    "fp32": "float32",
    "torch.bfloat16": "bfloat16",
    "torch.float16": "float16",
    "torch.float32": "float32",
}

# OVERHEADS (per GPU, on top of weights and KV cache)
# vLLM's measured non-torch allocations: 0.07-0.27 GiB at TP 1 (CUDA context, cuBLAS workspaces) and about
# 2.1 GiB per GPU at TP >= 2 (NCCL and custom all-reduce buffers) — notes §1.1 "Fixed overheads" and §4.2.10.
NON_TORCH_BYTES_SINGLE_GPU = int(0.25 * GIB)
NON_TORCH_BYTES_MULTI_GPU = int(2.1 * GIB)
# Peak activation during vLLM's profiling run. Calibrated on the one complete measurement in the notes (§3):
# Llama-3.1-8B bf16 on an H100 at utilization 0.95 — 79.19 × 0.95 − 14.99 weights − 58.11 KV = 2.13 GiB,
# less 0.25 GiB non-torch = ~1.9 GiB for hidden size 4096. It scales with hidden size and is clamped to
# the 1-4 GiB range the notes give for vLLM >= 0.17 (with a 0.5 GiB floor for sub-1B models).
ACTIVATION_BYTES_REFERENCE = int(1.9 * GIB)
ACTIVATION_REFERENCE_HIDDEN_SIZE = 4096
ACTIVATION_BYTES_MIN = int(0.5 * GIB)
ACTIVATION_BYTES_MAX = 4 * GIB
# transformers serve has no profiler: a CUDA context plus allocator slack on a GPU, and on a CPU the Python
# process with torch, the tokenizer and the HTTP server. Estimates, not measurements.
TRANSFORMERS_GPU_RUNTIME_BYTES = 1 * GIB
TRANSFORMERS_CPU_RUNTIME_BYTES = int(1.5 * GIB)
# vLLM keeps (window - 1 + max_num_batched_tokens) tokens per sliding-window layer (notes §1.1); 8192 is the
# largest default max_num_batched_tokens of the API server, so this errs on the large side.
SLIDING_WINDOW_EXTRA_TOKENS = 8192

# Sliding windows are only modelled for families whose windows vLLM honours; others count as full attention
# (which can only over-estimate the KV cache).
_SLIDING_WINDOW_ALL_LAYERS = frozenset({"mistral", "mixtral"})

# transformers config-class defaults for fields some real configs leave out (checked against transformers
# 5.23: Gemma3TextConfig() has head_dim 256 although hidden 3840 / 16 heads = 240 for Gemma-3-12B).
_CONFIG_DEFAULTS: Mapping[str, Mapping[str, Any]] = {
    "gemma3_text": {
        "head_dim": 256,
        "max_position_embeddings": 131072,
        "vocab_size": 262208,
        "num_key_value_heads": 4,
        "sliding_window": 4096,
        "sliding_window_pattern": 6,
        "tie_word_embeddings": True,
    },
    "gemma2": {"head_dim": 256, "tie_word_embeddings": True},
    "gemma": {"head_dim": 256, "tie_word_embeddings": True},
}


@dataclass(frozen=True)
class QuantizationScheme:
    """How a pre-quantized checkpoint stores its weights (from ``quantization_config``)."""

    method: str  # "awq", "gptq", "fp8", "compressed-tensors", "bitsandbytes", "mxfp4", ...
    bits: int | None = None
    group_size: int | None = None

    @property
    def label(self) -> str:
        parts = [self.method]
        if self.bits:
            parts.append(f"{self.bits}-bit")
        if self.group_size:
            parts.append(f"group {self.group_size}")
        return " ".join(parts)


@dataclass(frozen=True)
class ModelShape:
    """The few config.json numbers that memory and parallelism depend on, with the quirks resolved."""

    model_type: str | None
    num_layers: int
    hidden_size: int
    num_attention_heads: int
    num_kv_heads: int
    head_dim: int
    vocab_size: int
    intermediate_size: int | None
    context_length: int | None  # max_position_embeddings (already rope-adjusted in Llama 3.1 configs)
    tie_word_embeddings: bool
    checkpoint_dtype: str | None  # normalised torch dtype name, "bfloat16"
    mla_latent_dim: int | None = None  # kv_lora_rank + qk_rope_head_dim for DeepSeek-style MLA
    sliding_window: int | None = None
    sliding_window_layers: int = 0  # how many layers attend within the window
    num_experts: int | None = None
    quantization: QuantizationScheme | None = None
    nested_text_config: bool = False

    @property
    def is_mla(self) -> bool:
        return self.mla_latent_dim is not None

    @property
    def is_moe(self) -> bool:
        return bool(self.num_experts and self.num_experts > 1)


def normalise_dtype(name: object) -> str | None:
    """``"bf16"``, ``"torch.bfloat16"`` and ``"bfloat16"`` all become ``"bfloat16"``; unknown → None."""
    if not isinstance(name, str):
        return None
    lowered = name.strip().lower()
    lowered = _DTYPE_ALIASES.get(lowered, lowered)
    return lowered if lowered in TORCH_DTYPE_BYTES else None


def text_config(config: Mapping[str, Any]) -> tuple[dict[str, Any], bool]:
    """The language-model part of a config: top-level keys overlaid by ``text_config`` when nested."""
    nested = config.get("text_config")
    merged = {k: v for k, v in config.items() if k not in ("text_config", "vision_config", "audio_config")}
    if not isinstance(nested, Mapping):
        return merged, False
    merged.update(nested)
    if "model_type" not in nested and config.get("model_type") == "gemma3":
        merged["model_type"] = "gemma3_text"
    return merged, True


def _int(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def quantization_scheme(
    *, config: Mapping[str, Any], quantization: Mapping[str, Any] | None = None
) -> QuantizationScheme | None:
    """Read ``quantization_config`` (top level or under ``text_config``), or the hub's copy of it."""
    qc: object = quantization
    if not isinstance(qc, Mapping) or not qc:
        qc = config.get("quantization_config")
    if not isinstance(qc, Mapping):
        nested = config.get("text_config")
        qc = nested.get("quantization_config") if isinstance(nested, Mapping) else None
    if not isinstance(qc, Mapping):
        return None
    method = str(qc.get("quant_method") or "unknown").lower()
    bits = _int(qc.get("bits")) or _int(qc.get("w_bit"))
    group_size = _int(qc.get("group_size")) or _int(qc.get("q_group_size"))
    if method == "fp8":
        bits = 8
    elif method == "mxfp4":
        bits = 4
    elif method == "bitsandbytes":
        bits = 4 if qc.get("load_in_4bit") else 8
    elif method == "compressed-tensors":
        groups = qc.get("config_groups")
        if isinstance(groups, Mapping):
            for group in groups.values():
                weights = group.get("weights") if isinstance(group, Mapping) else None
                if isinstance(weights, Mapping):
                    bits = _int(weights.get("num_bits")) or bits
                    group_size = _int(weights.get("group_size")) or group_size
                    break
    return QuantizationScheme(method=method, bits=bits, group_size=group_size)


def model_shape(*, config: Mapping[str, Any], quantization: Mapping[str, Any] | None = None) -> ModelShape:
    """Resolve config.json quirks: ``text_config`` nesting, explicit or null ``head_dim``, GQA, MLA,
    ``torch_dtype`` vs ``dtype``, sliding windows and per-family defaults for missing keys."""
    cfg, nested = text_config(config)
    model_type = cfg.get("model_type") if isinstance(cfg.get("model_type"), str) else None
    defaults = _CONFIG_DEFAULTS.get(model_type or "", {})

    def get(key: str) -> Any:
        value = cfg.get(key)
        return defaults.get(key) if value is None else value

    layers = _int(get("num_hidden_layers")) or _int(get("n_layer")) or _int(get("num_layers"))
    hidden = _int(get("hidden_size")) or _int(get("n_embd")) or _int(get("d_model"))
    heads = _int(get("num_attention_heads")) or _int(get("n_head"))
    if not layers or not hidden or not heads:
        missing = [
            k
            for k, v in (
                ("num_hidden_layers", layers),
                ("hidden_size", hidden),
                ("num_attention_heads", heads),
            )
            if not v
        ]
        raise PlanError(
            f"config.json lacks {', '.join(missing)}, so the model's memory cannot be sized.",
            hint="Check that the repository is a transformer language model with a standard config.json.",
        )
    kv_heads = _int(get("num_key_value_heads")) or _int(get("num_kv_heads")) or heads  # absent → MHA
    # vLLM's get_head_size: explicit head_dim wins (Qwen3, Mistral-Nemo, Gemma), null falls back to
    # hidden // heads; PLaMo spells it hidden_size_per_head.
    head_dim = _int(get("head_dim")) or _int(get("hidden_size_per_head")) or hidden // heads

    mla_latent_dim = None
    kv_lora_rank, rope_dim = _int(cfg.get("kv_lora_rank")), _int(cfg.get("qk_rope_head_dim"))
    if kv_lora_rank and rope_dim is not None:
        mla_latent_dim = kv_lora_rank + rope_dim

    sliding_window, sliding_layers = _sliding_window(cfg=cfg, get=get, model_type=model_type, layers=layers)
    experts = (
        _int(cfg.get("n_routed_experts"))
        or _int(cfg.get("num_local_experts"))
        or _int(cfg.get("num_experts"))
    )
    tie = get("tie_word_embeddings")
    return ModelShape(
        model_type=model_type,
        num_layers=layers,
        hidden_size=hidden,
        num_attention_heads=heads,
        num_kv_heads=kv_heads,
        head_dim=head_dim,
        vocab_size=_int(get("vocab_size")) or 0,
        intermediate_size=_int(get("intermediate_size")),
        context_length=_int(get("max_position_embeddings"))
        or _int(get("seq_length"))
        or _int(get("n_positions")),
        tie_word_embeddings=bool(tie) if tie is not None else False,
        checkpoint_dtype=normalise_dtype(cfg.get("torch_dtype")) or normalise_dtype(cfg.get("dtype")),
        mla_latent_dim=mla_latent_dim,
        sliding_window=sliding_window,
        sliding_window_layers=sliding_layers,
        num_experts=experts,
        quantization=quantization_scheme(config=config, quantization=quantization),
        nested_text_config=nested,
    )


def _sliding_window(
    *, cfg: Mapping[str, Any], get: Any, model_type: str | None, layers: int
) -> tuple[int | None, int]:
    window = _int(get("sliding_window"))
    if not window or cfg.get("use_sliding_window") is False:
        return None, 0  # Qwen2/2.5 set a window but switch it off
    layer_types = cfg.get("layer_types")
    if isinstance(layer_types, list) and layer_types:
        count = sum(1 for t in layer_types[:layers] if t == "sliding_attention")
        return (window, count) if count else (None, 0)
    pattern = _int(get("sliding_window_pattern"))
    if pattern and pattern > 1:  # Gemma 3: every pattern-th layer is global
        return window, layers - layers // pattern
    if model_type in _SLIDING_WINDOW_ALL_LAYERS:
        return window, layers
    return None, 0


# WEIGHTS


def _elements_and_bytes(weights: WeightStats) -> dict[str, tuple[int, int]]:
    """Per safetensors dtype: (element count, bytes). Either mapping may be missing in the stats."""
    out: dict[str, tuple[int, int]] = {}
    for dtype in set(weights.parameters_by_dtype) | set(weights.bytes_by_dtype):
        size = SAFETENSORS_DTYPE_BYTES.get(dtype.upper(), 2)  # unknown dtype: assume 16-bit
        count = weights.parameters_by_dtype.get(dtype)
        nbytes = weights.bytes_by_dtype.get(dtype)
        if count is None and nbytes is not None:
            count = nbytes // size
        if nbytes is None and count is not None:
            nbytes = count * size
        out[dtype.upper()] = (count or 0, nbytes or 0)
    return out


def estimated_parameters(*, shape: ModelShape) -> int:
    """A config-only parameter count, used only when no safetensors statistics exist."""
    attention = (
        shape.num_layers
        * shape.hidden_size
        * shape.head_dim
        * (2 * shape.num_attention_heads + 2 * shape.num_kv_heads)
    )
    mlp = shape.num_layers * 3 * shape.hidden_size * (shape.intermediate_size or 4 * shape.hidden_size)
    mlp *= shape.num_experts or 1
    embeddings = shape.vocab_size * shape.hidden_size * (1 if shape.tie_word_embeddings else 2)
    return attention + mlp + embeddings


def checkpoint_weights_bytes(*, weights: WeightStats) -> int:
    """Exact tensor bytes in the safetensors files, as stored."""
    return sum(nbytes for _, nbytes in _elements_and_bytes(weights).values())


def loaded_weights_bytes(*, weights: WeightStats, shape: ModelShape, dtype: str) -> int:
    """Bytes the serving process holds for the weights when it runs in ``dtype``.

    * Unquantized checkpoints: floating tensors are cast to ``dtype`` (an fp32 checkpoint served in bf16
      halves; a bf16 one served in fp32 on a CPU doubles).
    * Quantized checkpoints keep their stored bytes: packed int4 (I32), fp8 and the 16-bit embeddings and
      scales are what the kernels use (Qwen2.5-7B AWQ: 5.19 GiB vs 5.20 GiB measured in vllm#13882).
    * Tied embeddings: when ``tie_word_embeddings`` is set but the checkpoint also stores ``lm_head``,
      the copy is dropped at load (Qwen3-0.6B: 1.40 GiB on disk, 1.12 GiB loaded in vLLM).
    """
    target = TORCH_DTYPE_BYTES[dtype]
    stats = _elements_and_bytes(weights)
    if not stats:
        return estimated_parameters(shape=shape) * target
    quantized = shape.quantization is not None
    total = 0
    for name, (count, nbytes) in stats.items():
        total += count * target if (not quantized and name in _CASTABLE_DTYPES) else nbytes
    if shape.tie_word_embeddings and weights.lm_head_bytes:
        stored = TORCH_DTYPE_BYTES.get(shape.checkpoint_dtype or "", target)
        total -= weights.lm_head_bytes if quantized else weights.lm_head_bytes * target // stored
    return total


def unpacked_parameter_count(*, weights: WeightStats, shape: ModelShape) -> int:
    """Parameter count with packed int tensors expanded (an I32 element of a 4-bit AWQ holds 8 weights)."""
    stats = _elements_and_bytes(weights)
    bits = shape.quantization.bits if shape.quantization else None
    total = 0
    for name, (count, _) in stats.items():
        if bits and bits < 8 and name in ("I32", "U32", "U8", "I8"):
            total += count * (SAFETENSORS_DTYPE_BYTES[name] * 8 // bits)
        else:
            total += count
    return total


# KV CACHE


def kv_heads_per_rank(*, shape: ModelShape, tensor_parallel_size: int) -> int:
    """vLLM shards KV heads across ranks and replicates them once TP exceeds their count; MLA keeps one
    latent "head" on every rank (``get_num_kv_heads`` returns 1), so it is never split."""
    if shape.is_mla:
        return 1
    return max(1, shape.num_kv_heads // tensor_parallel_size)


def kv_cache_bytes_per_token(
    *, shape: ModelShape, kv_dtype_bytes: int = 2, tensor_parallel_size: int = 1
) -> int:
    """KV bytes for one token on one rank (``tensor_parallel_size`` 1: the whole model).

    Dense/GQA: ``2 (K and V) × layers × kv heads per rank × head_dim × bytes``.
    MLA: ``layers × (kv_lora_rank + qk_rope_head_dim) × bytes`` — one compressed latent, no factor 2.
    """
    if shape.mla_latent_dim is not None:
        return shape.num_layers * shape.mla_latent_dim * kv_dtype_bytes
    heads = kv_heads_per_rank(shape=shape, tensor_parallel_size=tensor_parallel_size)
    return 2 * shape.num_layers * heads * shape.head_dim * kv_dtype_bytes


def _window_tokens(shape: ModelShape) -> int:
    return (shape.sliding_window or 0) + SLIDING_WINDOW_EXTRA_TOKENS


def kv_cache_bytes(
    *, shape: ModelShape, tokens: int, kv_dtype_bytes: int = 2, tensor_parallel_size: int = 1
) -> int:
    """KV bytes one rank needs for one sequence of ``tokens`` (sliding-window layers stop growing)."""
    per_token = kv_cache_bytes_per_token(
        shape=shape, kv_dtype_bytes=kv_dtype_bytes, tensor_parallel_size=tensor_parallel_size
    )
    per_layer = per_token // shape.num_layers
    sliding = shape.sliding_window_layers
    full = shape.num_layers - sliding
    return per_layer * (full * tokens + sliding * min(tokens, _window_tokens(shape)))


def tokens_that_fit(
    *, shape: ModelShape, kv_bytes: int, kv_dtype_bytes: int = 2, tensor_parallel_size: int = 1
) -> int:
    """The longest single sequence whose KV cache fits in ``kv_bytes`` on one rank (inverse of
    ``kv_cache_bytes``); capped at 2**31 when only sliding-window layers exist."""
    if kv_bytes <= 0:
        return 0
    per_token = kv_cache_bytes_per_token(
        shape=shape, kv_dtype_bytes=kv_dtype_bytes, tensor_parallel_size=tensor_parallel_size
    )
    tokens = kv_bytes // per_token
    sliding = shape.sliding_window_layers
    window = _window_tokens(shape)
    if not sliding or tokens <= window:
        return int(tokens)
    per_layer = per_token // shape.num_layers
    full = shape.num_layers - sliding
    if full == 0:
        return 2**31
    return int((kv_bytes - per_layer * sliding * window) // (per_layer * full))


# OVERHEADS


def activation_bytes(*, shape: ModelShape) -> int:
    """vLLM's profiled peak activation for one GPU (see ``ACTIVATION_BYTES_REFERENCE``)."""
    scaled = ACTIVATION_BYTES_REFERENCE * shape.hidden_size / ACTIVATION_REFERENCE_HIDDEN_SIZE
    return int(min(ACTIVATION_BYTES_MAX, max(ACTIVATION_BYTES_MIN, scaled)))


def non_torch_bytes(*, tensor_parallel_size: int) -> int:
    """CUDA context and library workspaces; NCCL buffers dominate as soon as two GPUs talk."""
    return NON_TORCH_BYTES_SINGLE_GPU if tensor_parallel_size <= 1 else NON_TORCH_BYTES_MULTI_GPU


def round_down(value: int, multiple: int) -> int:
    return (value // multiple) * multiple


def gib(value: float) -> float:
    """Bytes → GiB rounded to two decimals, for messages."""
    return round(value / GIB, 2)


def ceil_div(a: int, b: int) -> int:
    return -(-a // b) if b else 0


# NVML reports the whole card; CUDA (cudaMemGetInfo, which vLLM budgets from) sees less: the driver keeps
# a reservation. Measured on an H100 80GB HBM3, driver 580.159.04: NVML 85,520,809,984 B total,
# 503,316,480 B (480 MiB) reserved, torch.cuda.mem_get_info total 85,017,493,504 B (scripts/check-gpu).
DRIVER_RESERVED_BYTES = 480 << 20


def cuda_visible_bytes(nvml_total_bytes: int) -> int:
    """Memory CUDA can allocate on a GPU whose NVML total is ``nvml_total_bytes``."""
    return max(0, nvml_total_bytes - DRIVER_RESERVED_BYTES)
