"""vLLM's official OpenAI-compatible server image (``vllm/vllm-openai``) on NVIDIA GPUs: its planning
(tensor parallelism, the preallocated KV-cache pool, dtype), its pinned image and its run spec."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from core.engines.cuda import CUDA_MIN_DRIVER
from core.engines.shared import (
    MAX_MODEL_LEN_MULTIPLE,
    MIN_SERVABLE_CONTEXT,
    USEFUL_CONTEXT_TOKENS,
    Layout,
    PlanRequest,
    PoolDraft,
    choose_dtype,
    driver_warning,
    min_compute_capability,
    more_room_text,
    profile_description,
    python_healthcheck,
    server_text,
    start_period_s,
)
from core.engines.versions import (
    VLLM_IMAGE,
    VLLM_IMAGE_CUDA_12,
    VLLM_IMAGE_CUDA_12_VERSION,
    VLLM_IMAGE_CUDA_VERSION,
    VLLM_MIN_COMPUTE_CAPABILITY,
    VLLM_VERSION,
)
from core.engines.vllm_memory import (
    VllmMemoryProfile,
    constants_for,
    cuda_total_bytes,
    kv_dtype_bytes,
    vllm_memory_profile,
)
from core.errors import InvalidOptionsError
from core.hardware import Gpu, Target
from core.hubs.base import ModelInfo
from core.planning import EngineDraft, GpuBudget, Note, Options, Plan, PlanWarning
from core.runspec import Profile, RunSpec
from core.sizing import ModelShape, gib, loaded_weights_bytes, round_down, weights_per_gpu_bytes

# The pinned vLLM's own default (vllm/config/cache.py, 0.92 since 0.21), read from the memory table so that
# the value the plan is sized with and the one it passes as --gpu-memory-utilization are one number. CUDA
# graphs are inside this budget since 0.21 (the profile subtracts them), so the old 0.9 no longer buys room.
DEFAULT_GPU_MEMORY_UTILIZATION = constants_for(VLLM_VERSION).default_gpu_memory_utilization.value


class VllmEngine:
    name = "vllm"
    label = f"vLLM {VLLM_VERSION}"
    template = "vllm.Dockerfile.j2"
    port = 8000
    health_path = "/health"
    metrics_path = "/metrics"
    formats = frozenset({"safetensors"})
    # The image's own ENTRYPOINT is ["vllm", "serve"]; the run spec repeats it so the rendered Dockerfile
    # states the whole command without guessing.
    image_entrypoint: tuple[str, ...] = ("vllm", "serve")

    def refusal(self, *, model: ModelInfo, target: Target, options: Options) -> str | None:
        if model.format != "safetensors":
            return (
                f"The vLLM image is packed from safetensors weights; {model.repo_id} is a {model.format.upper()} "
                "model (use the llama.cpp engine, or pick the safetensors repository of the same model)."
            )
        if target.is_cpu_only or not any(g.vendor == "nvidia" for g in target.gpus):
            return "The vLLM image needs an NVIDIA GPU, and the target has none."
        return None

    def plan(self, *, request: PlanRequest) -> EngineDraft:
        return plan_vllm(request=request)

    def default_base_image(self, *, plan: Plan) -> str:
        return VLLM_IMAGE

    def image_cuda_version(self, *, base_image: str) -> str | None:
        return {VLLM_IMAGE: VLLM_IMAGE_CUDA_VERSION, VLLM_IMAGE_CUDA_12: VLLM_IMAGE_CUDA_12_VERSION}.get(base_image)

    def serve_argv(self, *, plan: Plan, model_dir: str, served_model_name: str) -> list[str]:
        argv = [
            *self.image_entrypoint,
            model_dir,
            "--served-model-name",
            served_model_name,
            "--tensor-parallel-size",
            str(plan.tensor_parallel_size),
            "--max-model-len",
            str(plan.max_model_len),
            "--dtype",
            plan.dtype,
        ]
        if plan.gpu_memory_utilization is not None:
            argv += ["--gpu-memory-utilization", f"{plan.gpu_memory_utilization:g}"]
        argv += ["--host", "0.0.0.0"]
        return argv

    def run_spec(self, *, plan: Plan, image: str, served_model_name: str, model_dir: str) -> RunSpec:
        profile = Profile(
            name="default",
            device="cuda",
            argv=tuple(self.serve_argv(plan=plan, model_dir=model_dir, served_model_name=served_model_name)),
            gpus_per_node=plan.tensor_parallel_size,
            tensor_parallel_size=plan.tensor_parallel_size,
            max_model_len=plan.max_model_len,
            description=profile_description(plan),
        )
        return RunSpec(
            engine=self.name,
            image=image,
            served_model_name=served_model_name,
            port=plan.options.port,
            port_flag="--port",
            health_path=self.health_path,
            metrics_path=self.metrics_path,
            healthcheck=python_healthcheck(health_path=self.health_path, port=plan.options.port),
            start_period_s=start_period_s(plan.model.total_bytes),
            profiles=(profile,),
            default_profile=profile.name,
            ipc_host=True,  # vLLM's workers share tensors through /dev/shm (its docs: --ipc=host)
        )

    def template_values(self, *, plan: Plan, served_model_name: str, model_dir: str) -> dict[str, Any]:
        return {"vllm_version": VLLM_VERSION}


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


@dataclass(frozen=True)
class _Candidate:
    """One tensor parallel size on the first ``tp`` GPUs, sized by vLLM's start-up memory at the full context."""

    tp: int
    gpus: tuple[Gpu, ...]
    util: float  # what the plan passes as --gpu-memory-utilization for this size
    lowered_from: float | None  # the default, when the start-up check made the plan lower it
    profile: VllmMemoryProfile  # at the model's full context
    longest: int  # the longest request (at most the context) the pool holds; 0 when none does

    @property
    def overhead_bytes(self) -> int:
        """Everything vLLM takes of the requested memory besides weights and the promised pool."""
        p = self.profile
        return p.activation_peak_bytes + p.non_torch_bytes + p.cudagraph_bytes + p.safety_bytes


