"""Planning steps the pool-based engines (vLLM, ``transformers serve``) share: the memory layout of one
candidate placement, dtype, ``max_model_len``, the driver check and the notes that explain them.

Engines import this; it imports only the leaf value types, the sizing model and the engine base rules.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from core.engines.cuda import check_driver, driver_branch
from core.hardware import Gpu, Target, target_label
from core.hubs.base import ModelInfo
from core.planning import Device, EngineDraft, GpuBudget, Note, Options, Plan, PlanWarning
from core.sizing import (
    TORCH_DTYPE_BYTES,
    ModelShape,
    ceil_div,
    gib,
    kv_cache_bytes,
    kv_cache_bytes_per_token,
    kv_heads_per_rank,
    normalise_dtype,
    pipeline_stage_layers,
    round_down,
    state_bytes_per_sequence,
    tokens_that_fit,
    unpacked_parameter_count,
)

RAM_USABLE_FRACTION = 0.85  # the OS, the page cache of the model files and other processes keep the rest
# "Useful KV room": a TP size counts as fitting when one full request of min(context, 8192) tokens fits.
USEFUL_CONTEXT_TOKENS = 8192
# Below this context (or the model's own, if shorter) the plan is reported as not fitting.
MIN_SERVABLE_CONTEXT = 2048
# max_model_len is rounded down to a multiple of 256: a multiple of vLLM's 16-token block, and a number
# people can read; the model's own context is kept as is when it fits.
MAX_MODEL_LEN_MULTIPLE = 256
# transformers only (vLLM plans promise vllm_memory's pool, which has its own safety margin).
# Only this share of the estimated KV pool is promised to max_model_len: the llm-d-planner validation found
# ~4 % KV error on dense models and 10-29 % on MoE/MLA ones (notes §0), and vLLM refuses to start when one
# max_model_len request does not fit.
KV_MARGIN_DENSE = 0.9
KV_MARGIN_MOE_OR_MLA = 0.75
FALLBACK_CONTEXT = 4096  # a config without max_position_embeddings
# bytes per weight of a 4-bit, group-128 AWQ/GPTQ variant: 0.5 + (2 B scale + 0.5 B zero) / 128 (notes §1.1)
FOUR_BIT_BYTES_PER_WEIGHT = 0.5195


@dataclass(frozen=True)
class PlanRequest:
    """What every engine plans from: the model, its resolved shape, the context to aim for, the target and
    the user's options (already validated by the planner)."""

    model: ModelInfo
    shape: ModelShape
    context: int  # the model's own context (or FALLBACK_CONTEXT)
    margin: float  # share of the estimated KV pool promised to max_model_len
    target: Target
    options: Options


@dataclass(frozen=True)
class Layout:
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
class PoolDraft:
    """An engine's plan while it is being made: a layout plus the notes so far."""

    engine: str
    device: Device
    dtype: str
    weights_bytes: int
    layout: Layout
    gpu_memory_utilization: float | None
    valid_tps: tuple[int, ...] = ()
    reasons: list[Note] = field(default_factory=list)
    warnings: list[PlanWarning] = field(default_factory=list)
    hard_failures: list[str] = field(default_factory=list)  # codes of warnings that make fits False
    max_model_len: int = 0
    budgets: tuple[GpuBudget, ...] = ()
    # The pool as the engine states it, when it is not the layout's longest sequence (vLLM: "GPU KV cache
    # size" and "Maximum concurrency" at the planned max_model_len).
    kv_cache_tokens: int | None = None
    max_concurrency: float | None = None
    pipeline_parallel_size: int = 1  # nodes, one pipeline stage each (vLLM)
    data_parallel_size: int = 1  # replicas on the node, each on tensor_parallel_size GPUs (vLLM)

    def finish(self, *, sizing: PlanRequest) -> EngineDraft:
        """The draft as the planner takes it; the notes about weights and KV cache come first."""
        tp = self.layout.tensor_parallel_size
        notes = [
            weights_note(model=sizing.model, shape=sizing.shape, dtype=self.dtype, weights=self.weights_bytes),
            kv_note(
                shape=sizing.shape, kv_dtype_bytes=self.layout.kv_dtype_bytes, tp=tp, pp=self.pipeline_parallel_size
            ),
        ]
        return EngineDraft(
            engine=self.engine,
            device=self.device,
            dtype=self.dtype,
            weights_bytes=self.weights_bytes,
            tensor_parallel_size=tp,
            max_model_len=self.max_model_len,
            kv_cache_bytes_per_token=kv_cache_bytes_per_token(
                shape=sizing.shape, kv_dtype_bytes=self.layout.kv_dtype_bytes
            ),
            kv_cache_tokens=self.layout.pool_tokens if self.kv_cache_tokens is None else self.kv_cache_tokens,
            gpu_memory_utilization=self.gpu_memory_utilization,
            budgets=self.budgets,
            valid_tps=self.valid_tps,
            reasons=[*self.reasons, *notes],
            warnings=list(self.warnings),
            hard_failures=list(self.hard_failures),
            max_concurrency=self.max_concurrency,
            pipeline_parallel_size=self.pipeline_parallel_size,
            data_parallel_size=self.data_parallel_size,
        )


