"""``transformers serve`` (OpenAI-compatible): CPU targets, small or old GPUs, models vLLM cannot fit.
Its planning (one device, no preallocated pool), its images and its run spec."""

from __future__ import annotations

import dataclasses
import shlex
from importlib import resources
from typing import Any

from core.engines.shared import (
    MIN_SERVABLE_CONTEXT,
    Layout,
    PlanRequest,
    PoolDraft,
    choose_dtype,
    choose_max_model_len,
    cpu_slot,
    driver_warning,
    finish_budgets,
    make_layout,
    more_room_text,
    profile_description,
    python_healthcheck,
    start_period_s,
)
from core.engines.transformers_memory import (
    CUDA_RUNTIME_BYTES,
    eager_attention,
    longest_prompt,
    prefill_activation_bytes,
)
from core.engines.versions import (
    TORCH_CPU_VERSION,
    TRANSFORMERS_CPU_BASE_IMAGE,
    TRANSFORMERS_GPU_BASE_IMAGE,
    TRANSFORMERS_GPU_IMAGE_CUDA_VERSION,
    TRANSFORMERS_GPU_MIN_COMPUTE_CAPABILITY,
    TRANSFORMERS_VERSION,
)
from core.hardware import Gpu, Target
from core.hubs.base import ModelInfo
from core.planning import EngineDraft, Note, Options, Plan, PlanWarning
from core.runspec import ApiKey, Profile, RunSpec
from core.serving_proxy import API_KEY_ENV as PROXY_API_KEY_ENV
from core.serving_proxy import METRICS_PATH as PROXY_METRICS_PATH
from core.sizing import (
    TORCH_DTYPE_BYTES,
    TRANSFORMERS_CPU_RUNTIME_BYTES,
    cuda_visible_bytes,
    gib,
    kv_cache_bytes,
    loaded_weights_bytes,
    model_shape,
)

TRANSFORMERS_GPU_USABLE_FRACTION = 0.95  # no preallocation: only leave room for the CUDA allocator's slack
# `transformers serve` 5.23 has no API key and no metrics (transformers/cli/serving/server.py registers only the
# /v1 routes, /load_model, /reset and /health), so the image runs core/serving_proxy.py in front of it: copied
# from the package into the build context, then into the image, where its python3 runs it.
PROXY_CONTEXT_PATH = "proxy/serving_proxy.py"
PROXY_IMAGE_PATH = "/usr/local/lib/ezrunner/serving_proxy.py"


