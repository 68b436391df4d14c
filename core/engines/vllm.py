"""vLLM's official OpenAI-compatible server image (``vllm/vllm-openai``) on NVIDIA GPUs: its planning
(tensor parallelism, the preallocated KV-cache pool, dtype), its pinned image and its run spec."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from core.engines.cuda import CUDA_MIN_DRIVER
from core.engines.shared import (
    MIN_SERVABLE_CONTEXT,
    USEFUL_CONTEXT_TOKENS,
    Layout,
    PlanRequest,
    PoolDraft,
    choose_dtype,
    choose_max_model_len,
    driver_warning,
    finish_budgets,
    make_layout,
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
from core.errors import InvalidOptionsError
from core.hardware import Gpu, Target
from core.hubs.base import ModelInfo
from core.planning import EngineDraft, Note, Options, Plan, PlanWarning
from core.runspec import Profile, RunSpec
from core.sizing import (
    ModelShape,
    activation_bytes,
    cuda_visible_bytes,
    gib,
    loaded_weights_bytes,
    non_torch_bytes,
)

# We always pass --gpu-memory-utilization, so the plan's numbers hold whatever the image's default is
# (0.9 through vLLM v0.19; the newest config/cache.py reads 0.92). 0.9 leaves 10 % of each card for CUDA
# graphs, the sampler warm-up and anything else on the GPU.
DEFAULT_GPU_MEMORY_UTILIZATION = 0.9


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
        draft = _plan_vllm(sizing=request)
        return draft.finish(sizing=request)

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


def _vllm_layout(
    *, sizing: PlanRequest, gpus: Sequence[Gpu], tp: int, util: float, weights: int, dtype: str
) -> Layout:
    slots = [
        (g.index if g.index is not None else i, g.memory_bytes, int(cuda_visible_bytes(g.memory_bytes) * util))
        for i, g in enumerate(gpus[:tp])
    ]
    overhead = non_torch_bytes(tensor_parallel_size=tp) + activation_bytes(shape=sizing.shape)
    return make_layout(
        sizing=sizing, device="cuda", tp=tp, slots=slots, weights=weights, overhead=overhead, dtype=dtype
    )


def _gpus_needed(
    *, sizing: PlanRequest, gpu: Gpu, util: float, weights: int, dtype: str, want: int
) -> int | None:
    """The fewest GPUs like ``gpu`` (up to 64) whose valid TP holds the weights plus ``want`` tokens."""
    for tp in range(1, 65):
        if tensor_parallel_problem(shape=sizing.shape, size=tp):
            continue
        layout = _vllm_layout(sizing=sizing, gpus=[gpu] * tp, tp=tp, util=util, weights=weights, dtype=dtype)
        if layout.pool_tokens >= want:
            return tp
    return None


def _plan_vllm(*, sizing: PlanRequest) -> PoolDraft:
    target, options = sizing.target, sizing.options
    shape, model, gpus = sizing.shape, sizing.model, target.gpus
    dtype, dtype_notes, dtype_warnings = choose_dtype(options=options, shape=shape, device="cuda", gpus=gpus)
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
        return more_room_text(
            model=model, shape=shape, hardware=server_text(gpus_needed=needed, gpu_name=gpus[0].name)
        )

    gpus_needed = _gpus_needed(sizing=sizing, gpu=gpus[0], util=util, weights=weights, dtype=dtype, want=want)
    more_text = more_text_for(want)
    max_len = choose_max_model_len(
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
    finish_budgets(draft=draft, sizing=sizing, max_len=max_len)
    return draft


def quant_family(shape: ModelShape) -> str:
    """ "fp8" for fp8 checkpoints whatever their quant_method says (compressed-tensors float 8-bit)."""
    q = shape.quantization
    if q is None:
        return ""
    if q.method == "fp8" or (q.method == "compressed-tensors" and q.bits == 8):
        return "fp8"
    return q.method
