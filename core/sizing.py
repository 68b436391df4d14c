"""Memory model: weights by actual dtype, KV cache bytes per token, and the fixed overheads of a server.

Everything here reads ``config.json`` and the safetensors header statistics only (never weight data).
The constants are the measured numbers collected in ``shared/notes/llm-memory-sizing.md`` (sources are
vLLM issue threads and the llm-d-planner accuracy report; each constant names its source below).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from core import errors
from core.errors import ModelConfigError, PlanError
from core.hubs.assemble import check_config_values
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

# Families whose every layer attends within `sliding_window` when one is set (Mistral v0.1, Mixtral).
_SLIDING_WINDOW_ALL_LAYERS = frozenset({"mistral", "mixtral"})
# Gemma 2 and its relatives alternate sliding and global layers, sliding on even layer indices (vLLM
# model_executor/models/gemma2.py: `sliding_window if layer_idx % 2 == 0`).
_ALTERNATING_SLIDING = frozenset({"gemma2", "cohere2"})
# Models whose MTP (multi-token prediction) layers are in the checkpoint but are only loaded when speculative
# decoding asks for them (vLLM deepseek_v2.py / glm4_moe.py skip `layers.{num_hidden_layers}+` weights).
_MTP_SKIPPED_AT_LOAD = frozenset({"deepseek_v3", "deepseek_v32", "kimi_k2", "glm4_moe"})
# vLLM's quantization methods (vllm/model_executor/layers/quantization/__init__.py, v0.33.0) that store
# weights EZ Runner sizes from their safetensors bytes. Others are named in ModelShape.assumptions.
KNOWN_QUANTIZATION_METHODS = frozenset(
    {
        "awq", "awq_marlin", "gptq", "gptq_marlin", "gptq_marlin_24", "fp8", "fbgemm_fp8", "ptpc_fp8",
        "compressed-tensors", "bitsandbytes", "mxfp4", "modelopt", "modelopt_fp4", "gguf", "experts_int8",
        "moe_wna16", "auto-round", "torchao", "quark", "fp_quant", "petit_nvfp4", "hqq", "inc", "bitblas",
        "marlin", "deepspeedfp", "tpu_int8", "ipex", "nvfp4",
    }
)
# MXFP4 expert tensors (U8 blocks + U8 scales) take more memory in vLLM than in the file: the kernels
# re-layout (swizzle) the weights and scales. Calibrated on three loads: gpt-oss-20b TP 1 13.47 GiB
# (llm-d-planner config_explorer/empirical-vllm-memory-results.md, vLLM 0.11.0, H100) and TP 2 7.01 GiB
# (llm-d-planner accuracy/results/v0.19.0/logs/openai-gpt-oss-20b--h100-80gb--tp2pp1dp1--8192.log), against
# 12.82 GiB of tensors in the file; gpt-oss-120b TP 1 64.38 GiB (vllm-project/vllm#33155, vLLM 0.14.1).
# 1.08 keeps all three within 2 % and at or above the measurement.
MXFP4_LOADED_EXPANSION = 1.08
# vLLM's triton MXFP4 backend on CUDA rounds each rank's expert intermediate size up to a multiple of 64
# (model_executor/layers/fused_moe/oracle/mxfp4.py mxfp4_round_up_hidden_size_and_intermediate_size).
MXFP4_INTERMEDIATE_ALIGNMENT = 64

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
    # Qwen3NextConfig defaults (transformers models/qwen3_next/configuration_qwen3_next.py)
    "qwen3_next": {"full_attention_interval": 4, "linear_conv_kernel_dim": 4},
    # Llama4TextConfig: every 4th layer is a NoPE global layer, the others use chunked attention
    "llama4_text": {"no_rope_layer_interval": 4},
}

# What one decoder layer keeps per sequence:
#   "full"    every token (KV)             "sliding" the last `sliding_window` tokens (KV)
#   "chunked" the current attention chunk  "linear"  a fixed recurrent state (gated delta-net)
#   "mamba"   a fixed recurrent state      "none"    nothing (MLP-only layers of Nemotron-H)
LayerKind = Literal["full", "sliding", "chunked", "linear", "mamba", "none"]
ATTENTION_KINDS: frozenset[str] = frozenset({"full", "sliding", "chunked"})
STATE_KINDS: frozenset[str] = frozenset({"linear", "mamba"})
_LAYER_TYPE_NAMES: Mapping[str, LayerKind] = {
    "full_attention": "full",
    "attention": "full",
    "global": "full",
    "global_attention": "full",
    "sliding_attention": "sliding",
    "sliding": "sliding",
    "local": "sliding",
    "local_attention": "sliding",
    "chunked_attention": "chunked",
    "linear_attention": "linear",
    "mamba": "mamba",
    "mamba2": "mamba",
}
# Nemotron-H `hybrid_override_pattern`: M = Mamba-2, * = attention, - = MLP, E = MoE
_PATTERN_KINDS: Mapping[str, LayerKind] = {"M": "mamba", "*": "full", "-": "none", "E": "none"}


@dataclass(frozen=True)
class ShapeAssumption:
    """Something the sizing had to assume about a config (an unknown quantization method, a window wider than
    the context): a stable ``code`` and ``params`` for translations, and the English sentence."""

    code: str
    text: str
    params: Mapping[str, Any]


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

    @property
    def known(self) -> bool:
        return self.method in KNOWN_QUANTIZATION_METHODS


@dataclass(frozen=True)
class LinearAttentionShape:
    """Gated delta-net layers (Qwen3-Next): a convolution state and a recurrent matrix per sequence."""

    num_key_heads: int
    num_value_heads: int
    key_head_dim: int
    value_head_dim: int
    conv_kernel_size: int


@dataclass(frozen=True)
class MambaShape:
    """Mamba-2 layers: a convolution state and an SSM state per sequence."""

    num_heads: int
    head_dim: int
    state_size: int
    num_groups: int
    conv_kernel_size: int
    intermediate_size: int
    ssm_state_dtype: str | None = None  # "float32" when the config pins it; None: the model dtype


@dataclass(frozen=True)
class VisionTowerShape:
    """The image encoder of a vision-language model (``vision_config``)."""

    hidden_size: int
    num_layers: int
    intermediate_size: int
    patch_size: int
    image_size: int

    @property
    def parameters(self) -> int:
        """A config-only count (attention 4·h² + MLP 2·h·i per layer, plus the patch embedding)."""
        per_layer = 4 * self.hidden_size * self.hidden_size + 2 * self.hidden_size * self.intermediate_size
        patches = (self.image_size // max(1, self.patch_size)) ** 2
        embed = 3 * self.patch_size * self.patch_size * self.hidden_size + patches * self.hidden_size
        return self.num_layers * per_layer + embed


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
    # One entry per decoder layer; empty means every layer is full attention.
    layer_kinds: tuple[LayerKind, ...] = ()
    attention_chunk_size: int | None = None  # Llama 4 chunked local attention
    linear_attention: LinearAttentionShape | None = None
    mamba: MambaShape | None = None
    mtp_layers: int = 0  # multi-token-prediction layers stored after the decoder layers
    attention_sinks: bool = False  # gpt-oss: one learned logit per head, no cache of its own
    num_experts_per_token: int | None = None
    moe_intermediate_size: int | None = None  # one expert's intermediate size
    vision: VisionTowerShape | None = None
    # cos/sin table vLLM builds per RoPE variant: positions × rotary dim elements (see rope_cache_bytes)
    rope_cache_elements: int = 0
    # What was assumed (an unknown quantization method, a window wider than the context).
    assumptions: tuple[ShapeAssumption, ...] = ()

    @property
    def notes(self) -> tuple[str, ...]:
        """The assumptions as English sentences."""
        return tuple(a.text for a in self.assumptions)

    @property
    def is_mla(self) -> bool:
        return self.mla_latent_dim is not None

    @property
    def is_moe(self) -> bool:
        return bool(self.num_experts and self.num_experts > 1)

    @property
    def kinds(self) -> tuple[LayerKind, ...]:
        """Every layer's kind (all "full" when the config has no layout)."""
        if self.layer_kinds:
            return self.layer_kinds
        return _repeat("full", self.num_layers)

    def count(self, kind: str) -> int:
        return sum(1 for k in self.kinds if k == kind)

    @property
    def attention_layers(self) -> int:
        return sum(1 for k in self.kinds if k in ATTENTION_KINDS)

    @property
    def state_layers(self) -> int:
        return sum(1 for k in self.kinds if k in STATE_KINDS)

    @property
    def is_hybrid(self) -> bool:
        return len(set(self.kinds) - {"none"}) > 1


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
    if "model_type" not in nested and config.get("model_type") == "llama4":
        merged["model_type"] = "llama4_text"
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
    ``torch_dtype`` vs ``dtype``, per-layer attention kinds (sliding, chunked, linear, Mamba), MoE, MTP,
    vision towers and per-family defaults for missing keys.

    Raises ModelConfigError when the layer layout contradicts ``num_hidden_layers``, a state layer has no
    state dimensions, a size is out of any real model's range (``check_config_values``), or a value has a
    type no config.json uses (a list where a number belongs)."""
    check_config_values(config)
    try:
        return _model_shape(config=config, quantization=quantization)
    except PlanError:
        raise
    except (TypeError, ValueError, KeyError, AttributeError, IndexError, ZeroDivisionError, OverflowError) as error:
        # config.json is data from a hub or a folder: a value of the wrong kind is a damaged file, not a bug
        raise ModelConfigError(
            f"config.json cannot be sized: a value has a type or size no model uses ({type(error).__name__}: "
            f"{str(error)[:200]}).",
            hint="The config.json is damaged or was edited by hand: restore the model's original one, or pick "
            "another revision.",
        ) from error


def _model_shape(*, config: Mapping[str, Any], quantization: Mapping[str, Any] | None) -> ModelShape:
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
            field=errors.CONFIG,
        )
    kv_heads = _int(get("num_key_value_heads")) or _int(get("num_kv_heads")) or heads  # absent → MHA
    # vLLM's get_head_size: explicit head_dim wins (Qwen3, Mistral-Nemo, Gemma), null falls back to
    # hidden // heads; PLaMo spells it hidden_size_per_head.
    head_dim = _int(get("head_dim")) or _int(get("hidden_size_per_head")) or hidden // heads

    mla_latent_dim = None
    kv_lora_rank, rope_dim = _int(cfg.get("kv_lora_rank")), _int(cfg.get("qk_rope_head_dim"))
    if kv_lora_rank and rope_dim is not None:
        mla_latent_dim = kv_lora_rank + rope_dim

    context = _int(get("max_position_embeddings")) or _int(get("seq_length")) or _int(get("n_positions"))
    notes: list[ShapeAssumption] = []
    kinds, window, chunk = _layer_layout(
        cfg=cfg, get=get, model_type=model_type, layers=layers, context=context, notes=notes
    )
    linear = _linear_attention(get=get) if "linear" in kinds else None
    mamba = _mamba(get=get, hidden=hidden) if "mamba" in kinds else None
    if "linear" in kinds and linear is None:
        raise ModelConfigError(
            "config.json marks linear-attention layers but lacks linear_num_key_heads, linear_num_value_heads, "
            "linear_key_head_dim or linear_value_head_dim, so their per-sequence state cannot be sized.",
            hint="Use the model's original config.json; a hand-edited layer_types list may not match it.",
        )
    if "mamba" in kinds and mamba is None:
        raise ModelConfigError(
            "config.json marks Mamba layers but lacks their state sizes (mamba_num_heads, mamba_head_dim, "
            "ssm_state_size), so their per-sequence state cannot be sized.",
            hint="Use the model's original config.json; a hand-edited layer layout may not match it.",
        )

    experts = (
        _int(cfg.get("n_routed_experts"))
        or _int(cfg.get("num_local_experts"))
        or _int(cfg.get("num_experts"))
    )
    moe_intermediate = _int(get("moe_intermediate_size"))
    if experts and not moe_intermediate:
        moe_intermediate = _int(get("intermediate_size"))  # Mixtral, gpt-oss, Llama 4: experts use it
    scheme = quantization_scheme(config=config, quantization=quantization)
    if scheme is not None and not scheme.known:
        notes.append(
            ShapeAssumption(
                "quantization_method_unknown",
                f"quantization_config.quant_method {scheme.method!r} is not a vLLM method EZ Runner knows; its "
                "weights are sized from the bytes stored in the safetensors files (the fallback), which holds "
                "only if vLLM keeps them in that form.",
                {"method": scheme.method},
            )
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
        intermediate_size=_int(get("intermediate_size_mlp")) or _int(get("intermediate_size")),
        context_length=context,
        tie_word_embeddings=bool(tie) if tie is not None else False,
        checkpoint_dtype=normalise_dtype(cfg.get("torch_dtype")) or normalise_dtype(cfg.get("dtype")),
        mla_latent_dim=mla_latent_dim,
        sliding_window=window,
        sliding_window_layers=sum(1 for k in kinds if k == "sliding"),
        num_experts=experts,
        quantization=scheme,
        nested_text_config=nested,
        layer_kinds=kinds if set(kinds) != {"full"} else (),
        attention_chunk_size=chunk,
        linear_attention=linear,
        mamba=mamba,
        mtp_layers=_int(cfg.get("num_nextn_predict_layers")) or _int(cfg.get("mtp_num_hidden_layers")) or 0,
        attention_sinks=model_type == "gpt_oss",
        num_experts_per_token=_int(get("num_experts_per_tok")) or _int(get("experts_per_token")),
        moe_intermediate_size=moe_intermediate if experts else None,
        vision=_vision_tower(config.get("vision_config")),
        rope_cache_elements=_rope_cache_elements(
            cfg=cfg, get=get, model_type=model_type, head_dim=head_dim, context=context, kinds=kinds
        ),
        assumptions=tuple(notes),
    )


def _rope_positions(*, rope: object, context: int) -> int:
    """Rows of vLLM's cos/sin cache for one RoPE variant (model_executor/layers/rotary_embedding): linear,
    dynamic-NTK and YaRN scaling build ``max_position × factor`` rows (YaRN from its original length),
    llama3 / longrope / plain RoPE build ``max_position`` rows."""
    if not isinstance(rope, Mapping):
        return context
    kind = str(rope.get("rope_type") or rope.get("type") or "default")
    factor = rope.get("factor")
    if not isinstance(factor, int | float) or isinstance(factor, bool) or factor <= 1:
        return context
    if kind in ("linear", "dynamic"):
        return int(context * factor)
    if kind == "yarn":
        original = _int(rope.get("original_max_position_embeddings")) or context
        return int(original * factor)
    return context


def _rope_cache_elements(
    *,
    cfg: Mapping[str, Any],
    get: Callable[[str], Any],
    model_type: str | None,
    head_dim: int,
    context: int | None,
    kinds: tuple[LayerKind, ...],
) -> int:
    if not context or (kinds and not any(k in ATTENTION_KINDS for k in kinds)):
        return 0
    partial = get("partial_rotary_factor")
    rotary = _int(cfg.get("qk_rope_head_dim")) or head_dim
    if isinstance(partial, float) and 0 < partial < 1:
        rotary = int(head_dim * partial)
    rows = _rope_positions(rope=get("rope_scaling"), context=context)
    if model_type == "gemma3_text":
        rows += context  # local layers: a second, unscaled table (rope_local_base_freq)
    return rows * rotary


def _layer_layout(
    *,
    cfg: Mapping[str, Any],
    get: Callable[[str], Any],
    model_type: str | None,
    layers: int,
    context: int | None,
    notes: list[ShapeAssumption],
) -> tuple[tuple[LayerKind, ...], int | None, int | None]:
    """(kind of every layer, sliding window, attention chunk size) as vLLM builds the layers."""
    window = _int(get("sliding_window"))
    if cfg.get("use_sliding_window") is False:
        window = None  # Qwen2/2.5 set a window but switch it off
    kinds = _explicit_layer_kinds(cfg=cfg, layers=layers)
    chunk = None
    if kinds is None:
        kinds = _implicit_layer_kinds(cfg=cfg, get=get, model_type=model_type, layers=layers, window=window)
    if "chunked" in kinds or model_type == "llama4_text":
        chunk = _int(get("attention_chunk_size"))
        if not chunk:
            kinds = _as_full(kinds, "chunked")
    if "sliding" in kinds and not window:
        kinds = _as_full(kinds, "sliding")  # a layout without a window
    if "sliding" in kinds and window and context and window >= context:
        notes.append(
            ShapeAssumption(
                "sliding_window_not_smaller",
                f"sliding_window {window:,} is not smaller than the context ({context:,} tokens), so the window "
                "never limits the cache: those layers are sized as full attention.",
                {"sliding_window": window, "context_length": context},
            )
        )
        kinds = _as_full(kinds, "sliding")
    if "sliding" not in kinds:
        window = None
    return kinds, window, chunk if "chunked" in kinds else None


def _repeat(kind: LayerKind, times: int) -> tuple[LayerKind, ...]:
    return tuple(kind for _ in range(times))


def _as_full(kinds: tuple[LayerKind, ...], kind: LayerKind) -> tuple[LayerKind, ...]:
    full: LayerKind = "full"
    return tuple(full if k == kind else k for k in kinds)


def _explicit_layer_kinds(*, cfg: Mapping[str, Any], layers: int) -> tuple[LayerKind, ...] | None:
    for key in ("layer_types", "layers_block_type"):
        names = cfg.get(key)
        if not isinstance(names, list) or not names:
            continue
        if len(names) < layers:
            raise ModelConfigError(
                f"config.json's {key} lists {len(names)} layers but num_hidden_layers is {layers}, so it is "
                "unclear what the remaining layers cache.",
                hint=f"Use the model's original config.json, or make {key} name one type per layer.",
            )
        kinds: list[LayerKind] = []
        for name in names[:layers]:  # entries past num_hidden_layers belong to MTP/draft layers
            kind = _LAYER_TYPE_NAMES.get(str(name).lower())
            if kind is None:
                raise ModelConfigError(
                    f"config.json's {key} names a layer type {name!r} that EZ Runner cannot size.",
                    hint="Known types: " + ", ".join(sorted(_LAYER_TYPE_NAMES)) + ".",
                )
            kinds.append(kind)
        return tuple(kinds)
    pattern = cfg.get("hybrid_override_pattern")
    if isinstance(pattern, str) and pattern:
        if len(pattern) < layers:
            raise ModelConfigError(
                f"config.json's hybrid_override_pattern has {len(pattern)} characters but num_hidden_layers "
                f"is {layers}, so it is unclear what the remaining layers cache.",
                hint="Use the model's original config.json (one of M, *, - or E per layer).",
            )
        unknown = sorted(set(pattern[:layers]) - set(_PATTERN_KINDS))
        if unknown:
            raise ModelConfigError(
                f"config.json's hybrid_override_pattern uses {''.join(unknown)!r}, which is not one of M, *, "
                "- or E.",
                hint="Use the model's original config.json.",
            )
        return tuple(_PATTERN_KINDS[c] for c in pattern[:layers])
    return None


def _implicit_layer_kinds(
    *, cfg: Mapping[str, Any], get: Callable[[str], Any], model_type: str | None, layers: int, window: int | None
) -> tuple[LayerKind, ...]:
    full = _repeat("full", layers)
    if model_type == "qwen3_next":
        interval = _int(get("full_attention_interval")) or 4
        return tuple("full" if (i + 1) % interval == 0 else "linear" for i in range(layers))
    if model_type == "llama4_text":
        flags = cfg.get("no_rope_layers")
        if isinstance(flags, list) and len(flags) >= layers:
            # 1 = RoPE layer (chunked local attention), 0 = NoPE layer (global attention)
            return tuple("chunked" if flags[i] else "full" for i in range(layers))
        interval = _int(get("no_rope_layer_interval")) or 4
        return tuple("full" if (i + 1) % interval == 0 else "chunked" for i in range(layers))
    if not window:
        return full
    pattern = _int(get("sliding_window_pattern"))
    if pattern and pattern > 1:  # Gemma 3: every pattern-th layer is global
        return tuple("full" if (i + 1) % pattern == 0 else "sliding" for i in range(layers))
    if model_type in _ALTERNATING_SLIDING:
        return tuple("sliding" if i % 2 == 0 else "full" for i in range(layers))
    if model_type in _SLIDING_WINDOW_ALL_LAYERS:
        return _repeat("sliding", layers)
    if model_type in ("qwen2", "qwen2_moe", "qwen3", "qwen3_moe") and cfg.get("use_sliding_window"):
        start = _int(get("max_window_layers")) or 0  # vLLM qwen2.py: layers from max_window_layers on
        return tuple("sliding" if i >= start else "full" for i in range(layers))
    return full  # windows vLLM does not honour for this family count as full attention (the safe side)


def _linear_attention(*, get: Callable[[str], Any]) -> LinearAttentionShape | None:
    nk, nv = _int(get("linear_num_key_heads")), _int(get("linear_num_value_heads"))
    dk, dv = _int(get("linear_key_head_dim")), _int(get("linear_value_head_dim"))
    if not (nk and nv and dk and dv):
        return None
    return LinearAttentionShape(nk, nv, dk, dv, _int(get("linear_conv_kernel_dim")) or 4)


def _mamba(*, get: Callable[[str], Any], hidden: int) -> MambaShape | None:
    heads = _int(get("mamba_num_heads")) or _int(get("mamba_n_heads"))
    head_dim = _int(get("mamba_head_dim")) or _int(get("mamba_d_head"))
    state = _int(get("ssm_state_size")) or _int(get("mamba_d_state")) or _int(get("state_size"))
    if not (heads and head_dim and state):
        return None
    intermediate = _int(get("mamba_intermediate_size")) or heads * head_dim
    return MambaShape(
        num_heads=heads,
        head_dim=head_dim,
        state_size=state,
        num_groups=_int(get("n_groups")) or _int(get("mamba_n_groups")) or 1,
        conv_kernel_size=_int(get("conv_kernel")) or _int(get("mamba_d_conv")) or 4,
        intermediate_size=intermediate,
        ssm_state_dtype=normalise_dtype(get("mamba_ssm_cache_dtype")),
    )


def _vision_tower(vision: object) -> VisionTowerShape | None:
    if not isinstance(vision, Mapping):
        return None
    hidden = _int(vision.get("hidden_size")) or _int(vision.get("embed_dim")) or _int(vision.get("width"))
    layers = _int(vision.get("num_hidden_layers")) or _int(vision.get("depth")) or _int(vision.get("num_layers"))
    if not hidden or not layers:
        return None
    return VisionTowerShape(
        hidden_size=hidden,
        num_layers=layers,
        intermediate_size=_int(vision.get("intermediate_size")) or 4 * hidden,
        patch_size=_int(vision.get("patch_size")) or 14,
        image_size=_int(vision.get("image_size")) or 336,
    )


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
      MXFP4 expert tensors (U8) grow by ``MXFP4_LOADED_EXPANSION`` when vLLM re-lays them out.
    * Tied embeddings: when ``tie_word_embeddings`` is set but the checkpoint also stores ``lm_head``,
      the copy is dropped at load (Qwen3-0.6B: 1.40 GiB on disk, 1.12 GiB loaded in vLLM).
    * MTP layers of DeepSeek-V3-style checkpoints are not loaded unless speculative decoding asks for them.
    """
    target = TORCH_DTYPE_BYTES[dtype]
    stats = _elements_and_bytes(weights)
    if not stats:
        return estimated_parameters(shape=shape) * target
    quantized = shape.quantization is not None
    mxfp4 = quantized and shape.quantization is not None and shape.quantization.method == "mxfp4"
    total = 0
    for name, (count, nbytes) in stats.items():
        if not quantized and name in _CASTABLE_DTYPES:
            total += count * target
        elif mxfp4 and name == "U8":
            total += int(nbytes * MXFP4_LOADED_EXPANSION)
        else:
            total += nbytes
    if shape.tie_word_embeddings and weights.lm_head_bytes:
        stored = TORCH_DTYPE_BYTES.get(shape.checkpoint_dtype or "", target)
        total -= weights.lm_head_bytes if quantized else weights.lm_head_bytes * target // stored
    return total - mtp_weights_bytes(shape=shape, loaded_bytes=total)