@dataclass(frozen=True)
class _Sizer:
    """vLLM's memory for this model and dtype, on any GPUs, at any utilization and max_model_len."""

    sizing: PlanRequest
    dtype: str
    version: str

    @property
    def default_utilization(self) -> float:
        return constants_for(self.version).default_gpu_memory_utilization.value

    def profile(self, *, gpus: Sequence[Gpu], tp: int, util: float, max_model_len: int) -> VllmMemoryProfile:
        shape = self.sizing.shape
        return vllm_memory_profile(
            shape=shape,
            weights_per_gpu_bytes=weights_per_gpu_bytes(
                weights=self.sizing.model.weights, shape=shape, dtype=self.dtype, tensor_parallel_size=tp
            ),
            gpus=gpus[:tp],
            tensor_parallel_size=tp,
            gpu_memory_utilization=util,
            max_model_len=max_model_len,
            model_dtype=self.dtype,
            version=self.version,
        )

    def starting_profile(
        self, *, gpus: Sequence[Gpu], tp: int, forced_util: float | None, max_model_len: int
    ) -> tuple[VllmMemoryProfile, float | None]:
        """The profile at the forced utilization, or at the default lowered until vLLM's start-up check
        passes (the free memory it sees must cover what it requests); and the default when it was lowered."""
        util = forced_util or self.default_utilization
        p = self.profile(gpus=gpus, tp=tp, util=util, max_model_len=max_model_len)
        if forced_util is not None or p.starts:
            return p, None
        lowered = max(0.01, p.highest_starting_utilization)
        return self.profile(gpus=gpus, tp=tp, util=lowered, max_model_len=max_model_len), util

    def candidate(self, *, gpus: Sequence[Gpu], tp: int, forced_util: float | None) -> _Candidate:
        context = self.sizing.context
        p, lowered_from = self.starting_profile(gpus=gpus, tp=tp, forced_util=forced_util, max_model_len=context)
        util = p.gpu_memory_utilization
        return _Candidate(tp, tuple(gpus[:tp]), util, lowered_from, p, self.longest(gpus=gpus, tp=tp, util=util))

    def longest(self, *, gpus: Sequence[Gpu], tp: int, util: float) -> int:
        """The largest max_model_len (at most the context) whose one request fits the pool: vLLM refuses to
        start below a concurrency of 1. Binary search, as a longer request never takes fewer blocks."""

        def fits(length: int) -> bool:
            return self.profile(gpus=gpus, tp=tp, util=util, max_model_len=length).fits_one_request

        low, high = 0, self.sizing.context
        if fits(high):
            return high
        while high - low > 1:  # fits(low) or low == 0; not fits(high)
            middle = (low + high) // 2
            if fits(middle):
                low = middle
            else:
                high = middle
        return low

    def gpus_needed(self, *, gpu: Gpu, forced_util: float | None, want: int) -> int | None:
        """The fewest GPUs like ``gpu`` (up to 64) whose valid TP holds the weights plus one ``want``-token
        request."""
        for tp in range(1, 65):
            if tensor_parallel_problem(shape=self.sizing.shape, size=tp):
                continue
            p, _ = self.starting_profile(gpus=[gpu] * tp, tp=tp, forced_util=forced_util, max_model_len=want)
            if p.starts and p.fits_one_request:
                return tp
        return None


