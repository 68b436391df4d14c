"""Choose engine, tensor parallelism, context length and dtype for a model on a target, with reasons."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from core.engines import engine_for
from core.engines.base import check_driver, driver_branch
from core.engines.versions import (
    TRANSFORMERS_GPU_IMAGE_CUDA_VERSION,
    TRANSFORMERS_GPU_MIN_COMPUTE_CAPABILITY,
    VLLM_IMAGE,
    VLLM_IMAGE_CUDA_12,
    VLLM_IMAGE_CUDA_12_VERSION,
    VLLM_IMAGE_CUDA_VERSION,
    VLLM_MIN_COMPUTE_CAPABILITY,
    VLLM_MIN_DRIVER_VERSION,
    VLLM_VERSION,
)
from core.errors import InvalidOptionsError
from core.hardware import Gpu, Target
from core.hubs.base import ModelInfo
from core.sizing import (
    GIB,
    TORCH_DTYPE_BYTES,
    TRANSFORMERS_CPU_RUNTIME_BYTES,
    TRANSFORMERS_GPU_RUNTIME_BYTES,
    ModelShape,
    activation_bytes,
    ceil_div,
    cuda_visible_bytes,
    gib,
    kv_cache_bytes,
    kv_cache_bytes_per_token,
    kv_heads_per_rank,
    loaded_weights_bytes,
    model_shape,
    non_torch_bytes,
    normalise_dtype,
    round_down,
    tokens_that_fit,
    unpacked_parameter_count,
)

EngineName = Literal["vllm", "transformers"]
Device = Literal["cuda", "cpu"]

# Planning constants (the memory constants themselves live in core/sizing.py)
# We always pass --gpu-memory-utilization, so the plan's numbers hold whatever the image's default is
# (0.9 through vLLM v0.19; the newest config/cache.py reads 0.92). 0.9 leaves 10 % of each card for CUDA
# graphs, the sampler warm-up and anything else on the GPU.
DEFAULT_GPU_MEMORY_UTILIZATION = 0.9
TRANSFORMERS_GPU_USABLE_FRACTION = 0.95  # no preallocation: only leave room for the CUDA allocator's slack
RAM_USABLE_FRACTION = 0.85  # the OS, the page cache of the model files and other processes keep the rest
# "Useful KV room": a TP size counts as fitting when one full request of min(context, 8192) tokens fits.
USEFUL_CONTEXT_TOKENS = 8192
# Below this context (or the model's own, if shorter) the plan is reported as not fitting.
MIN_SERVABLE_CONTEXT = 2048
# max_model_len is rounded down to a multiple of 256: a multiple of vLLM's 16-token block, and a number
# people can read; the model's own context is kept as is when it fits.
MAX_MODEL_LEN_MULTIPLE = 256
# Only this share of the estimated KV pool is promised to max_model_len: the llm-d-planner validation found
# ~4 % KV error on dense models and 10-29 % on MoE/MLA ones (notes §0), and vLLM refuses to start when one
# max_model_len request does not fit.
KV_MARGIN_DENSE = 0.9
KV_MARGIN_MOE_OR_MLA = 0.75
FALLBACK_CONTEXT = 4096  # a config without max_position_embeddings
# bytes per weight of a 4-bit, group-128 AWQ/GPTQ variant: 0.5 + (2 B scale + 0.5 B zero) / 128 (notes §1.1)
FOUR_BIT_BYTES_PER_WEIGHT = 0.5195


@dataclass(frozen=True)
class Options:
    """What the user may force; None means "let the planner decide"."""

    engine: Literal["auto", "vllm", "transformers"] = "auto"
    tensor_parallel_size: int | None = None
    max_model_len: int | None = None
    gpu_memory_utilization: float | None = None  # None: the engine's default
    dtype: str | None = None  # "auto", "bfloat16", "float16", "float32"
    port: int = 8000
    base_image: str | None = None  # overrides the engine's pinned base image


@dataclass(frozen=True)
class Note:
    """A reason or warning: ``code`` + ``params`` let the UI translate; ``text`` is the English sentence."""

    code: str
    text: str
    params: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class PlanWarning(Note):
    """A risk with a way out. ``change`` is the Options delta a "fix" button applies (may be empty)."""

    change: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class GpuBudget:
    """Planned memory use of one GPU (or of system RAM for a CPU target, ``index`` None)."""

    index: int | None
    weights_bytes: int
    kv_cache_bytes: int  # what the planned max_model_len needs for one sequence
    overhead_bytes: int  # CUDA context, activations, non-torch allocations
    capacity_bytes: int  # usable: total × gpu_memory_utilization
    total_bytes: int  # physical

    @property
    def used_bytes(self) -> int:
        return self.weights_bytes + self.kv_cache_bytes + self.overhead_bytes


@dataclass(frozen=True)
class Plan:
    model: ModelInfo
    target: Target
    options: Options
    engine: EngineName
    base_image: str
    tensor_parallel_size: int
    max_model_len: int
    dtype: str
    gpu_memory_utilization: float | None
    fits: bool
    weights_bytes: int  # whole model, as loaded
    kv_cache_bytes_per_token: int  # whole model, before any TP split
    per_gpu: tuple[GpuBudget, ...]
    reasons: tuple[Note, ...]
    warnings: tuple[PlanWarning, ...]
    # Added by the planner: where the engine runs, the model's own context, and how many tokens of KV cache
    # the tightest GPU (or RAM) can hold after the safety margin — max_model_len ≤ kv_cache_tokens when fits.
    device: Device = "cuda"
    context_length: int = 0
    kv_cache_tokens: int = 0
    valid_tensor_parallel_sizes: tuple[int, ...] = ()


# TENSOR PARALLELISM


def tensor_parallel_problem(*, shape: ModelShape, size: int) -> str | None:
    """Why vLLM would reject this TP size, or None when it is valid."""
    if size < 1:
        return "it must be at least 1"
    if shape.num_attention_heads % size:
        return f"the {shape.num_attention_heads} attention heads are not divisible by {size}"
    if shape.vocab_size and shape.vocab_size % size:
        return f"the vocabulary of {shape.vocab_size} tokens is not divisible by {size}"
    if not shape.is_mla:
        kv = shape.num_kv_heads
        if (size <= kv and kv % size) or (size > kv and size % kv):
            return f"the {kv} KV heads can neither be split nor evenly replicated across {size} GPUs"
    return None


def valid_tensor_parallel_sizes(*, shape: ModelShape, gpu_count: int) -> list[int]:
    """TP sizes vLLM accepts for this model on at most ``gpu_count`` GPUs: they must divide the attention
    heads and the vocabulary (Qwen3-14B: 40 heads but TP 5 fails on 151936 tokens), and split or replicate
    the KV heads evenly."""
    return [t for t in range(1, gpu_count + 1) if tensor_parallel_problem(shape=shape, size=t) is None]


# INTERNAL DRAFTS


@dataclass(frozen=True)
class _Sizing:
    model: ModelInfo
    shape: ModelShape
    context: int
    margin: float


@dataclass(frozen=True)
class _Layout:
    """Memory of one candidate placement before max_model_len is chosen."""

    device: Device
    tensor_parallel_size: int
    slots: tuple[tuple[int | None, int, int], ...]  # (index, total bytes, usable capacity bytes)
    weights_per_slot: int
    overhead_per_slot: int
    kv_dtype_bytes: int
    pool_tokens: int  # longest single sequence the tightest slot holds, after the safety margin

    @property
    def pool_bytes(self) -> int:
        return min(cap for _, _, cap in self.slots) - self.weights_per_slot - self.overhead_per_slot


@dataclass
class _Draft:
    engine: EngineName
    device: Device
    dtype: str
    weights_bytes: int
    layout: _Layout
    gpu_memory_utilization: float | None
    valid_tps: tuple[int, ...] = ()
    reasons: list[Note] = field(default_factory=list)
    warnings: list[PlanWarning] = field(default_factory=list)
    hard_failures: list[str] = field(default_factory=list)  # codes of warnings that make fits False
    max_model_len: int = 0
    budgets: tuple[GpuBudget, ...] = ()


def _layout(
    *,
    sizing: _Sizing,
    device: Device,
    tp: int,
    slots: Sequence[tuple[int | None, int, int]],
    weights: int,
    overhead: int,
    dtype: str,
) -> _Layout:
    kv_dtype_bytes = TORCH_DTYPE_BYTES[dtype]
    per_slot = ceil_div(weights, tp)
    pool = min(cap for _, _, cap in slots) - per_slot - overhead
    tokens = tokens_that_fit(
        shape=sizing.shape,
        kv_bytes=int(pool * sizing.margin),
        kv_dtype_bytes=kv_dtype_bytes,
        tensor_parallel_size=tp,
    )
    return _Layout(
        device=device,
        tensor_parallel_size=tp,
        slots=tuple(slots),
        weights_per_slot=per_slot,
        overhead_per_slot=overhead,
        kv_dtype_bytes=kv_dtype_bytes,
        pool_tokens=tokens,
    )


def _vllm_layout(
    *, sizing: _Sizing, gpus: Sequence[Gpu], tp: int, util: float, weights: int, dtype: str
) -> _Layout:
    slots = [
        (g.index if g.index is not None else i, g.memory_bytes, int(cuda_visible_bytes(g.memory_bytes) * util))
        for i, g in enumerate(gpus[:tp])
    ]
    overhead = non_torch_bytes(tensor_parallel_size=tp) + activation_bytes(shape=sizing.shape)
    return _layout(
        sizing=sizing, device="cuda", tp=tp, slots=slots, weights=weights, overhead=overhead, dtype=dtype
    )


def _gpu_slot(gpu: Gpu, position: int) -> tuple[int | None, int, int]:
    index = gpu.index if gpu.index is not None else position
    return index, gpu.memory_bytes, int(cuda_visible_bytes(gpu.memory_bytes) * TRANSFORMERS_GPU_USABLE_FRACTION)


def _cpu_slot(target: Target) -> tuple[int | None, int, int]:
    ram = target.ram_bytes or 0
    return None, ram, int(ram * RAM_USABLE_FRACTION)


# CHOICES


def _validate_options(options: Options, target: Target) -> None:
    util = options.gpu_memory_utilization
    if util is not None and not (0 < util <= 1):
        raise InvalidOptionsError(
            f"gpu_memory_utilization must be above 0 and at most 1; got {util}.",
            hint="Use a fraction such as 0.9 (90 % of each GPU's memory).",
        )
    if options.max_model_len is not None and options.max_model_len < 1:
        raise InvalidOptionsError(
            f"max_model_len must be a positive number of tokens; got {options.max_model_len}.",
            hint="Leave it unset to let the planner choose, or give e.g. 8192.",
        )
    if options.dtype not in (None, "auto") and normalise_dtype(options.dtype) is None:
        raise InvalidOptionsError(
            f"Unknown dtype {options.dtype!r}.", hint="Use auto, bfloat16, float16 or float32."
        )
    if options.engine not in ("auto", "vllm", "transformers"):
        raise InvalidOptionsError(
            f"Unknown engine {options.engine!r}.", hint="Use auto, vllm or transformers."
        )
    tp = options.tensor_parallel_size
    if tp is not None and tp < 1:
        raise InvalidOptionsError(
            f"tensor_parallel_size must be at least 1; got {tp}.",
            hint="Leave it unset to let the planner choose.",
        )
    if options.engine == "vllm" and target.is_cpu_only:
        raise InvalidOptionsError(
            "The vLLM image needs an NVIDIA GPU, and the target has none.",
            hint="Choose the transformers engine (or auto) for a CPU-only server.",
        )
    if options.engine == "transformers" and tp is not None and tp > 1:
        raise InvalidOptionsError(
            f"transformers serve runs on one device, so tensor_parallel_size {tp} cannot be honoured.",
            hint="Drop --tensor-parallel-size, or choose the vllm engine to split the model across GPUs.",
        )
    if tp is not None and tp > max(target.gpu_count, 1):
        raise InvalidOptionsError(
            f"tensor_parallel_size {tp} needs {tp} GPUs, but the target has {target.gpu_count}.",
            hint=f"Use at most {max(target.gpu_count, 1)}, or describe a server with more GPUs.",
        )


def _min_cc(gpus: Sequence[Gpu]) -> tuple[int, int]:
    return min(g.compute_capability for g in gpus)


def _gpu_label(gpus: Sequence[Gpu]) -> str:
    names = sorted({g.name for g in gpus})
    return f"{len(gpus)} × {names[0]}" if len(names) == 1 else f"{len(gpus)} GPUs ({', '.join(names)})"


def _choose_dtype(
    *, options: Options, shape: ModelShape, device: Device, gpus: Sequence[Gpu]
) -> tuple[str, list[Note], list[PlanWarning]]:
    notes: list[Note] = []
    warnings: list[PlanWarning] = []
    checkpoint = shape.checkpoint_dtype
    cc = _min_cc(gpus) if device == "cuda" and gpus else None
    cc_text = f"{cc[0]}.{cc[1]}" if cc else ""
    forced = normalise_dtype(options.dtype) if options.dtype not in (None, "auto") else None
    if forced:
        notes.append(Note("dtype_forced", f"dtype {forced}, as requested.", {"dtype": forced}))
        if forced == "bfloat16" and cc is not None and cc < (8, 0):
            warnings.append(
                PlanWarning(
                    "bf16_unsupported",
                    f"bfloat16 needs compute capability 8.0 (Ampere) or newer; this GPU has {cc_text}. "
                    "The server will refuse to start or run very slowly. Use float16 instead.",
                    {"compute_capability": cc_text},
                    {"dtype": "float16"},
                )
            )
        return forced, notes, warnings
    if device == "cpu":
        dtype = "bfloat16"
        notes.append(
            Note(
                "dtype_cpu_bf16",
                "dtype bfloat16 on the CPU: half the RAM of float32, and PyTorch has bfloat16 CPU kernels "
                "(fast on CPUs with AVX-512 BF16 or AMX, slower but correct elsewhere); float16 is poorly "
                "supported on CPUs.",
                {"dtype": dtype, "checkpoint_dtype": checkpoint or "unknown"},
            )
        )
        return dtype, notes, warnings
    assert cc is not None
    if cc >= (8, 0):
        if checkpoint in ("bfloat16", "float16"):
            notes.append(
                Note(
                    "dtype_checkpoint",
                    f"dtype {checkpoint}, the dtype the checkpoint was saved in.",
                    {"dtype": checkpoint},
                )
            )
            return checkpoint, notes, warnings
        notes.append(
            Note(
                "dtype_downcast",
                f"dtype bfloat16: the checkpoint is {checkpoint or 'of unknown dtype'}; bfloat16 "
                "halves the memory "
                "of float32 with the same range, and this GPU supports it.",
                {"dtype": "bfloat16", "checkpoint_dtype": checkpoint or "unknown"},
            )
        )
        return "bfloat16", notes, warnings
    notes.append(
        Note(
            "dtype_fp16_old_gpu",
            f"dtype float16: the GPU has compute capability {cc_text}, and bfloat16 needs 8.0 "
            "(Ampere) or newer. "
            "float16 takes the same memory.",
            {"dtype": "float16", "compute_capability": cc_text, "checkpoint_dtype": checkpoint or "unknown"},
        )
    )
    if checkpoint == "bfloat16":
        warnings.append(
            PlanWarning(
                "fp16_for_bf16_checkpoint",
                "The checkpoint is bfloat16 but will run in float16, whose range is smaller: a few models "
                "overflow and produce garbage or NaNs. If answers look wrong, use float32 (twice the memory) "
                "or a GPU of compute capability 8.0 or newer.",
                {"checkpoint_dtype": checkpoint, "dtype": "float16"},
            )
        )
    return "float16", notes, warnings


def _weights_note(*, model: ModelInfo, shape: ModelShape, dtype: str, weights: int) -> Note:
    stats = model.weights
    by_dtype = ", ".join(
        f"{name} {count / 1e9:.2f} B" for name, count in sorted(stats.parameters_by_dtype.items())
    )
    text = f"Weights: {gib(weights)} GiB as loaded in {dtype}"
    text += f" (safetensors headers: {by_dtype})." if by_dtype else " (estimated from config.json)."
    if shape.quantization:
        params = unpacked_parameter_count(weights=stats, shape=shape)
        text += (
            f" The checkpoint is pre-quantized ({shape.quantization.label}); its packed tensors are "
            "counted at "
            f"their stored size (~{params / 1e9:.2f} B weights)."
        )
    if shape.tie_word_embeddings and stats.lm_head_bytes:
        text += " Input and output embeddings are tied, so the stored lm_head copy is not counted twice."
    return Note(
        "weights",
        text,
        {
            "weights_bytes": weights,
            "dtype": dtype,
            "quantization": shape.quantization.label if shape.quantization else None,
            "tied_embeddings_deduplicated": bool(shape.tie_word_embeddings and stats.lm_head_bytes),
        },
    )


def _kv_note(*, shape: ModelShape, kv_dtype_bytes: int, tp: int) -> Note:
    whole = kv_cache_bytes_per_token(shape=shape, kv_dtype_bytes=kv_dtype_bytes)
    per_rank = kv_cache_bytes_per_token(shape=shape, kv_dtype_bytes=kv_dtype_bytes, tensor_parallel_size=tp)
    if shape.is_mla:
        text = (
            f"KV cache: {whole:,} bytes per token (MLA: {shape.num_layers} layers × "
            f"{shape.mla_latent_dim} latent values × {kv_dtype_bytes} bytes, no separate K and V). "
            "Every GPU holds the whole latent cache, so it is not split by tensor parallelism."
        )
    else:
        text = (
            f"KV cache: {whole:,} bytes per token (2 × {shape.num_layers} layers × "
            f"{shape.num_kv_heads} KV heads "
            f"× head_dim {shape.head_dim} × {kv_dtype_bytes} bytes)"
        )
        if tp > 1:
            heads = kv_heads_per_rank(shape=shape, tensor_parallel_size=tp)
            text += f"; {per_rank:,} bytes per GPU at TP {tp} ({heads} KV heads each"
            text += ", replicated because TP exceeds the KV heads)" if shape.num_kv_heads < tp else ")"
        text += "."
    if shape.sliding_window_layers:
        text += (
            f" {shape.sliding_window_layers} of {shape.num_layers} layers attend within a "
            f"{shape.sliding_window}-token window, so their cache stops growing past it."
        )
    return Note(
        "kv_cache",
        text,
        {"bytes_per_token": whole, "bytes_per_token_per_gpu": per_rank, "mla": shape.is_mla, "tp": tp},
    )


def _choose_max_model_len(
    *, draft: _Draft, sizing: _Sizing, options: Options, more_room: Mapping[str, Any], more_room_text: str
) -> int:
    """Clamp the model's context to what one GPU's (or RAM's) KV pool holds; record why."""
    context = sizing.context
    pool = draft.layout.pool_tokens
    fit_len = context if pool >= context else round_down(pool, MAX_MODEL_LEN_MULTIPLE)
    minimum = min(context, MIN_SERVABLE_CONTEXT)
    requested = options.max_model_len
    if requested is not None:
        if requested <= pool:
            draft.reasons.append(
                Note(
                    "max_model_len_forced",
                    f"max_model_len {requested:,}, as requested (the KV cache holds up to {pool:,} tokens).",
                    {"max_model_len": requested, "kv_cache_tokens": pool},
                )
            )
            return requested
        need = kv_cache_bytes(
            shape=sizing.shape,
            tokens=requested,
            kv_dtype_bytes=draft.layout.kv_dtype_bytes,
            tensor_parallel_size=draft.layout.tensor_parallel_size,
        )
        change = {"max_model_len": fit_len} if fit_len >= MAX_MODEL_LEN_MULTIPLE else dict(more_room)
        draft.warnings.append(
            PlanWarning(
                "max_model_len_too_long",
                f"max_model_len {requested:,} needs {gib(need)} GiB of KV cache per GPU, but only "
                f"{gib(max(draft.layout.pool_bytes, 0) * sizing.margin)} GiB is free after the weights and "
                f"overheads. The most that fits is {fit_len:,} tokens; use that, or {more_room_text}.",
                {"max_model_len": requested, "max_model_len_that_fits": fit_len, "kv_bytes_needed": need},
                change,
            )
        )
        draft.hard_failures.append("max_model_len_too_long")
        return requested
    if fit_len >= context:
        draft.reasons.append(
            Note(
                "max_model_len_full",
                f"max_model_len {context:,}: the model's full context fits (the KV cache holds "
                f"{pool:,} tokens).",
                {"max_model_len": context, "kv_cache_tokens": pool},
            )
        )
        return context
    if fit_len >= minimum:
        draft.reasons.append(
            Note(
                "max_model_len_capped",
                f"max_model_len {fit_len:,}: the model supports {context:,} tokens, but the KV "
                "cache left after "
                f"the weights holds about {pool:,} (with a safety margin); rounded down to a multiple of "
                f"{MAX_MODEL_LEN_MULTIPLE}.",
                {"max_model_len": fit_len, "context_length": context, "kv_cache_tokens": pool},
            )
        )
        draft.warnings.append(
            PlanWarning(
                "context_capped",
                f"Prompts plus answers longer than {fit_len:,} tokens will be rejected (the model supports "
                f"{context:,}). For longer contexts, {more_room_text}.",
                {"max_model_len": fit_len, "context_length": context},
                dict(more_room) if more_room else {"max_model_len": fit_len},
            )
        )
        return fit_len
    draft.hard_failures.append("no_room_for_context")
    return fit_len if fit_len > 0 else minimum


def _quantized_estimate(*, model: ModelInfo, shape: ModelShape) -> int | None:
    """What a 4-bit AWQ/GPTQ variant of an unquantized model would weigh (embeddings stay 16-bit)."""
    if shape.quantization is not None:
        return None
    params = unpacked_parameter_count(weights=model.weights, shape=shape) or 0
    if not params:
        return None
    embeddings = shape.vocab_size * shape.hidden_size * (1 if shape.tie_word_embeddings else 2)
    return int(max(params - embeddings, 0) * FOUR_BIT_BYTES_PER_WEIGHT + embeddings * 2)


def _more_room_text(*, model: ModelInfo, shape: ModelShape, hardware: str) -> str:
    """``hardware`` (what bigger server would do) plus, for unquantized models, the 4-bit variant's size."""
    quantized = _quantized_estimate(model=model, shape=shape)
    if quantized:
        return (
            f"{hardware}, or pick a 4-bit (AWQ/GPTQ) variant of the model (about {gib(quantized)} GiB "
            "of weights)"
        )
    return hardware


def _server_text(*, gpus_needed: int | None, gpu_name: str) -> str:
    if gpus_needed:
        return f"use a server with {gpus_needed} × {gpu_name} or more"
    return "use GPUs with more memory"


def _gpus_needed(
    *, sizing: _Sizing, gpu: Gpu, util: float, weights: int, dtype: str, want: int
) -> int | None:
    """The fewest GPUs like ``gpu`` (up to 64) whose valid TP holds the weights plus ``want`` tokens."""
    for tp in range(1, 65):
        if tensor_parallel_problem(shape=sizing.shape, size=tp):
            continue
        layout = _vllm_layout(sizing=sizing, gpus=[gpu] * tp, tp=tp, util=util, weights=weights, dtype=dtype)
        if layout.pool_tokens >= want:
            return tp
    return None


# ENGINE PLANS


def _plan_vllm(*, sizing: _Sizing, target: Target, options: Options) -> _Draft:
    shape, model, gpus = sizing.shape, sizing.model, target.gpus
    dtype, dtype_notes, dtype_warnings = _choose_dtype(options=options, shape=shape, device="cuda", gpus=gpus)
    weights = loaded_weights_bytes(weights=model.weights, shape=shape, dtype=dtype)
    util = options.gpu_memory_utilization or DEFAULT_GPU_MEMORY_UTILIZATION
    valid = valid_tensor_parallel_sizes(shape=shape, gpu_count=len(gpus))
    forced_tp = options.tensor_parallel_size
    if forced_tp is not None and forced_tp not in valid:
        problem = tensor_parallel_problem(shape=shape, size=forced_tp)
        raise InvalidOptionsError(
            f"tensor_parallel_size {forced_tp} is not valid for this model: {problem}.",
            hint=f"Valid sizes on this target: {', '.join(map(str, valid))}.",
        )
    layouts = {
        t: _vllm_layout(sizing=sizing, gpus=gpus, tp=t, util=util, weights=weights, dtype=dtype)
        for t in valid
    }
    want = min(sizing.context, USEFUL_CONTEXT_TOKENS)
    useful = [t for t in valid if layouts[t].pool_tokens >= want]
    if forced_tp is not None:
        tp = forced_tp
    elif useful:
        tp = useful[0]
    else:
        tp = max(valid, key=lambda t: (layouts[t].pool_tokens, -t))
    layout = layouts[tp]
    draft = _Draft(
        engine="vllm",
        device="cuda",
        dtype=dtype,
        weights_bytes=weights,
        layout=layout,
        gpu_memory_utilization=util,
        valid_tps=tuple(valid),
    )
    # tensor parallel size: why this one
    rejected = [
        f"TP {t} leaves room for only {layouts[t].pool_tokens:,} tokens"
        if layouts[t].pool_bytes > 0
        else f"TP {t} cannot hold the weights ({gib(layouts[t].weights_per_slot)} GiB per GPU)"
        for t in valid
        if t < tp
    ]
    rules = (
        f"TP must divide the {shape.num_attention_heads} attention heads and the {shape.vocab_size:,}-token "
        f"vocabulary; valid sizes here: {', '.join(map(str, valid))}."
    )
    if forced_tp is not None:
        tp_text = f"Tensor parallel size {tp}, as requested. {rules}"
        tp_code = "tp_forced"
    elif tp in useful:
        tp_text = (
            f"Tensor parallel size {tp}: the fewest GPUs that hold the weights "
            f"({gib(layout.weights_per_slot)} GiB "
            f"per GPU) and leave room for at least one full {want:,}-token request"
            + (f" ({'; '.join(rejected)})" if rejected else "")
            + f". {rules}"
        )
        tp_code = "tp_fewest"
    else:
        tp_text = (
            f"Tensor parallel size {tp}: no valid size leaves room for a full {want:,}-token "
            "request, so the plan "
            f"uses the one with the most KV cache room. {rules}"
        )
        tp_code = "tp_most_room"
    draft.reasons.append(
        Note(
            tp_code,
            tp_text,
            {
                "tensor_parallel_size": tp,
                "valid": list(valid),
                "weights_per_gpu_bytes": layout.weights_per_slot,
            },
        )
    )
    # more room: a larger TP on this target, else more/larger GPUs or a quantized variant
    bigger = [t for t in valid if t > tp and layouts[t].pool_tokens > layout.pool_tokens]
    more_room: dict[str, Any] = {"tensor_parallel_size": bigger[0]} if bigger else {}

    def more_text_for(tokens: int) -> str:
        if bigger:
            return f"set tensor_parallel_size {bigger[0]} to spread the model over more of this server's GPUs"
        needed = _gpus_needed(
            sizing=sizing, gpu=gpus[0], util=util, weights=weights, dtype=dtype, want=tokens
        )
        return _more_room_text(
            model=model, shape=shape, hardware=_server_text(gpus_needed=needed, gpu_name=gpus[0].name)
        )

    gpus_needed = _gpus_needed(sizing=sizing, gpu=gpus[0], util=util, weights=weights, dtype=dtype, want=want)
    more_text = more_text_for(want)
    max_len = _choose_max_model_len(
        draft=draft,
        sizing=sizing,
        options=options,
        more_room=more_room,
        more_room_text=more_text_for(options.max_model_len or sizing.context),
    )
    if layout.pool_bytes <= 0:
        draft.warnings.append(
            PlanWarning(
                "weights_do_not_fit",
                f"The weights need {gib(layout.weights_per_slot)} GiB per GPU plus "
                f"{gib(layout.overhead_per_slot)} GiB of runtime overhead, but only "
                f"{gib(min(c for _, _, c in layout.slots))} GiB of each GPU is usable at "
                f"gpu_memory_utilization {util:g}. To run it, {more_text}.",
                {"weights_per_gpu_bytes": layout.weights_per_slot, "gpus_needed": gpus_needed},
                more_room,
            )
        )
    elif "no_room_for_context" in draft.hard_failures:
        draft.warnings.append(
            PlanWarning(
                "kv_cache_too_small",
                f"After the weights, the KV cache holds only {layout.pool_tokens:,} tokens — less than a "
                f"{min(sizing.context, MIN_SERVABLE_CONTEXT):,}-token conversation. To run it, {more_text}.",
                {"kv_cache_tokens": layout.pool_tokens, "gpus_needed": gpus_needed},
                more_room,
            )
        )
    draft.reasons.append(
        Note(
            "gpu_memory_utilization",
            f"gpu_memory_utilization {util:g}: vLLM preallocates this share of each GPU for "
            "weights, activations "
            "and the KV cache "
            f"({'as requested' if options.gpu_memory_utilization else 'its long-standing default'}"
            "; passed explicitly so the image's own default cannot change the plan). The rest "
            "covers CUDA graphs "
            "and other processes.",
            {"gpu_memory_utilization": util},
        )
    )
    draft.reasons.extend(dtype_notes)
    draft.warnings.extend(dtype_warnings)
    cc = _min_cc(gpus)
    if cc < VLLM_MIN_COMPUTE_CAPABILITY:
        need = ".".join(map(str, VLLM_MIN_COMPUTE_CAPABILITY))
        draft.warnings.append(
            PlanWarning(
                "gpu_too_old_for_vllm",
                f"vLLM {VLLM_VERSION} has kernels for compute capability {need} and newer; "
                f"{gpus[0].name} has {cc[0]}.{cc[1]}, so the server would fail with 'no kernel image'. "
                "Use the transformers engine.",
                {"compute_capability": f"{cc[0]}.{cc[1]}", "minimum": need},
                {"engine": "transformers"},
            )
        )
        draft.hard_failures.append("gpu_too_old_for_vllm")
    if shape.quantization and shape.quantization.bits == 8 and "fp8" in _quant_family(shape) and cc < (8, 0):
        draft.warnings.append(
            PlanWarning(
                "fp8_needs_ampere",
                "FP8 checkpoints need compute capability 8.0 or newer in vLLM (8.9+ for native FP8); "
                "pick the bfloat16 or an AWQ/GPTQ variant of the model.",
                {"compute_capability": f"{cc[0]}.{cc[1]}"},
            )
        )
        draft.hard_failures.append("fp8_needs_ampere")
    _driver_warning(draft=draft, target=target, options=options, engine="vllm")
    _finish_budgets(draft=draft, sizing=sizing, max_len=max_len)
    return draft


def _quant_family(shape: ModelShape) -> str:
    """ "fp8" for fp8 checkpoints whatever their quant_method says (compressed-tensors float 8-bit)."""
    q = shape.quantization
    if q is None:
        return ""
    if q.method == "fp8" or (q.method == "compressed-tensors" and q.bits == 8):
        return "fp8"
    return q.method


def _plan_transformers(*, sizing: _Sizing, target: Target, options: Options, why: Note) -> _Draft:
    """One GPU when the model fits there (with the engine's CUDA image), else the CPU and system RAM."""
    shape, model = sizing.shape, sizing.model
    gpu_draft: _Draft | None = None
    usable_gpus = [
        (i, g)
        for i, g in enumerate(target.gpus)
        if g.compute_capability >= TRANSFORMERS_GPU_MIN_COMPUTE_CAPABILITY
    ]
    if usable_gpus:
        position, gpu = max(usable_gpus, key=lambda pg: pg[1].memory_bytes)
        dtype, dtype_notes, dtype_warnings = _choose_dtype(
            options=options, shape=shape, device="cuda", gpus=[gpu]
        )
        weights = loaded_weights_bytes(weights=model.weights, shape=shape, dtype=dtype)
        overhead = TRANSFORMERS_GPU_RUNTIME_BYTES + activation_bytes(shape=shape)
        layout = _layout(
            sizing=sizing,
            device="cuda",
            tp=1,
            slots=[_gpu_slot(gpu, position)],
            weights=weights,
            overhead=overhead,
            dtype=dtype,
        )
        if layout.pool_tokens >= min(sizing.context, MIN_SERVABLE_CONTEXT):
            gpu_draft = _Draft("transformers", "cuda", dtype, weights, layout, None, (1,))
            gpu_draft.reasons.append(why)
            gpu_draft.reasons.append(
                Note(
                    "transformers_one_gpu",
                    f"transformers serve runs the model on one GPU ({gpu.name}); it does not split a model "
                    "across GPUs.",
                    {"gpu": gpu.name},
                )
            )
            gpu_draft.reasons.extend(dtype_notes)
            gpu_draft.warnings.extend(dtype_warnings)
    if gpu_draft is not None:
        draft = gpu_draft
    else:
        dtype, dtype_notes, dtype_warnings = _choose_dtype(
            options=options, shape=shape, device="cpu", gpus=()
        )
        weights = loaded_weights_bytes(weights=model.weights, shape=shape, dtype=dtype)
        overhead = TRANSFORMERS_CPU_RUNTIME_BYTES + activation_bytes(shape=shape)
        slot = _cpu_slot(target)
        layout = _layout(
            sizing=sizing, device="cpu", tp=1, slots=[slot], weights=weights, overhead=overhead, dtype=dtype
        )
        if not target.ram_bytes:  # unknown RAM: plan the full context and say it was not checked
            layout = _Layout("cpu", 1, (slot,), weights, overhead, layout.kv_dtype_bytes, sizing.context)
        draft = _Draft("transformers", "cpu", dtype, weights, layout, None, (1,))
        draft.reasons.append(why)
        if target.gpus:
            draft.reasons.append(
                Note(
                    "transformers_cpu_fallback",
                    "The model does not fit in one GPU's memory, so transformers serve runs it on the CPU "
                    "from system RAM (much slower).",
                    {},
                )
            )
        draft.reasons.extend(dtype_notes)
        draft.warnings.extend(dtype_warnings)
        draft.warnings.append(
            PlanWarning(
                "cpu_is_slow",
                "On a CPU, expect a few tokens per second for a 7B model and much less for larger ones. "
                "A GPU, or a smaller model, answers many times faster.",
                {},
            )
        )
        if not target.ram_bytes:
            draft.warnings.append(
                PlanWarning(
                    "ram_unknown",
                    f"The target's RAM is unknown, so the plan could not check that {gib(weights)} "
                    "GiB of weights "
                    f"plus {gib(overhead)} GiB of runtime fit. Describe the server's RAM to check.",
                    {"weights_bytes": weights},
                )
            )
    if shape.quantization:
        draft.warnings.append(
            PlanWarning(
                "quantized_needs_kernels",
                f"This checkpoint is pre-quantized ({shape.quantization.label}); transformers needs that "
                f"method's kernels{' and a GPU' if draft.device == 'cpu' else ''}, and may fail to load it. "
                "The unquantized (bfloat16) variant of the model is the safe choice here.",
                {"quantization": shape.quantization.label},
            )
        )
    hardware = "give the server more RAM" if draft.device == "cpu" else "use a GPU with more memory"
    more_text = _more_room_text(model=model, shape=shape, hardware=hardware)
    max_len = _choose_max_model_len(
        draft=draft, sizing=sizing, options=options, more_room={}, more_room_text=more_text
    )
    if draft.layout.pool_bytes <= 0 and (draft.device == "cuda" or target.ram_bytes):
        where = "system RAM" if draft.device == "cpu" else "GPU memory"
        draft.warnings.append(
            PlanWarning(
                "weights_do_not_fit",
                f"The weights need {gib(draft.weights_bytes)} GiB plus "
                f"{gib(draft.layout.overhead_per_slot)} GiB "
                f"of runtime, but only {gib(draft.layout.slots[0][2])} GiB of {where} is usable. To run it, "
                f"{more_text}.",
                {"weights_bytes": draft.weights_bytes},
            )
        )
    if draft.device == "cuda":
        _driver_warning(draft=draft, target=target, options=options, engine="transformers")
    _finish_budgets(draft=draft, sizing=sizing, max_len=max_len)
    return draft


def _driver_warning(*, draft: _Draft, target: Target, options: Options, engine: EngineName) -> None:
    image_cuda = VLLM_IMAGE_CUDA_VERSION if engine == "vllm" else TRANSFORMERS_GPU_IMAGE_CUDA_VERSION
    if options.base_image:
        draft.reasons.append(
            Note(
                "driver_not_checked",
                f"Custom base image {options.base_image}: its CUDA version is unknown, so the "
                "driver check is "
                "skipped.",
                {"base_image": options.base_image},
            )
        )
        return
    check = check_driver(target=target, image_cuda=image_cuda)
    image = VLLM_IMAGE if engine == "vllm" else engine_for("transformers").default_base_image(target=target)
    if check.ok:
        return
    if check.ok is None:
        draft.warnings.append(
            PlanWarning(
                "driver_unknown",
                f"The target's NVIDIA driver version is unknown. {image} is built on CUDA "
                f"{image_cuda} and needs "
                f"driver {check.min_driver} or newer (run nvidia-smi on the server to check).",
                {"image_cuda": image_cuda, "min_driver": check.min_driver},
            )
        )
        return
    branch = driver_branch(target.driver_version)
    cuda12_ok = (branch is not None and branch >= 525) or (
        check.target_cuda is not None and check.target_cuda.split(".")[0] == "12"
    )
    has = f"driver {target.driver_version}" if target.driver_version else "driver"
    text = (
        f"The target's {has} supports CUDA up to {check.target_cuda}, but {image} is built on CUDA "
        f"{image_cuda} and needs driver {check.min_driver} or newer. Upgrade the driver"
    )
    change: dict[str, Any] = {}
    if engine == "vllm":
        text += (
            " (R580 or newer, the CUDA 13 minimum), or build on the CUDA "
            f"{VLLM_IMAGE_CUDA_12_VERSION} image with "
            f"--base-image {VLLM_IMAGE_CUDA_12} (driver 575.51.03+, or an R525+ data-center driver "
            "through CUDA "
            "minor-version compatibility), or use the transformers engine."
        )
        if cuda12_ok:
            change = {"base_image": VLLM_IMAGE_CUDA_12}
    else:
        text += (
            " (a data-center R525+ driver may work through CUDA minor-version compatibility), or "
            "pass an older "
            "--base-image, or run on the CPU."
        )
    draft.warnings.append(
        PlanWarning(
            "driver_too_old",
            text,
            {
                "driver_version": target.driver_version,
                "target_cuda": check.target_cuda,
                "image": image,
                "image_cuda": image_cuda,
                "min_driver": check.min_driver,
                "vllm_min_driver": VLLM_MIN_DRIVER_VERSION,
            },
            change,
        )
    )


def _finish_budgets(*, draft: _Draft, sizing: _Sizing, max_len: int) -> None:
    layout = draft.layout
    kv = kv_cache_bytes(
        shape=sizing.shape,
        tokens=max_len,
        kv_dtype_bytes=layout.kv_dtype_bytes,
        tensor_parallel_size=layout.tensor_parallel_size,
    )
    draft.max_model_len = max_len
    draft.budgets = tuple(
        GpuBudget(
            index=index,
            weights_bytes=layout.weights_per_slot,
            kv_cache_bytes=kv,
            overhead_bytes=layout.overhead_per_slot,
            capacity_bytes=capacity,
            total_bytes=total,
        )
        for index, total, capacity in layout.slots
    )


# THE PLANNER


def plan(*, model: ModelInfo, target: Target, options: Options | None = None) -> Plan:
    """Pure function: same inputs, same plan. Never touches the network or weight data."""
    options = options or Options()
    _validate_options(options, target)
    shape = model_shape(config=model.config, quantization=model.quantization)
    context = model.context_length or shape.context_length or FALLBACK_CONTEXT
    if options.max_model_len is not None and options.max_model_len > context:
        raise InvalidOptionsError(
            f"max_model_len {options.max_model_len:,} is longer than the model's context of "
            f"{context:,} tokens.",
            hint=f"Use at most {context:,}.",
        )
    margin = KV_MARGIN_MOE_OR_MLA if (shape.is_moe or shape.is_mla) else KV_MARGIN_DENSE
    sizing = _Sizing(model=model, shape=shape, context=context, margin=margin)
    draft = _choose(sizing=sizing, target=target, options=options)

    engine = engine_for(draft.engine)
    base_image = options.base_image or engine.default_base_image(target=target, device=draft.device)
    reasons = [*draft.reasons]
    reasons.append(_weights_note(model=model, shape=shape, dtype=draft.dtype, weights=draft.weights_bytes))
    reasons.append(
        _kv_note(
            shape=shape, kv_dtype_bytes=draft.layout.kv_dtype_bytes, tp=draft.layout.tensor_parallel_size
        )
    )
    if context == FALLBACK_CONTEXT and not (model.context_length or shape.context_length):
        reasons.append(
            Note(
                "context_unknown",
                f"config.json names no context length; the plan assumes {FALLBACK_CONTEXT:,} tokens.",
                {"context_length": FALLBACK_CONTEXT},
            )
        )
    fits = not draft.hard_failures
    return Plan(
        model=model,
        target=target,
        options=options,
        engine=draft.engine,
        base_image=base_image,
        tensor_parallel_size=draft.layout.tensor_parallel_size,
        max_model_len=draft.max_model_len,
        dtype=draft.dtype,
        gpu_memory_utilization=draft.gpu_memory_utilization,
        fits=fits,
        weights_bytes=draft.weights_bytes,
        kv_cache_bytes_per_token=kv_cache_bytes_per_token(
            shape=shape, kv_dtype_bytes=draft.layout.kv_dtype_bytes
        ),
        per_gpu=draft.budgets,
        reasons=tuple(reasons),
        warnings=tuple(draft.warnings),
        device=draft.device,
        context_length=context,
        kv_cache_tokens=draft.layout.pool_tokens,
        valid_tensor_parallel_sizes=draft.valid_tps,
    )


def _choose(*, sizing: _Sizing, target: Target, options: Options) -> _Draft:
    gpus = target.gpus
    if options.engine == "vllm":
        draft = _plan_vllm(sizing=sizing, target=target, options=options)
        draft.reasons.insert(
            0, Note("engine_forced", f"Engine vLLM {VLLM_VERSION}, as requested.", {"engine": "vllm"})
        )
        return draft
    if options.engine == "transformers":
        why = Note("engine_forced", "Engine transformers serve, as requested.", {"engine": "transformers"})
        return _plan_transformers(sizing=sizing, target=target, options=options, why=why)
    if target.is_cpu_only:
        why = Note(
            "engine_cpu",
            "Engine transformers serve: the target has no GPU, and vLLM's official image needs an "
            "NVIDIA GPU.",
            {"engine": "transformers"},
        )
        return _plan_transformers(sizing=sizing, target=target, options=options, why=why)
    cc = _min_cc(gpus)
    need = ".".join(map(str, VLLM_MIN_COMPUTE_CAPABILITY))
    if cc < VLLM_MIN_COMPUTE_CAPABILITY:
        if options.tensor_parallel_size and options.tensor_parallel_size > 1:
            raise InvalidOptionsError(
                f"tensor_parallel_size {options.tensor_parallel_size} needs vLLM, which does not "
                "support these "
                f"GPUs (compute capability {cc[0]}.{cc[1]} < {need}).",
                hint="Drop --tensor-parallel-size to run with transformers on one GPU.",
            )
        why = Note(
            "engine_old_gpu",
            f"Engine transformers serve: {_gpu_label(gpus)} has compute capability {cc[0]}.{cc[1]}, and vLLM "
            f"{VLLM_VERSION} (CUDA {VLLM_IMAGE_CUDA_VERSION}) supports {need} and newer.",
            {"engine": "transformers", "compute_capability": f"{cc[0]}.{cc[1]}", "vllm_minimum": need},
        )
        return _plan_transformers(sizing=sizing, target=target, options=options, why=why)
    vllm = _plan_vllm(sizing=sizing, target=target, options=options)
    # Options that only mean something to vLLM keep vLLM, so the warning can say what would fit there.
    vllm_options = options.tensor_parallel_size or options.gpu_memory_utilization or options.max_model_len
    if not vllm.hard_failures or vllm_options:
        vllm.reasons.insert(
            0,
            Note(
                "engine_vllm",
                f"Engine vLLM {VLLM_VERSION}: {_gpu_label(gpus)} (compute capability {cc[0]}.{cc[1]}) is "
                f"supported and the model fits; vLLM batches many requests with a paged KV cache.",
                {"engine": "vllm", "gpus": _gpu_label(gpus)},
            ),
        )
        return vllm
    why = Note(
        "engine_vllm_does_not_fit",
        f"Engine transformers serve: vLLM cannot fit the model on {_gpu_label(gpus)} with a usable context, "
        "and transformers does not preallocate a KV cache pool.",
        {"engine": "transformers"},
    )
    fallback = _plan_transformers(sizing=sizing, target=target, options=options, why=why)
    if not fallback.hard_failures and not any(w.code == "ram_unknown" for w in fallback.warnings):
        return fallback
    vllm.reasons.insert(
        0,
        Note(
            "engine_vllm_nothing_fits",
            f"Engine vLLM {VLLM_VERSION} on {_gpu_label(gpus)}: nothing fits this target; the "
            "warnings say what "
            "would.",
            {"engine": "vllm"},
        ),
    )
    return vllm


# JSON VIEW


def plan_to_dict(plan: Plan) -> dict[str, Any]:
    """The plan as plain JSON types (``ezrunner plan --json``)."""
    target = plan.target
    return {
        "model": {
            "id": plan.model.repo_id,
            "source": plan.model.ref.source,
            "revision": plan.model.revision,
            "commit": plan.model.commit,
            "architecture": plan.model.architecture,
            "path": str(plan.model.ref.path) if plan.model.ref.path else None,  # local folders
        },
        # what the user chose (None: the planner decided), so a recorded plan can be reopened as it was
        "options": dataclasses.asdict(plan.options),
        "target": {
            "label": target.label,
            "origin": target.origin,
            "gpus": [
                {
                    "index": g.index,
                    "name": g.name,
                    "memory_bytes": g.memory_bytes,
                    "compute_capability": g.compute_capability_str,
                }
                for g in target.gpus
            ],
            "driver_version": target.driver_version,
            "cuda_version": target.cuda_version,
            "cpu_cores": target.cpu_cores,
            "ram_bytes": target.ram_bytes,
        },
        "engine": plan.engine,
        "device": plan.device,
        "base_image": plan.base_image,
        "tensor_parallel_size": plan.tensor_parallel_size,
        "valid_tensor_parallel_sizes": list(plan.valid_tensor_parallel_sizes),
        "max_model_len": plan.max_model_len,
        "context_length": plan.context_length,
        "dtype": plan.dtype,
        "gpu_memory_utilization": plan.gpu_memory_utilization,
        "fits": plan.fits,
        "weights_bytes": plan.weights_bytes,
        "kv_cache_bytes_per_token": plan.kv_cache_bytes_per_token,
        "kv_cache_tokens": plan.kv_cache_tokens,
        "per_gpu": [
            {
                "index": b.index,
                "weights_bytes": b.weights_bytes,
                "kv_cache_bytes": b.kv_cache_bytes,
                "overhead_bytes": b.overhead_bytes,
                "capacity_bytes": b.capacity_bytes,
                "total_bytes": b.total_bytes,
            }
            for b in plan.per_gpu
        ],
        "reasons": [{"code": n.code, "text": n.text, "params": dict(n.params)} for n in plan.reasons],
        "warnings": [
            {"code": w.code, "text": w.text, "params": dict(w.params), "change": dict(w.change)}
            for w in plan.warnings
        ],
    }


__all__ = [
    "GIB",
    "EngineName",
    "GpuBudget",
    "Note",
    "Options",
    "Plan",
    "PlanWarning",
    "plan",
    "plan_to_dict",
    "tensor_parallel_problem",
    "valid_tensor_parallel_sizes",
]