def mtp_weights_bytes(*, shape: ModelShape, loaded_bytes: int) -> int:
    """Bytes of the MTP layers vLLM leaves on disk (DeepSeek-V3/R1: one extra MoE layer of ~11 B weights
    plus its 2·hidden² projection): an average decoder layer's share of the non-embedding bytes, which
    slightly under-counts a MoE MTP layer and so errs towards more weights in memory."""
    if not shape.mtp_layers or shape.model_type not in _MTP_SKIPPED_AT_LOAD:
        return 0
    embeddings = embedding_bytes(shape=shape, dtype_bytes=2)
    per_layer = max(0, loaded_bytes - embeddings) // (shape.num_layers + shape.mtp_layers)
    return shape.mtp_layers * per_layer


def rope_cache_bytes(*, shape: ModelShape, dtype_bytes: int) -> int:
    """vLLM's RoPE cos/sin cache, built for the config's full context whatever max_model_len is, on every
    GPU and counted in "Model loading took" (Llama-4-Scout: 10,485,760 positions × 128 × 2 B = 2.5 GiB;
    Gemma 3's linear ×8 global table: 1,048,576 × 256 × 2 B = 0.5 GiB)."""
    return shape.rope_cache_elements * dtype_bytes


def embedding_bytes(*, shape: ModelShape, dtype_bytes: int) -> int:
    """The input embedding plus, when untied, the output head (both vocab × hidden, kept in 16 bit by
    every quantization scheme EZ Runner knows)."""
    one = shape.vocab_size * shape.hidden_size * dtype_bytes
    return one if shape.tie_word_embeddings else 2 * one