def _layout(*, candidate: _Candidate, dtype: str) -> Layout:
    slots = tuple(
        (g.index if g.index is not None else i, g.memory_bytes, math.ceil(cuda_total_bytes(g) * candidate.util))
        for i, g in enumerate(candidate.gpus)
    )
    return Layout(
        device="cuda",
        tensor_parallel_size=candidate.tp,
        slots=slots,
        weights_per_slot=candidate.profile.weights_bytes,
        overhead_per_slot=candidate.overhead_bytes,
        kv_dtype_bytes=kv_dtype_bytes(kv_cache_dtype="auto", model_dtype=dtype),
        pool_tokens=candidate.longest,
    )


def plan_vllm(*, request: PlanRequest, version: str = VLLM_VERSION) -> EngineDraft:
    """The vLLM plan of ``request``, sized with the memory behaviour of vLLM ``version`` (the pinned release;
    another one only to compare with logs of that release)."""
    return _plan_vllm(sizing=request, version=version).finish(sizing=request)


def _plan_vllm(*, sizing: PlanRequest, version: str) -> PoolDraft:
    target, options = sizing.target, sizing.options
    shape, model, gpus = sizing.shape, sizing.model, target.gpus
    dtype, dtype_notes, dtype_warnings = choose_dtype(options=options, shape=shape, device="cuda", gpus=gpus)
    weights = loaded_weights_bytes(weights=model.weights, shape=shape, dtype=dtype)
    sizer = _Sizer(sizing=sizing, dtype=dtype, version=version)
    forced_util = options.gpu_memory_utilization
    valid = valid_tensor_parallel_sizes(shape=shape, gpu_count=len(gpus))
    forced_tp = options.tensor_parallel_size
    if forced_tp is not None and forced_tp not in valid:
        problem = tensor_parallel_problem(shape=shape, size=forced_tp)
        raise InvalidOptionsError(
            f"tensor_parallel_size {forced_tp} is not valid for this model: {problem}.",
            hint=f"Valid sizes on this target: {', '.join(map(str, valid))}.",
        )
    candidates = {t: sizer.candidate(gpus=gpus, tp=t, forced_util=forced_util) for t in valid}
    want = min(sizing.context, USEFUL_CONTEXT_TOKENS)
    useful = [t for t in valid if candidates[t].longest >= want]
    # The fewest GPUs that hold the model's whole context; when none does, the size with the longest context
    # among those that hold a useful one (GPUs the server has anyway buy context, not idleness).
    full = [t for t in valid if candidates[t].longest >= sizing.context]
    if forced_tp is not None:
        tp = forced_tp
    elif full:
        tp = full[0]
    elif useful:
        tp = max(useful, key=lambda t: (candidates[t].longest, -t))
    else:
        tp = max(valid, key=lambda t: (candidates[t].longest, candidates[t].profile.max_concurrency, -t))
    chosen = candidates[tp]
    layout = _layout(candidate=chosen, dtype=dtype)
    util = chosen.util
    draft = PoolDraft(
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
        f"TP {t} leaves room for only {candidates[t].longest:,} tokens"
        if candidates[t].profile.kv_pool_bytes > 0
        else f"TP {t} cannot hold the weights ({gib(candidates[t].profile.weights_bytes)} GiB per GPU)"
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
    elif tp in full:
        tp_text = (
            f"Tensor parallel size {tp}: the fewest GPUs that hold the weights "
            f"({gib(layout.weights_per_slot)} GiB per GPU, RoPE cache included) and one request of the model's "
            f"full {sizing.context:,}-token context"
            + (f" ({'; '.join(rejected)})" if rejected else "")
            + f". {rules}"
        )
        tp_code = "tp_fewest"
    elif tp in useful:
        tp_text = (
            f"Tensor parallel size {tp}: no size holds the model's full {sizing.context:,}-token context, and this "
            f"one leaves the longest ({candidates[tp].longest:,} tokens) of those with room for at least one "
            f"{want:,}-token request"
            + (f" ({'; '.join(rejected)})" if rejected else "")
            + f". {rules}"
        )
        tp_code = "tp_longest_context"
    else:
        tp_text = (
            f"Tensor parallel size {tp}: no valid size leaves room for a full {want:,}-token request, so the "
            f"plan uses the one with the most KV cache room. {rules}"
        )
        tp_code = "tp_most_room"
    draft.reasons.append(
        Note(
            tp_code,
            tp_text,
            {"tensor_parallel_size": tp, "valid": list(valid), "weights_per_gpu_bytes": layout.weights_per_slot},
        )
    )
    # more room: a larger TP on this target, else more/larger GPUs or a quantized variant
    bigger = [
        t for t in valid if t > tp and candidates[t].profile.max_concurrency > chosen.profile.max_concurrency
    ]
    more_room: dict[str, Any] = {"tensor_parallel_size": bigger[0]} if bigger else {}

    def more_text_for(tokens: int) -> str:
        if bigger:
            return f"set tensor_parallel_size {bigger[0]} to spread the model over more of this server's GPUs"
        needed = sizer.gpus_needed(gpu=gpus[0], forced_util=forced_util, want=tokens)
        return more_room_text(
            model=model, shape=shape, hardware=server_text(gpus_needed=needed, gpu_name=gpus[0].name)
        )

    gpus_needed = sizer.gpus_needed(gpu=gpus[0], forced_util=forced_util, want=want)
    more_text = more_text_for(want)
    max_len = _choose_max_model_len(
        draft=draft,
        sizer=sizer,
        candidate=chosen,
        more_room=more_room,
        more_room_text=more_text_for(options.max_model_len or sizing.context),
    )
    final = sizer.profile(gpus=chosen.gpus, tp=tp, util=util, max_model_len=max_len)
    if layout.pool_bytes <= 0:
        draft.warnings.append(
            PlanWarning(
                "weights_do_not_fit",
                f"The weights need {gib(layout.weights_per_slot)} GiB per GPU plus "
                f"{gib(layout.overhead_per_slot)} GiB for vLLM's profile run, CUDA graphs, non-torch memory and "
                f"the safety margin, but vLLM takes only {gib(final.requested_bytes)} GiB of each GPU at "
                f"gpu_memory_utilization {util:g}. To run it, {more_text}.",
                {"weights_per_gpu_bytes": layout.weights_per_slot, "gpus_needed": gpus_needed},
                more_room,
            )
        )
    elif "no_room_for_context" in draft.hard_failures:
        draft.warnings.append(
            PlanWarning(
                "kv_cache_too_small",
                f"After the weights, vLLM's KV cache pool ({gib(final.kv_pool_bytes)} GiB) holds only "
                f"{chosen.longest:,} tokens for one request — less than a "
                f"{min(sizing.context, MIN_SERVABLE_CONTEXT):,}-token conversation. To run it, {more_text}.",
                {"kv_cache_tokens": chosen.longest, "gpus_needed": gpus_needed},
                more_room,
            )
        )
    draft.reasons.append(_pool_note(profile=final))
    draft.reasons.append(_utilization_note(candidate=chosen, forced=forced_util is not None, version=version))
    if not final.starts:
        highest = final.highest_starting_utilization
        draft.warnings.append(
            PlanWarning(
                "gpu_memory_utilization_too_high",
                f"gpu_memory_utilization {util:g} asks vLLM for {gib(final.requested_bytes)} GiB of each GPU, "
                f"but its start-up check will find only {gib(final.startup_free_bytes)} GiB free (the CUDA "
                "context" + (" and NCCL take" if tp > 1 else " takes") + " the rest), so the server would "
                f"refuse to start. Use at most {highest:g}.",
                {
                    "gpu_memory_utilization": util,
                    "requested_bytes": final.requested_bytes,
                    "free_bytes": final.startup_free_bytes,
                    "highest": highest,
                },
                {"gpu_memory_utilization": highest},
            )
        )
        draft.hard_failures.append("gpu_memory_utilization_too_high")
    for assumption in shape.assumptions:
        draft.warnings.append(PlanWarning(assumption.code, assumption.text, dict(assumption.params)))
    draft.reasons.extend(dtype_notes)
    draft.warnings.extend(dtype_warnings)
    cc = min_compute_capability(gpus)
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
    if shape.quantization and shape.quantization.bits == 8 and "fp8" in quant_family(shape) and cc < (8, 0):
        draft.warnings.append(
            PlanWarning(
                "fp8_needs_ampere",
                "FP8 checkpoints need compute capability 8.0 or newer in vLLM (8.9+ for native FP8); "
                "pick the bfloat16 or an AWQ/GPTQ variant of the model.",
                {"compute_capability": f"{cc[0]}.{cc[1]}"},
            )
        )
        draft.hard_failures.append("fp8_needs_ampere")
    driver_warning(
        draft=draft,
        target=target,
        options=options,
        image=VLLM_IMAGE,
        image_cuda=VLLM_IMAGE_CUDA_VERSION,
        advice=(
            " (R580 or newer, the CUDA 13 minimum), or build on the CUDA "
            f"{VLLM_IMAGE_CUDA_12_VERSION} image with --base-image {VLLM_IMAGE_CUDA_12} (driver "
            f"{CUDA_MIN_DRIVER[VLLM_IMAGE_CUDA_12_VERSION]}+, or an R525+ data-center driver through CUDA "
            "minor-version compatibility), or use the transformers engine."
        ),
        fallback=(VLLM_IMAGE_CUDA_12, VLLM_IMAGE_CUDA_12_VERSION),
    )
    draft.max_model_len = max_len
    draft.kv_cache_tokens = final.pool_tokens
    draft.max_concurrency = final.max_concurrency
    draft.budgets = tuple(
        GpuBudget(
            index=index,
            weights_bytes=final.weights_bytes,
            kv_cache_bytes=final.request_kv_bytes,
            overhead_bytes=layout.overhead_per_slot,
            capacity_bytes=capacity,
            total_bytes=total,
        )
        for index, total, capacity in layout.slots
    )
    return draft


def _choose_max_model_len(
    *, draft: PoolDraft, sizer: _Sizer, candidate: _Candidate, more_room: Mapping[str, Any], more_room_text: str
) -> int:
    """The model's context, clamped to the longest request vLLM's pool holds (rounded down to a multiple of
    256), or the user's length; a length vLLM would refuse is a hard failure that names the one that fits."""
    sizing = sizer.sizing
    context = sizing.context
    longest = candidate.longest
    fit_len = context if longest >= context else round_down(longest, MAX_MODEL_LEN_MULTIPLE)
    minimum = min(context, MIN_SERVABLE_CONTEXT)
    requested = sizing.options.max_model_len

    def at(length: int) -> VllmMemoryProfile:
        return sizer.profile(gpus=candidate.gpus, tp=candidate.tp, util=candidate.util, max_model_len=length)

    if requested is not None:
        p = at(requested)
        if p.fits_one_request:
            draft.reasons.append(
                Note(
                    "max_model_len_forced",
                    f"max_model_len {requested:,}, as requested (the KV cache holds {p.pool_tokens:,} tokens, "
                    f"{p.max_concurrency:.2f} requests of this length at once).",
                    {"max_model_len": requested, "kv_cache_tokens": p.pool_tokens},
                )
            )
            return requested
        change = {"max_model_len": fit_len} if fit_len >= MAX_MODEL_LEN_MULTIPLE else dict(more_room)
        draft.warnings.append(
            PlanWarning(
                "max_model_len_too_long",
                f"max_model_len {requested:,} needs {gib(p.request_kv_bytes)} GiB of KV cache per GPU for one "
                f"request, but vLLM's pool is only {gib(p.kv_pool_bytes)} GiB after the weights and overheads, "
                f"so vLLM would refuse to start. The most that fits is {fit_len:,} tokens; use that, or "
                f"{more_room_text}.",
                {
                    "max_model_len": requested,
                    "max_model_len_that_fits": fit_len,
                    "kv_bytes_needed": p.request_kv_bytes,
                },
                change,
            )
        )
        draft.hard_failures.append("max_model_len_too_long")
        return requested
    if fit_len >= context:
        pool = at(context).pool_tokens
        draft.reasons.append(
            Note(
                "max_model_len_full",
                f"max_model_len {context:,}: the model's full context fits (the KV cache holds {pool:,} tokens).",
                {"max_model_len": context, "kv_cache_tokens": pool},
            )
        )
        return context
    if fit_len >= minimum:
        pool = at(fit_len).pool_tokens
        draft.reasons.append(
            Note(
                "max_model_len_capped",
                f"max_model_len {fit_len:,}: the model supports {context:,} tokens, but vLLM's KV cache pool "
                f"holds one request of at most {longest:,} (after the weights, the profile run, CUDA graphs and "
                f"a safety margin); rounded down to a multiple of {MAX_MODEL_LEN_MULTIPLE}.",
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


def _pool_note(*, profile: VllmMemoryProfile) -> Note:
    """The pool as vLLM will log it at start-up, and the terms it is what is left of."""
    p = profile
    available, size = p.as_vllm_prints()
    assumed = "; ".join(p.defaults_assumed) or "none (both set)"
    text = (
        f"KV cache pool, as vLLM {p.version} will log it (or a little more): \"{available}\", \"{size}\" "
        f"({p.num_blocks:,} blocks of {p.block_size} tokens). It is what remains of the "
        f"{gib(p.requested_bytes)} GiB vLLM requests per GPU ({gib(p.gpu_total_bytes)} GiB × "
        f"{p.gpu_memory_utilization:g}) after {gib(p.weights_bytes)} GiB of weights, the profile run's "
        f"{gib(p.activation_peak_bytes)} GiB peak, {gib(p.non_torch_bytes)} GiB of non-torch memory, "
        f"{gib(p.cudagraph_bytes)} GiB of CUDA graphs and a {gib(p.safety_bytes)} GiB safety margin under "
        f"vLLM's own figure. Batch limits assumed: {assumed}."
    )
    return Note(
        "kv_pool",
        text,
        {
            "kv_cache_tokens": p.pool_tokens,
            "max_concurrency": round(p.max_concurrency, 2),
            "max_model_len": p.max_model_len,
            "kv_pool_bytes": p.kv_pool_bytes,
            "requested_bytes": p.requested_bytes,
            "weights_per_gpu_bytes": p.weights_bytes,
            "activation_bytes": p.activation_peak_bytes,
            "non_torch_bytes": p.non_torch_bytes,
            "cudagraph_bytes": p.cudagraph_bytes,
            "safety_bytes": p.safety_bytes,
            "num_blocks": p.num_blocks,
            "block_size": p.block_size,
            "max_num_seqs": p.max_num_seqs,
            "max_num_batched_tokens": p.max_num_batched_tokens,
            "defaults_assumed": list(p.defaults_assumed),
            "vllm_version": p.version,
        },
    )


def _utilization_note(*, candidate: _Candidate, forced: bool, version: str) -> Note:
    util, lowered = candidate.util, candidate.lowered_from
    if forced:
        why = "as requested"
    elif lowered is not None:
        p = candidate.profile
        why = (
            f"lowered from vLLM {version}'s default {lowered:g}: its start-up check needs what it requests "
            f"to be free, and after the CUDA context{' and NCCL' if candidate.tp > 1 else ''} only "
            f"{gib(p.startup_free_bytes)} of {gib(p.gpu_total_bytes)} GiB are"
        )
    else:
        why = f"vLLM {version}'s own default"
    return Note(
        "gpu_memory_utilization",
        f"gpu_memory_utilization {util:g}: vLLM takes this share of each GPU for the weights, the profile "
        f"run, CUDA graphs and the KV cache pool ({why}; passed explicitly, so the server uses the value the "
        "plan was sized with). The rest is left to the CUDA context, NCCL and other processes.",
        {"gpu_memory_utilization": util, "lowered_from": lowered},
    )


def quant_family(shape: ModelShape) -> str:
    """ "fp8" for fp8 checkpoints whatever their quant_method says (compressed-tensors float 8-bit)."""
    q = shape.quantization
    if q is None:
        return ""
    if q.method == "fp8" or (q.method == "compressed-tensors" and q.bits == 8):
        return "fp8"
    return q.method