class TransformersEngine:
    name = "transformers"
    label = f"transformers serve {TRANSFORMERS_VERSION}"
    template = "transformers.Dockerfile.j2"
    port = 8000
    health_path = "/health"  # transformers/cli/serving/server.py registers GET /health; the proxy asks it
    metrics_path = PROXY_METRICS_PATH  # the proxy's
    api_key_env = PROXY_API_KEY_ENV  # the proxy's
    formats = frozenset({"safetensors"})

    def refusal(self, *, model: ModelInfo, target: Target, options: Options) -> str | None:
        if model.format != "safetensors":
            return (
                f"transformers serve loads safetensors weights; {model.repo_id} is a {model.format.upper()} model "
                "(use the llama.cpp engine)."
            )
        if options.tensor_parallel_size is not None and options.tensor_parallel_size > 1:
            return (
                f"transformers serve runs on one device, so tensor_parallel_size {options.tensor_parallel_size} "
                "cannot be honoured (drop --tensor-parallel-size, or choose the vllm engine to split the model "
                "across GPUs)."
            )
        return None

    def plan(self, *, request: PlanRequest) -> EngineDraft:
        return _plan_transformers(sizing=request).finish(sizing=request)

    def default_base_image(self, *, plan: Plan) -> str:
        return TRANSFORMERS_CPU_BASE_IMAGE if plan.device == "cpu" else TRANSFORMERS_GPU_BASE_IMAGE

    def image_cuda_version(self, *, base_image: str) -> str | None:
        return TRANSFORMERS_GPU_IMAGE_CUDA_VERSION if base_image == TRANSFORMERS_GPU_BASE_IMAGE else None

    def serve_argv(self, *, plan: Plan, model_dir: str, served_model_name: str) -> list[str]:
        # transformers 5.23 `serve`: the positional model is preloaded and the server is pinned to it; requests
        # must name it. It is the hub id, resolved offline through the HF-cache snapshot the template points
        # at model_dir, so clients use the same model name as with vLLM. --device becomes device_map.
        return [
            "transformers",
            "serve",
            served_model_name,
            "--device",
            "cpu" if plan.device == "cpu" else "cuda",
            "--dtype",
            plan.dtype,
            "--host",
            "0.0.0.0",
        ]

    def run_spec(self, *, plan: Plan, image: str, served_model_name: str, model_dir: str) -> RunSpec:
        # The proxy listens on the --host and the --port the server command gets, and starts the server on a
        # loopback port in their stead (core.serving_proxy.split_listen_address).
        proxy = ("python3", PROXY_IMAGE_PATH, "--")
        profile = Profile(
            name="default",
            device=plan.device,
            argv=(*proxy, *self.serve_argv(plan=plan, model_dir=model_dir, served_model_name=served_model_name)),
            gpus_per_node=1 if plan.device != "cpu" else 0,
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
            ipc_host=plan.device != "cpu",  # torch's CUDA IPC and DataLoader workers use /dev/shm
            api_key=ApiKey(env=plan.options.api_key_env, server_env=self.api_key_env)
            if plan.options.api_key_env
            else None,
        )

    def template_values(self, *, plan: Plan, served_model_name: str, model_dir: str) -> dict[str, Any]:
        # The GPU base image already has a CUDA torch; on the CPU image pip must take torch's CPU wheel, or it
        # would pull the multi-gigabyte CUDA build from PyPI.
        packages = [f"transformers[serving]=={TRANSFORMERS_VERSION}"]
        if plan.device == "cpu":
            packages = [
                f"torch=={TORCH_CPU_VERSION}",
                *packages,
                "--extra-index-url",
                "https://download.pytorch.org/whl/cpu",
            ]
        return {
            "transformers_version": TRANSFORMERS_VERSION,
            "pip_packages": " ".join(shlex.quote(p) for p in packages),
            "hf_cache_repo": f"/home/ezrunner/.cache/huggingface/hub/{hf_cache_folder(served_model_name)}",
            "snapshot": plan.model.commit,
            "proxy_context_path": PROXY_CONTEXT_PATH,
            "proxy_image_path": PROXY_IMAGE_PATH,
        }

    def context_files(self, *, plan: Plan) -> tuple[tuple[str, bytes], ...]:
        return ((PROXY_CONTEXT_PATH, proxy_source()),)


def proxy_source() -> bytes:
    """The proxy's own source file, as the package holds it (a wheel, a checkout)."""
    return (resources.files("core") / "serving_proxy.py").read_bytes()


def hf_cache_folder(repo_id: str) -> str:
    """The folder huggingface_hub uses for ``repo_id`` in its cache (``models--org--name``)."""
    return "models--" + repo_id.replace("/", "--")


def gpu_slot(gpu: Gpu, position: int) -> tuple[int | None, int, int]:
    index = gpu.index if gpu.index is not None else position
    return index, gpu.memory_bytes, int(cuda_visible_bytes(gpu.memory_bytes) * TRANSFORMERS_GPU_USABLE_FRACTION)