def make_layout(
    *,
    sizing: PlanRequest,
    device: Device,
    tp: int,
    slots: Sequence[tuple[int | None, int, int]],
    weights: int,
    overhead: int,
    dtype: str,
) -> Layout:
    kv_dtype_bytes = TORCH_DTYPE_BYTES[dtype]
    per_slot = ceil_div(weights, tp)
    pool = min(cap for _, _, cap in slots) - per_slot - overhead
    tokens = tokens_that_fit(
        shape=sizing.shape,
        kv_bytes=int(pool * sizing.margin),
        kv_dtype_bytes=kv_dtype_bytes,
        tensor_parallel_size=tp,
    )
    return Layout(
        device=device,
        tensor_parallel_size=tp,
        slots=tuple(slots),
        weights_per_slot=per_slot,
        overhead_per_slot=overhead,
        kv_dtype_bytes=kv_dtype_bytes,
        pool_tokens=tokens,
    )


def cpu_slot(target: Target) -> tuple[int | None, int, int]:
    ram = target.ram_bytes or 0
    return None, ram, int(ram * RAM_USABLE_FRACTION)


def min_compute_capability(gpus: Sequence[Gpu]) -> tuple[int, int]:
    return min(g.compute_capability for g in gpus)


def gpu_label(gpus: Sequence[Gpu]) -> str:
    names = sorted({g.name for g in gpus})
    return f"{len(gpus)} × {names[0]}" if len(names) == 1 else f"{len(gpus)} GPUs ({', '.join(names)})"


def choose_dtype(
    *, options: Options, shape: ModelShape, device: Device, gpus: Sequence[Gpu]
) -> tuple[str, list[Note], list[PlanWarning]]:
    notes: list[Note] = []
    warnings: list[PlanWarning] = []
    checkpoint = shape.checkpoint_dtype
    cc = min_compute_capability(gpus) if device == "cuda" and gpus else None
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


def weights_note(*, model: ModelInfo, shape: ModelShape, dtype: str, weights: int) -> Note:
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


