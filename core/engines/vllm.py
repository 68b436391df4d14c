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
    context_capped_warning,
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
from core.runspec import RAY_HEAD_PORT, ApiKey, Profile, RunSpec
from core.sizing import (
    ModelShape,
    gib,
    loaded_weights_bytes,
    pipeline_stage_layers,
    round_down,
    weights_per_gpu_bytes,
)

# The pinned vLLM's own default (vllm/config/cache.py, 0.92 since 0.21), read from the memory table so that
# the value the plan is sized with and the one it passes as --gpu-memory-utilization are one number. CUDA
# graphs are inside this budget since 0.21 (the profile subtracts them), so the old 0.9 no longer buys room.
DEFAULT_GPU_MEMORY_UTILIZATION = constants_for(VLLM_VERSION).default_gpu_memory_utilization.value
# The most nodes a plan spans or suggests: past this, pipeline bubbles and Ray start-up dominate, and a
# quantized variant of the model is the better answer.
MAX_NODES = 32
# How long the first node of a multi-node plan may wait for the others to join its Ray cluster before loading
# starts, added to the health check's start period (the ray_init_timeout of vLLM's
# examples/online_serving/multi-node-serving.sh).
RAY_JOIN_BUDGET_S = 300


class VllmEngine:
    name = "vllm"
    label = f"vLLM {VLLM_VERSION}"
    template = "vllm.Dockerfile.j2"
    port = 8000
    health_path = "/health"
    metrics_path = "/metrics"
    # `vllm serve` takes its key from --api-key or VLLM_API_KEY and checks it on /v1/* only, so /health and
    # /metrics stay open (docs/usage/security.md of vLLM)
    api_key_env = "VLLM_API_KEY"
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
        ]
        if plan.pipeline_parallel_size > 1:
            # vLLM's multi-node recipe: pipeline stages across the nodes of a Ray cluster
            # (docs/serving/parallelism_scaling.md, "Multi-node deployment").
            argv += [
                "--pipeline-parallel-size",
                str(plan.pipeline_parallel_size),
                "--distributed-executor-backend",
                "ray",
            ]
        if plan.data_parallel_size > 1:
            argv += ["--data-parallel-size", str(plan.data_parallel_size)]
        argv += [
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
            gpus_per_node=plan.tensor_parallel_size * plan.data_parallel_size,
            tensor_parallel_size=plan.tensor_parallel_size,
            pipeline_parallel_size=plan.pipeline_parallel_size,
            data_parallel_size=plan.data_parallel_size,
            nodes=plan.nodes,
            ray_port=RAY_HEAD_PORT if plan.nodes > 1 else 0,
            max_model_len=plan.max_model_len,
            description=profile_description(plan),
        )
        start_period = start_period_s(plan.model.total_bytes) + (RAY_JOIN_BUDGET_S if plan.nodes > 1 else 0)
        return RunSpec(
            engine=self.name,
            image=image,
            served_model_name=served_model_name,
            port=plan.options.port,
            port_flag="--port",
            health_path=self.health_path,
            metrics_path=self.metrics_path,
            healthcheck=python_healthcheck(health_path=self.health_path, port=plan.options.port),
            start_period_s=start_period,
            profiles=(profile,),
            default_profile=profile.name,
            ipc_host=True,  # vLLM's workers share tensors through /dev/shm (its docs: --ipc=host)
            api_key=ApiKey(env=plan.options.api_key_env, server_env=self.api_key_env)
            if plan.options.api_key_env
            else None,
        )

    def template_values(self, *, plan: Plan, served_model_name: str, model_dir: str) -> dict[str, Any]:
        return {"vllm_version": VLLM_VERSION}

    def context_files(self, *, plan: Plan) -> tuple[tuple[str, bytes], ...]:
        return ()


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
    """One placement: ``tp`` GPUs of each of ``pp`` nodes (pipeline stages), sized by vLLM's start-up memory at
    the full context on the tightest GPU (the first stage's, or the last's when the output head weighs more)."""

    tp: int
    gpus: tuple[Gpu, ...]  # one stage's GPUs (every node is alike)
    util: float  # what the plan passes as --gpu-memory-utilization for this size
    lowered_from: float | None  # the default, when the start-up check made the plan lower it
    profile: VllmMemoryProfile  # at the model's full context
    longest: int  # the longest request (at most the context) the pool holds; 0 when none does
    pp: int = 1

    @property
    def gpu_count(self) -> int:
        return self.tp * self.pp

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

    def profile(
        self, *, gpus: Sequence[Gpu], tp: int, util: float, max_model_len: int, pp: int = 1
    ) -> VllmMemoryProfile:
        shape = self.sizing.shape
        return vllm_memory_profile(
            shape=shape,
            weights_per_gpu_bytes=weights_per_gpu_bytes(
                weights=self.sizing.model.weights,
                shape=shape,
                dtype=self.dtype,
                tensor_parallel_size=tp,
                pipeline_parallel_size=pp,
            ),
            gpus=gpus[:tp],
            tensor_parallel_size=tp,
            pipeline_parallel_size=pp,
            gpu_memory_utilization=util,
            max_model_len=max_model_len,
            model_dtype=self.dtype,
            version=self.version,
        )

    def starting_profile(
        self, *, gpus: Sequence[Gpu], tp: int, forced_util: float | None, max_model_len: int, pp: int = 1
    ) -> tuple[VllmMemoryProfile, float | None]:
        """The profile at the forced utilization, or at the default lowered until vLLM's start-up check
        passes (the free memory it sees must cover what it requests); and the default when it was lowered."""
        util = forced_util or self.default_utilization
        p = self.profile(gpus=gpus, tp=tp, util=util, max_model_len=max_model_len, pp=pp)
        if forced_util is not None or p.starts:
            return p, None
        lowered = max(0.01, p.highest_starting_utilization)
        return self.profile(gpus=gpus, tp=tp, util=lowered, max_model_len=max_model_len, pp=pp), util

    def candidate(self, *, gpus: Sequence[Gpu], tp: int, forced_util: float | None, pp: int = 1) -> _Candidate:
        context = self.sizing.context
        p, lowered_from = self.starting_profile(
            gpus=gpus, tp=tp, forced_util=forced_util, max_model_len=context, pp=pp
        )
        util = p.gpu_memory_utilization
        longest = self.longest(gpus=gpus, tp=tp, util=util, pp=pp)
        return _Candidate(tp, tuple(gpus[:tp]), util, lowered_from, p, longest, pp)

    def longest(self, *, gpus: Sequence[Gpu], tp: int, util: float, pp: int = 1) -> int:
        """The largest max_model_len (at most the context) whose one request fits the pool: vLLM refuses to
        start below a concurrency of 1. Binary search, as a longer request never takes fewer blocks."""

        def fits(length: int) -> bool:
            return self.profile(gpus=gpus, tp=tp, util=util, max_model_len=length, pp=pp).fits_one_request

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

    def nodes_needed(
        self, *, gpus: Sequence[Gpu], tp: int, forced_util: float | None, want: int, first: int = 2
    ) -> int | None:
        """The fewest nodes like this one, from ``first`` (TP ``tp`` within each, one pipeline stage per node,
        up to ``MAX_NODES``), that hold the weights plus one ``want``-token request."""
        for pp in range(max(2, first), min(MAX_NODES, self.sizing.shape.num_layers) + 1):
            p, _ = self.starting_profile(gpus=gpus, tp=tp, forced_util=forced_util, max_model_len=want, pp=pp)
            if p.starts and p.fits_one_request:
                return pp
        return None