def _plan_transformers(*, sizing: PlanRequest) -> PoolDraft:
    """One GPU when the model fits there (with the engine's CUDA image), else the CPU and system RAM."""
    shape, model, target, options = sizing.shape, sizing.model, sizing.target, sizing.options
    gpu_draft: PoolDraft | None = None
    usable_gpus = [
        (i, g)
        for i, g in enumerate(target.gpus)
        if g.compute_capability >= TRANSFORMERS_GPU_MIN_COMPUTE_CAPABILITY
    ]
    if usable_gpus:
        position, gpu = max(usable_gpus, key=lambda pg: pg[1].memory_bytes)
        dtype, dtype_notes, dtype_warnings = choose_dtype(
            options=options, shape=shape, device="cuda", gpus=[gpu]
        )
        weights = loaded_weights_bytes(weights=model.weights, shape=shape, dtype=dtype)
        layout = _prefill_layout(make_layout(
            sizing=sizing,
            device="cuda",
            tp=1,
            slots=[gpu_slot(gpu, position)],
            weights=weights,
            overhead=CUDA_RUNTIME_BYTES,
            dtype=dtype,
        ), sizing=sizing, dtype=dtype)  # fmt: skip
        if layout.pool_tokens >= min(sizing.context, MIN_SERVABLE_CONTEXT):
            gpu_draft = PoolDraft("transformers", "cuda", dtype, weights, layout, None, (1,))
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
        dtype, dtype_notes, dtype_warnings = choose_dtype(
            options=options, shape=shape, device="cpu", gpus=()
        )
        weights = loaded_weights_bytes(weights=model.weights, shape=shape, dtype=dtype)
        overhead = TRANSFORMERS_CPU_RUNTIME_BYTES
        slot = cpu_slot(target)
        layout = _prefill_layout(make_layout(
            sizing=sizing, device="cpu", tp=1, slots=[slot], weights=weights, overhead=overhead, dtype=dtype
        ), sizing=sizing, dtype=dtype)  # fmt: skip
        if not target.ram_bytes:  # unknown RAM: plan the full context and say it was not checked
            layout = Layout("cpu", 1, (slot,), weights, overhead, layout.kv_dtype_bytes, sizing.context)
        draft = PoolDraft("transformers", "cpu", dtype, weights, layout, None, (1,))
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
    more_text = more_room_text(model=model, shape=shape, hardware=hardware)
    max_len = choose_max_model_len(
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
        driver_warning(
            draft=draft,
            target=target,
            options=options,
            image=TRANSFORMERS_GPU_BASE_IMAGE,
            image_cuda=TRANSFORMERS_GPU_IMAGE_CUDA_VERSION,
            advice=(
                " (a data-center R525+ driver may work through CUDA minor-version compatibility), or pass an "
                "older --base-image, or run on the CPU."
            ),
        )
    finish_budgets(draft=draft, sizing=sizing, max_len=max_len)
    _add_prefill_peak(draft=draft, sizing=sizing, max_len=max_len)
    return draft


def _prefill_layout(layout: Layout, *, sizing: PlanRequest, dtype: str) -> Layout:
    """The layout's pool in tokens of prompt: each token costs its KV cache and its prefill activations, since
    ``transformers serve`` prefills the whole prompt in one forward pass (core.engines.transformers_memory)."""
    room = int(max(layout.pool_bytes, 0) * sizing.margin)
    tokens = longest_prompt(shape=sizing.shape, room=room, dtype=dtype, limit=2**31)
    return dataclasses.replace(layout, pool_tokens=tokens)


def _add_prefill_peak(*, draft: PoolDraft, sizing: PlanRequest, max_len: int) -> None:
    """Count the prefill activations of a max_model_len prompt in each budget, and say what the peak is."""
    activations = prefill_activation_bytes(shape=sizing.shape, tokens=max_len, dtype=draft.dtype)
    draft.budgets = tuple(
        dataclasses.replace(budget, overhead_bytes=budget.overhead_bytes + activations) for budget in draft.budgets
    )
    if not draft.budgets:
        return
    peak = draft.budgets[0].used_bytes
    where = "system RAM" if draft.device == "cpu" else "GPU memory"
    eager = (
        f" {sizing.shape.model_type} runs eager attention in transformers, whose scores grow with the square of "
        "the prompt."
        if eager_attention(sizing.shape)
        else ""
    )
    draft.reasons.append(
        Note(
            "transformers_prefill_peak",
            f"transformers serve prefills a whole prompt in one pass: at {max_len:,} tokens it peaks at about "
            f"{gib(peak)} GiB of {where} ({gib(draft.budgets[0].weights_bytes)} weights, "
            f"{gib(draft.budgets[0].kv_cache_bytes)} KV cache, {gib(activations)} activations and runtime), "
            f"as measured on an H200.{eager}",
            {"max_model_len": max_len, "peak_bytes": peak, "activation_bytes": activations},
        )
    )
    if draft.device == "cuda":
        draft.reasons.append(
            Note(
                "transformers_decode_speed",
                "transformers serve decodes one sequence at about 10-18 tokens/s for 0.6B-12B models on an H200 "
                "(measured), where llama.cpp decodes an 8B model at 180-240 tokens/s and vLLM batches many "
                "users: choose those engines where they run.",
                {},
            )
        )


def predicted_peak_bytes(*, plan: Plan, tokens: int) -> int:
    """What ``transformers serve`` of ``plan`` holds at its peak while it answers one ``tokens``-token prompt."""
    shape = model_shape(config=plan.model.config, quantization=plan.model.quantization)
    runtime = CUDA_RUNTIME_BYTES if plan.device != "cpu" else TRANSFORMERS_CPU_RUNTIME_BYTES
    kv = kv_cache_bytes(shape=shape, tokens=tokens, kv_dtype_bytes=TORCH_DTYPE_BYTES[plan.dtype])
    return plan.weights_bytes + runtime + kv + prefill_activation_bytes(shape=shape, tokens=tokens, dtype=plan.dtype)