def kv_note(*, shape: ModelShape, kv_dtype_bytes: int, tp: int, pp: int = 1) -> Note:
    whole = kv_cache_bytes_per_token(shape=shape, kv_dtype_bytes=kv_dtype_bytes)
    per_rank = kv_cache_bytes_per_token(shape=shape, kv_dtype_bytes=kv_dtype_bytes, tensor_parallel_size=tp)
    if shape.is_mla:
        text = (
            f"KV cache: {whole:,} bytes per token (MLA: {shape.num_layers} layers × "
            f"{shape.mla_latent_dim} latent values × {kv_dtype_bytes} bytes, no separate K and V). "
            "Every GPU holds the whole latent cache, so it is not split by tensor parallelism."
        )
    else:
        # hybrid models: only the attention layers cache per token
        attention = shape.attention_layers
        layers = f"{shape.num_layers}" if attention == shape.num_layers else f"{attention} attention"
        text = (
            f"KV cache: {whole:,} bytes per token (2 × {layers} layers × "
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
    chunked = shape.count("chunked")
    if chunked:
        text += (
            f" {chunked} of {shape.num_layers} layers attend within {shape.attention_chunk_size}-token chunks, "
            "so their cache stops growing past one chunk."
        )
    if pp > 1:
        stage = max(pipeline_stage_layers(num_layers=shape.num_layers, pipeline_parallel_size=pp))
        text += (
            f" Across {pp} pipeline stages each GPU caches only its own stage's layers (at most {stage} of "
            f"{shape.num_layers}), so the figures per GPU shrink by that share."
        )
    state = state_bytes_per_sequence(shape=shape, dtype_bytes=kv_dtype_bytes)
    state_per_rank = state_bytes_per_sequence(shape=shape, tensor_parallel_size=tp, dtype_bytes=kv_dtype_bytes)
    if state:
        kinds = " and ".join(k for k in ("linear", "mamba") if shape.count(k))
        text += (
            f" {shape.state_layers} {kinds} layers keep a fixed state instead: {state:,} bytes per sequence, "
            "whatever its length"
            + (f" ({state_per_rank:,} bytes per GPU at TP {tp})." if tp > 1 else ".")
        )
    return Note(
        "kv_cache",
        text,
        {
            "bytes_per_token": whole,
            "bytes_per_token_per_gpu": per_rank,
            "state_bytes_per_sequence": state,
            "state_bytes_per_sequence_per_gpu": state_per_rank,
            "mla": shape.is_mla,
            "tp": tp,
            "pp": pp,
        },
    )


def choose_max_model_len(
    *, draft: PoolDraft, sizing: PlanRequest, options: Options, more_room: Mapping[str, Any], more_room_text: str
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
        draft.warnings.append(context_capped_warning(fit_len=fit_len, context=context, more_room_text=more_room_text,
                                                     more_room=more_room))  # fmt: skip
        return fit_len
    draft.hard_failures.append("no_room_for_context")
    return fit_len if fit_len > 0 else minimum


def context_capped_warning(
    *, fit_len: int, context: int, more_room_text: str, more_room: Mapping[str, Any]
) -> PlanWarning:
    """The warning of a context cut to what the memory holds, with the change that gives more room."""
    return PlanWarning(
        "context_capped",
        f"Prompts plus answers longer than {fit_len:,} tokens will be rejected (the model supports "
        f"{context:,}). For longer contexts, {more_room_text}.",
        {"max_model_len": fit_len, "context_length": context},
        dict(more_room) if more_room else {"max_model_len": fit_len},
    )


def quantized_estimate(*, model: ModelInfo, shape: ModelShape) -> int | None:
    """What a 4-bit AWQ/GPTQ variant of an unquantized model would weigh (embeddings stay 16-bit)."""
    if shape.quantization is not None:
        return None
    params = unpacked_parameter_count(weights=model.weights, shape=shape) or 0
    if not params:
        return None
    embeddings = shape.vocab_size * shape.hidden_size * (1 if shape.tie_word_embeddings else 2)
    return int(max(params - embeddings, 0) * FOUR_BIT_BYTES_PER_WEIGHT + embeddings * 2)


def more_room_text(*, model: ModelInfo, shape: ModelShape, hardware: str) -> str:
    """``hardware`` (what bigger server would do) plus, for unquantized models, the 4-bit variant's size."""
    quantized = quantized_estimate(model=model, shape=shape)
    if quantized:
        return (
            f"{hardware}, or pick a 4-bit (AWQ/GPTQ) variant of the model (about {gib(quantized)} GiB "
            "of weights)"
        )
    return hardware


def server_text(*, gpus_needed: int | None, gpu_name: str) -> str:
    if gpus_needed:
        return f"use a server with {gpus_needed} × {gpu_name} or more"
    return "use GPUs with more memory"


def driver_warning(
    *,
    draft: PoolDraft | EngineDraft,
    target: Target,
    options: Options,
    image: str,
    image_cuda: str,
    advice: str,
    fallback: tuple[str, str] | None = None,
) -> None:
    """Warn when the target's driver cannot start ``image`` (built on CUDA ``image_cuda``).

    ``advice`` ends the sentence after "Upgrade the driver"; ``fallback`` is (image, CUDA version) of an
    older-CUDA build of the same engine, offered as the fix when the driver can run it."""
    if options.base_image:
        draft.reasons.append(
            Note(
                "driver_not_checked",
                f"Custom base image {options.base_image}: its CUDA version is unknown, so the driver check is "
                "skipped.",
                {"base_image": options.base_image},
            )
        )
        return
    check = check_driver(target=target, image_cuda=image_cuda)
    if check.ok:
        return
    if check.ok is None:
        draft.warnings.append(
            PlanWarning(
                "driver_unknown",
                f"The target's NVIDIA driver version is unknown. {image} is built on CUDA {image_cuda} and needs "
                f"driver {check.min_driver} or newer (run nvidia-smi on the server to check).",
                {"image_cuda": image_cuda, "min_driver": check.min_driver},
            )
        )
        return
    has = f"driver {target.driver_version}" if target.driver_version else "driver"
    text = (
        f"The target's {has} supports CUDA up to {check.target_cuda}, but {image} is built on CUDA "
        f"{image_cuda} and needs driver {check.min_driver} or newer. Upgrade the driver{advice}"
    )
    change: dict[str, Any] = {}
    if fallback is not None:
        fallback_image, fallback_cuda = fallback
        major = fallback_cuda.split(".")[0]
        branch = driver_branch(target.driver_version)
        # CUDA minor-version compatibility: any R525+ driver runs a 12.x image (reduced features)
        family_ok = (major == "12" and branch is not None and branch >= 525) or (
            check.target_cuda is not None and check.target_cuda.split(".")[0] == major
        )
        if family_ok or check_driver(target=target, image_cuda=fallback_cuda).ok:
            change = {"base_image": fallback_image}
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
            },
            change,
        )
    )


def finish_budgets(*, draft: PoolDraft, sizing: PlanRequest, max_len: int) -> None:
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


# RUN SPEC PIECES


def start_period_s(total_bytes: int) -> int:
    """How long the image's health check waits before failures count: loading runs at a few hundred MB/s
    from overlayfs, plus the engine's warm-up (vLLM: CUDA graph capture)."""
    return int(min(3600, max(180, 180 + total_bytes / (200 << 20))))


def python_healthcheck(*, health_path: str, port: int) -> tuple[str, ...]:
    """A HEALTHCHECK for images that have python3 (vLLM, transformers): GET the health path on $PORT."""
    probe = (
        "import os, urllib.request; urllib.request.urlopen("
        f"'http://127.0.0.1:%s{health_path}' % os.environ.get('PORT', '{port}'), timeout=4)"
    )
    return ("python3", "-c", probe)


def profile_description(plan: Plan) -> str:
    """"1 × NVIDIA H100 80GB SXM, 32,768 tokens": what a profile of this plan runs on."""
    where = plan.target.label or target_label(target=plan.target)
    return f"{where}, {plan.device.upper()}, {plan.max_model_len:,} tokens"