def pipeline_stage_layers(*, num_layers: int, pipeline_parallel_size: int) -> list[int]:
    """Decoder layers per pipeline stage as vLLM splits them (distributed/utils.py get_pp_indices): equal
    shares, the remainder going to the stages before the last one."""
    pp = max(1, pipeline_parallel_size)
    parts = [num_layers // pp] * pp
    for i in range(2, num_layers % pp + 2):
        parts[-i] += 1
    return parts


def weights_per_gpu_bytes(
    *,
    weights: WeightStats,
    shape: ModelShape,
    dtype: str,
    tensor_parallel_size: int = 1,
    pipeline_parallel_size: int = 1,
) -> int:
    """The largest per-GPU share of the loaded weights (the GPU that decides the KV pool).

    Tensor parallelism splits every layer and the vocabulary; pipeline parallelism gives each stage its
    layers, the first stage the embedding and the last one the output head (its own copy when tied, as the
    two live on different GPUs). MXFP4 experts are padded per rank to ``MXFP4_INTERMEDIATE_ALIGNMENT``.
    Every GPU also holds the RoPE cache (``rope_cache_bytes``)."""
    tp, pp = max(1, tensor_parallel_size), max(1, pipeline_parallel_size)
    total = loaded_weights_bytes(weights=weights, shape=shape, dtype=dtype)
    if shape.quantization is not None and shape.quantization.method == "mxfp4" and tp > 1:
        size = shape.moe_intermediate_size or shape.intermediate_size or 0
        per_rank = size // tp
        if per_rank:
            padded = ceil_div(per_rank, MXFP4_INTERMEDIATE_ALIGNMENT) * MXFP4_INTERMEDIATE_ALIGNMENT
            experts = _elements_and_bytes(weights).get("U8", (0, 0))[1] * MXFP4_LOADED_EXPANSION
            total += int(experts * (padded - per_rank) / per_rank)
    rope = rope_cache_bytes(shape=shape, dtype_bytes=TORCH_DTYPE_BYTES[dtype])
    if pp == 1:
        return ceil_div(total, tp) + rope
    embed_bytes = 2 if shape.quantization is not None else TORCH_DTYPE_BYTES[dtype]
    one = shape.vocab_size * shape.hidden_size * embed_bytes
    body = max(0, total - embedding_bytes(shape=shape, dtype_bytes=embed_bytes))
    stages = pipeline_stage_layers(num_layers=shape.num_layers, pipeline_parallel_size=pp)
    largest = 0
    for index, layers in enumerate(stages):
        stage = body * layers // shape.num_layers
        stage += one if index == 0 else 0
        stage += one if index == pp - 1 else 0
        largest = max(largest, stage)
    return ceil_div(largest, tp) + rope


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


# KV CACHE AND RECURRENT STATE


def kv_heads_per_rank(*, shape: ModelShape, tensor_parallel_size: int) -> int:
    """vLLM shards KV heads across ranks and replicates them once TP exceeds their count; MLA keeps one
    latent "head" on every rank (``get_num_kv_heads`` returns 1), so it is never split."""
    if shape.is_mla:
        return 1
    return max(1, shape.num_kv_heads // tensor_parallel_size)


def kv_bytes_per_token_per_layer(
    *, shape: ModelShape, kv_dtype_bytes: int = 2, tensor_parallel_size: int = 1
) -> int:
    """One attention layer's cache for one token on one rank: ``2 (K and V) × kv heads × head_dim × bytes``,
    or one MLA latent of ``kv_lora_rank + qk_rope_head_dim`` elements (vLLM MLAAttentionSpec)."""
    if shape.mla_latent_dim is not None:
        return shape.mla_latent_dim * kv_dtype_bytes
    heads = kv_heads_per_rank(shape=shape, tensor_parallel_size=tensor_parallel_size)
    return 2 * heads * shape.head_dim * kv_dtype_bytes


def kv_cache_bytes_per_token(
    *, shape: ModelShape, kv_dtype_bytes: int = 2, tensor_parallel_size: int = 1
) -> int:
    """KV bytes for one token on one rank (``tensor_parallel_size`` 1: the whole model), summed over the
    attention layers (full, sliding and chunked alike: the figure before any window caps it). Linear-attention
    and Mamba layers keep a per-sequence state instead (``state_bytes_per_sequence``).

    Dense/GQA: ``2 (K and V) × layers × kv heads per rank × head_dim × bytes``.
    MLA: ``layers × (kv_lora_rank + qk_rope_head_dim) × bytes`` — one compressed latent, no factor 2.
    """
    per_layer = kv_bytes_per_token_per_layer(
        shape=shape, kv_dtype_bytes=kv_dtype_bytes, tensor_parallel_size=tensor_parallel_size
    )
    return shape.attention_layers * per_layer


def state_bytes_per_layer(*, shape: ModelShape, kind: str, tensor_parallel_size: int = 1, dtype_bytes: int = 2) -> int:
    """One state layer's bytes for one sequence on one rank (vLLM MambaSpec shapes, sharded over TP).

    Gated delta-net (Qwen3-Next, vLLM qwen3_next.py): conv state ``(2·nk·dk + nv·dv)/tp × (kernel − 1)``
    plus recurrent state ``nv/tp × dk × dv``. Mamba-2: conv state ``(intermediate + 2·groups·state)/tp ×
    (kernel − 1)`` plus SSM state ``heads/tp × head_dim × state`` (in float32 when the config pins it)."""
    tp = max(1, tensor_parallel_size)
    if kind == "linear" and shape.linear_attention is not None:
        la = shape.linear_attention
        conv = (2 * la.num_key_heads * la.key_head_dim + la.num_value_heads * la.value_head_dim) // tp
        recurrent = la.num_value_heads // tp * la.key_head_dim * la.value_head_dim
        return (conv * (la.conv_kernel_size - 1) + recurrent) * dtype_bytes
    if kind == "mamba" and shape.mamba is not None:
        m = shape.mamba
        conv = (m.intermediate_size + 2 * m.num_groups * m.state_size) // tp * (m.conv_kernel_size - 1)
        ssm_bytes = TORCH_DTYPE_BYTES.get(m.ssm_state_dtype or "", dtype_bytes)
        return conv * dtype_bytes + m.num_heads // tp * m.head_dim * m.state_size * ssm_bytes
    return 0


def state_bytes_per_sequence(*, shape: ModelShape, tensor_parallel_size: int = 1, dtype_bytes: int = 2) -> int:
    """Recurrent state one sequence holds on one rank, whatever its length (0 for attention-only models)."""
    return sum(
        state_bytes_per_layer(shape=shape, kind=k, tensor_parallel_size=tensor_parallel_size, dtype_bytes=dtype_bytes)
        for k in shape.kinds
        if k in STATE_KINDS
    )


def _window_tokens(shape: ModelShape) -> int:
    return (shape.sliding_window or 0) + SLIDING_WINDOW_EXTRA_TOKENS


def _chunk_tokens(shape: ModelShape) -> int:
    return (shape.attention_chunk_size or 0) + SLIDING_WINDOW_EXTRA_TOKENS


def kv_cache_bytes(
    *, shape: ModelShape, tokens: int, kv_dtype_bytes: int = 2, tensor_parallel_size: int = 1
) -> int:
    """Cache bytes one rank needs for one sequence of ``tokens``: full-attention layers grow with every token,
    sliding and chunked layers stop growing at their window (plus ``SLIDING_WINDOW_EXTRA_TOKENS`` of
    in-flight tokens), state layers hold a fixed state in the model's 16-bit dtype."""
    per_layer = kv_bytes_per_token_per_layer(
        shape=shape, kv_dtype_bytes=kv_dtype_bytes, tensor_parallel_size=tensor_parallel_size
    )
    sliding, chunked = shape.count("sliding"), shape.count("chunked")
    full = shape.attention_layers - sliding - chunked
    cached = full * tokens
    cached += sliding * min(tokens, _window_tokens(shape)) + chunked * min(tokens, _chunk_tokens(shape))
    return per_layer * cached + state_bytes_per_sequence(shape=shape, tensor_parallel_size=tensor_parallel_size)


def tokens_that_fit(
    *, shape: ModelShape, kv_bytes: int, kv_dtype_bytes: int = 2, tensor_parallel_size: int = 1
) -> int:
    """The longest single sequence whose cache fits in ``kv_bytes`` on one rank (inverse of
    ``kv_cache_bytes``); capped at 2**31 when no layer grows without bound."""
    cap = 2**31

    def need(tokens: int) -> int:
        return kv_cache_bytes(
            shape=shape, tokens=tokens, kv_dtype_bytes=kv_dtype_bytes, tensor_parallel_size=tensor_parallel_size
        )

    if kv_bytes <= 0 or need(0) > kv_bytes:
        return 0
    if need(cap) <= kv_bytes:
        return cap
    low, high = 0, cap  # need(low) <= kv_bytes < need(high); kv_cache_bytes is non-decreasing in tokens
    while high - low > 1:
        middle = (low + high) // 2
        if need(middle) <= kv_bytes:
            low = middle
        else:
            high = middle
    return low


# OVERHEADS


def activation_bytes(*, shape: ModelShape) -> int:
    """vLLM's profiled peak activation for one GPU (see ``ACTIVATION_BYTES_REFERENCE``): the transformers
    engine's estimate. vLLM plans take the batch-limit-aware peak of ``core.engines.vllm_memory``."""
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