def _layout(*, candidate: _Candidate, dtype: str, gpus: Sequence[Gpu]) -> Layout:
    """The candidate's memory on ``gpus``: its own TP group's, or every replica's (all alike) with data
    parallelism."""
    slots = tuple(
        (g.index if g.index is not None else i, g.memory_bytes, math.ceil(cuda_total_bytes(g) * candidate.util))
        for i, g in enumerate(gpus)
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
    forced_tp, forced_dp, nodes = options.tensor_parallel_size, options.data_parallel_size, options.nodes
    if forced_tp is not None and forced_tp not in valid:
        problem = tensor_parallel_problem(shape=shape, size=forced_tp)
        raise InvalidOptionsError(
            f"tensor_parallel_size {forced_tp} is not valid for this model: {problem}.",
            hint=f"Valid sizes on this target: {', '.join(map(str, valid))}.",
        )
    # Sizes whose replicas the node holds: with a forced data parallel size, TP × DP GPUs at most.
    allowed = [
        t for t in valid if (forced_tp is None or t == forced_tp) and t * (forced_dp or 1) <= len(gpus)
    ]
    if not allowed:
        raise InvalidOptionsError(
            f"data_parallel_size {forced_dp} leaves no valid tensor parallel size on {len(gpus)} GPUs "
            f"(valid sizes: {', '.join(map(str, valid))}).",
            hint="Lower --data-parallel-size, or leave it unset to let the planner choose.",
        )
    candidates = {t: sizer.candidate(gpus=gpus, tp=t, forced_util=forced_util) for t in valid}
    # More nodes: TP within a node (the largest valid size, all its GPUs when they divide the heads), one
    # pipeline stage per node. Replicas are one-node plans, so a forced data parallel size stays on one node.
    node_tp = forced_tp or valid[-1]
    stage_limit = min(nodes, shape.num_layers) if (forced_dp or 1) == 1 else 1
    staged = {pp: sizer.candidate(gpus=gpus, tp=node_tp, forced_util=forced_util, pp=pp)
              for pp in range(2, stage_limit + 1)}
    layouts = [candidates[t] for t in allowed] + [staged[pp] for pp in sorted(staged)]
    want = min(sizing.context, USEFUL_CONTEXT_TOKENS)
    useful = [c for c in layouts if c.longest >= want]
    # The fewest GPUs that hold a useful context (one request of min(context, 8192) tokens): the GPUs left
    # serve as data-parallel replicas, so a server's every GPU answers users. A longer context is one fix away
    # (the context_capped warning offers the larger tensor parallel size). Where even that needs more than one
    # node, the fewest nodes; where nothing holds a useful context, the layout closest to fitting, so that the
    # warnings give the shortfall of the best layout.
    full = [c for c in layouts if c.longest >= sizing.context]
    if useful:
        chosen = useful[0]
    else:
        chosen = max(
            layouts,
            key=lambda c: (c.longest, c.profile.max_concurrency, c.profile.expected_kv_pool_bytes, -c.gpu_count),
        )
    tp, pp = chosen.tp, chosen.pp
    # Every GPU of the node serves: as many replicas as the node holds groups of TP GPUs (vLLM's own balancer
    # spreads requests over them behind one port).
    dp = 1 if pp > 1 else forced_dp or max(1, len(gpus) // tp)
    serving = gpus[: tp * dp]
    layout = _layout(candidate=chosen, dtype=dtype, gpus=serving)
    util = chosen.util
    draft = PoolDraft(
        engine="vllm",
        device="cuda",
        dtype=dtype,
        weights_bytes=weights,
        layout=layout,
        gpu_memory_utilization=util,
        valid_tps=tuple(valid),
        pipeline_parallel_size=pp,
        data_parallel_size=dp,
    )
    # tensor parallel size: why this one
    rejected = [
        f"TP {t} leaves room for only {candidates[t].longest:,} tokens"
        if candidates[t].profile.kv_pool_bytes > 0
        else f"TP {t} cannot hold the weights ({gib(candidates[t].profile.weights_bytes)} GiB per GPU)"
        for t in valid
        if t < tp or (pp > 1 and t == tp)
    ]
    rules = (
        f"TP must divide the {shape.num_attention_heads} attention heads and the {shape.vocab_size:,}-token "
        f"vocabulary; valid sizes here: {', '.join(map(str, valid))}."
    )
    where = "context" if pp == 1 else f"context on {pp} nodes"
    if forced_tp is not None:
        tp_text = f"Tensor parallel size {tp}, as requested. {rules}"
        tp_code = "tp_forced"
    elif chosen in full:
        tp_text = (
            f"Tensor parallel size {tp}: the fewest GPUs that hold the weights "
            f"({gib(layout.weights_per_slot)} GiB per GPU, RoPE cache included) and one request of the model's "
            f"full {sizing.context:,}-token {where}"
            + (f" ({'; '.join(rejected)})" if rejected else "")
            + f". {rules}"
        )
        tp_code = "tp_fewest"
    elif chosen in useful:
        tp_text = (
            f"Tensor parallel size {tp}: the fewest GPUs that hold the weights and one {want:,}-token request "
            f"({chosen.longest:,} tokens of context fit; the model's own is {sizing.context:,})"
            + (f" ({'; '.join(rejected)})" if rejected else "")
            + f". {rules}"
        )
        tp_code = "tp_longest_context"
    else:
        tp_text = (
            f"Tensor parallel size {tp}: no valid size leaves room for a full {want:,}-token request, so the "
            f"plan uses the one closest to fitting. {rules}"
        )
        tp_code = "tp_most_room"
    draft.reasons.append(
        Note(
            tp_code,
            tp_text,
            {"tensor_parallel_size": tp, "valid": list(valid), "weights_per_gpu_bytes": layout.weights_per_slot},
        )
    )
    _parallel_notes(
        draft=draft, sizer=sizer, chosen=chosen, dp=dp, gpus=gpus, forced_dp=forced_dp is not None, nodes=nodes
    )
    # more room: a larger TP on this target, else more nodes, more/larger GPUs or a quantized variant
    bigger = [
        t
        for t in valid
        if pp == 1
        and t > tp
        and t * (forced_dp or 1) <= len(gpus)
        and candidates[t].profile.max_concurrency > chosen.profile.max_concurrency
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
    if chosen not in useful and (forced_dp or 1) == 1:
        _more_nodes_warning(draft=draft, sizer=sizer, gpus=gpus, tp=node_tp, forced_util=forced_util, want=want)
    max_len = _choose_max_model_len(
        draft=draft,
        sizer=sizer,
        candidate=chosen,
        more_room=more_room,
        more_room_text=more_text_for(options.max_model_len or sizing.context),
    )
    final = sizer.profile(gpus=chosen.gpus, tp=tp, util=util, max_model_len=max_len, pp=pp)
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


def _parallel_notes(
    *,
    draft: PoolDraft,
    sizer: _Sizer,
    chosen: _Candidate,
    dp: int,
    gpus: Sequence[Gpu],
    forced_dp: bool,
    nodes: int,
) -> None:
    """Why the plan spans these nodes and replicas, and what it leaves unused."""
    tp, pp = chosen.tp, chosen.pp
    node = f"{len(gpus)} × {gpus[0].name}"
    if pp > 1:
        layers = sizer.sizing.shape.num_layers
        stages = pipeline_stage_layers(num_layers=layers, pipeline_parallel_size=pp)
        split = (
            f"evenly, {stages[0]} per stage"
            if len(set(stages)) == 1
            else f"as {', '.join(map(str, stages))} (vLLM gives the remainder to the stages before the last)"
        )
        draft.reasons.append(
            Note(
                "pipeline_parallel",
                f"Pipeline parallel size {pp}: {pp} nodes of {node}, one pipeline stage per node and tensor "
                f"parallel size {tp} within each; one node cannot hold the model with a useful context. The "
                f"{layers} decoder layers split {split}; the first stage also holds the input embeddings and the "
                f"last one the output head, so each GPU holds at most {gib(chosen.profile.weights_bytes)} GiB of "
                "weights and the KV cache of its own stage's layers. vLLM runs the stages over Ray: the first "
                "node starts the Ray head and the server, the others join it.",
                {
                    "nodes": pp,
                    "pipeline_parallel_size": pp,
                    "tensor_parallel_size": tp,
                    "layers_per_stage": stages,
                    "weights_per_gpu_bytes": chosen.profile.weights_bytes,
                },
            )
        )
    elif dp > 1:
        draft.reasons.append(
            Note(
                "data_parallel",
                f"Data parallel size {dp}{', as requested' if forced_dp else ''}: {dp} replicas of the model, "
                f"each on {tp} GPU{'s' if tp > 1 else ''}, so {tp * dp} GPUs serve requests; vLLM's API server "
                "spreads requests over the replicas behind one port. Each replica has its own KV cache pool (the "
                f"figures below are one replica's), so the server holds {dp} times the concurrency.",
                {"data_parallel_size": dp, "tensor_parallel_size": tp, "gpus_used": tp * dp},
            )
        )
    idle = len(gpus) - tp * dp if pp == 1 else len(gpus) - tp
    if idle > 0:
        draft.reasons.append(
            Note(
                "gpus_idle",
                f"{idle} of the {len(gpus)} GPUs {'stays' if idle == 1 else 'stay'} idle: "
                + (f"data_parallel_size {dp} × tensor_parallel_size {tp} uses {tp * dp}."
                   if forced_dp or pp > 1
                   else f"groups of {tp} GPUs fill {tp * dp} of them."),
                {"idle_gpus": idle, "gpus": len(gpus)},
            )
        )
    if nodes > pp:
        draft.warnings.append(
            PlanWarning(
                "nodes_not_needed",
                (
                    f"One node is enough: {node} hold the model, so the plan runs on one node and leaves the "
                    f"other {nodes - 1} free (another copy of the pack can serve there)."
                    if pp == 1
                    else f"{pp} of the {nodes} nodes hold the model, so the plan uses {pp} and leaves {nodes - pp} "
                    "free."
                ),
                {"nodes": nodes, "nodes_used": pp},
                {"nodes": pp},
            )
        )


def _more_nodes_warning(
    *, draft: PoolDraft, sizer: _Sizer, gpus: Sequence[Gpu], tp: int, forced_util: float | None, want: int
) -> None:
    """When the nodes given cannot hold the model: how many such nodes would, if any up to ``MAX_NODES`` do."""
    nodes = sizer.sizing.options.nodes
    needed = sizer.nodes_needed(gpus=gpus, tp=tp, forced_util=forced_util, want=want, first=nodes + 1)
    if needed is None:
        return
    here = "one node" if nodes == 1 else f"{nodes} nodes"
    draft.warnings.append(
        PlanWarning(
            "needs_more_nodes",
            f"The model does not fit {here} of {len(gpus)} × {gpus[0].name} with room for one {want:,}-token "
            f"request; {needed} such nodes hold it with vLLM's pipeline parallelism (tensor parallel size {tp} "
            f"within each node, one pipeline stage per node, Ray between them): plan with --nodes {needed}.",
            {"nodes_needed": needed, "tensor_parallel_size": tp, "pipeline_parallel_size": needed},
            {"nodes": needed},
        )
    )


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
        return sizer.profile(
            gpus=candidate.gpus, tp=candidate.tp, util=candidate.util, max_model_len=length, pp=candidate.pp
        )

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
        draft.warnings.append(context_capped_warning(fit_len=fit_len, context=context, more_room_text=more_room_text,
                                                     more_room=more_room))  # fmt: skip
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
