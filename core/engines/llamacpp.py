"""llama.cpp's ``llama-server`` (OpenAI-compatible) for GGUF models: CPU servers, small or old GPUs, AMD and
Vulkan GPUs. Its planning (which quantization, how many layers on the GPU, the split across GPUs, context and
slots, from ``core.llamacpp_memory``), its pinned images and its run spec.

Safetensors models are converted at pack time (``core.convert``) when the plan is llama.cpp: the candidates
are then the quantizations the conversion can make, sized from a header built from the model's config.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from core.engines.cuda import CUDA_MIN_DRIVER
from core.engines.shared import (
    MIN_SERVABLE_CONTEXT,
    RAM_USABLE_FRACTION,
    USEFUL_CONTEXT_TOKENS,
    PlanRequest,
    driver_warning,
    profile_description,
    start_period_s,
)
from core.engines.versions import (
    LLAMA_CPP_BUILD,
    LLAMA_CPP_CPU_IMAGE,
    LLAMA_CPP_CUDA13_IMAGE,
    LLAMA_CPP_CUDA13_IMAGE_CUDA_VERSION,
    LLAMA_CPP_CUDA_IMAGE,
    LLAMA_CPP_CUDA_IMAGE_CUDA_VERSION,
    LLAMA_CPP_CUDA_MIN_COMPUTE_CAPABILITY,
    LLAMA_CPP_OFFLINE_PROBE,
    LLAMA_CPP_ROCM_IMAGE,
    LLAMA_CPP_VULKAN_IMAGE,
)
from core.errors import EzRunnerError, InvalidOptionsError
from core.gguf import (
    GgufArraySummary,
    GgufHeader,
    GgufTensor,
    bits_per_weight,
    ggml_type,
    header_bits_per_weight,
)
from core.hardware import Target
from core.hubs.base import ModelFile, ModelInfo
from core.llamacpp_memory import (
    CACHE_TYPES,
    Backend,
    LlamaCppSettings,
    MemoryEstimate,
    max_context_that_fits,
    memory_estimate,
    server_arguments,
)
from core.planning import Device, EngineDraft, GpuBudget, Note, Options, Plan, PlanWarning
from core.runspec import ApiKey, Profile, RunSpec
from core.sizing import GIB, ModelShape, cuda_visible_bytes, gib, round_down

# Memory llama.cpp's own buffers do not include. Per GPU in use: the CUDA context, cuBLAS handles and the
# allocator's reserve, as NVML counts them for the server process. Measured on an H200 (llama-server b11312 built
# with CUDA 13.0, scripts/check-gpu-engines, tests/unit/fixtures/gpu_measurements/llamacpp-h200.json): NVML's
# peak minus the logged CUDA0 buffers was 628-739 MB for 0.5B and 8B models, F16 and Q4_K_M, while answering.
# Host: the server binary, tokenizer, HTTP threads.
CUDA_RUNTIME_BYTES = 768 << 20
HOST_RUNTIME_BYTES = 256 << 20
# llama.cpp does not preallocate past what it computes; keep a slice of each GPU for fragmentation and the
# display driver on workstation cards.
GPU_USABLE_FRACTION = 0.95
DEFAULT_GPU_SLOTS = 4  # what llama-server itself defaults to ("-np auto" = 4)
DEFAULT_CPU_SLOTS = 1  # a CPU is compute-bound: one sequence at a time decodes fastest
CONTEXT_MULTIPLE = 256  # llama.cpp pads n_ctx per slot to 256 (core.llamacpp_memory.CTX_PAD)

# What a pack can make from safetensors with llama.cpp's converter (F16, Q8_0 directly; the K-quants through
# llama-quantize), highest quality first.
CONVERSION_QUANTS = ("F16", "Q8_0", "Q6_K", "Q5_K_M", "Q4_K_M")
# The main tensor type of each conversion target (llama-quantize keeps a few tensors at higher precision;
# the nominal bits per weight of core.gguf account for that in the size).
_MAIN_TYPE = MappingProxyType({"F16": "F16", "Q8_0": "Q8_0", "Q6_K": "Q6_K", "Q5_K_M": "Q5_K", "Q4_K_M": "Q4_K"})
# transformers architectures whose conversion to a llama.cpp architecture EZ Runner sizes (a dense decoder
# with the llama tensor layout): convert_hf_to_gguf.py registers many more, but only these are planned.
CONVERTIBLE_ARCHITECTURES: Mapping[str, str] = MappingProxyType(
    {
        "LlamaForCausalLM": "llama",
        "MistralForCausalLM": "llama",
        "Qwen2ForCausalLM": "qwen2",
        "Qwen3ForCausalLM": "qwen3",
        "Phi3ForCausalLM": "phi3",
        "GraniteForCausalLM": "granite",
        "InternLM3ForCausalLM": "llama",
        "SmolLM3ForCausalLM": "smollm3",
    }
)


@dataclass(frozen=True)
class Candidate:
    """One GGUF the pack could carry: a repo's variant, or a conversion target."""

    key: str
    quant: str
    header: GgufHeader
    files: tuple[ModelFile, ...]
    model_file: str  # what -m names (the first part of a split set)
    bytes_on_disk: int
    converted: bool = False

    @property
    def bits(self) -> float:
        return bits_per_weight(self.quant) or header_bits_per_weight(self.header)


@dataclass(frozen=True)
class Fit:
    """A candidate placed on the target."""

    candidate: Candidate
    settings: LlamaCppSettings
    estimate: MemoryEstimate
    context: int  # per slot
    mode: str  # "gpu" (all layers), "partial", "cpu"
    gpus_used: int


class LlamaCppEngine:
    name = "llama.cpp"
    label = f"llama.cpp b{LLAMA_CPP_BUILD}"
    template = "llamacpp.Dockerfile.j2"
    port = 8000
    health_path = "/health"
    metrics_path = "/metrics"
    # llama-server's --api-key reads LLAMA_API_KEY (`llama-server --help` of b11312: "(env: LLAMA_API_KEY)");
    # /health stays public, /metrics needs the key like /v1/* (tools/server/server.cpp, public_endpoints)
    api_key_env = "LLAMA_API_KEY"
    formats = frozenset({"gguf", "safetensors"})

    def refusal(self, *, model: ModelInfo, target: Target, options: Options) -> str | None:
        if options.tensor_parallel_size is not None and options.tensor_parallel_size > 1:
            return (
                f"llama.cpp splits a model across GPUs by layers, not by tensor parallelism, so "
                f"tensor_parallel_size {options.tensor_parallel_size} cannot be honoured (drop it: the plan splits "
                "the layers when one GPU is too small)."
            )
        if options.dtype not in (None, "auto"):
            return (
                f"llama.cpp runs the GGUF's own quantization, so dtype {options.dtype} does not apply (choose the "
                "quantization with --quant instead)."
            )
        if options.gpu_memory_utilization is not None:
            return "gpu_memory_utilization is a vLLM setting; llama.cpp allocates only what the plan sizes."
        if model.format == "safetensors":
            arch = model.architecture or "unknown"
            if arch not in CONVERTIBLE_ARCHITECTURES:
                return (
                    "The llama.cpp engine needs GGUF weights; EZ Runner converts only "
                    f"{', '.join(sorted(CONVERTIBLE_ARCHITECTURES))} models, and {model.repo_id} is {arch} (pick a "
                    "GGUF repository of the model)."
                )
            if model.quantization:
                return (
                    f"{model.repo_id} is pre-quantized ({model.quantization.get('quant_method', 'unknown')}); "
                    "llama.cpp's converter needs the unquantized (bf16/fp16) weights (pick that variant, or a GGUF "
                    "repository of the model)."
                )
        converting = model.format == "safetensors"
        if options.quant is not None and converting and options.quant.upper() not in CONVERSION_QUANTS:
            return (
                f"A conversion at pack time can make {', '.join(CONVERSION_QUANTS)}, not {options.quant} (pick one of "
                "those, or a GGUF repository that offers it)."
            )
        if options.kv_cache_type is not None and options.kv_cache_type not in CACHE_TYPES:
            return f"llama.cpp's KV cache types are {', '.join(CACHE_TYPES)}, not {options.kv_cache_type!r}."
        cuda = [g for g in target.gpus if g.vendor == "nvidia"]
        if cuda and min(g.compute_capability for g in cuda) < LLAMA_CPP_CUDA_MIN_COMPUTE_CAPABILITY:
            need = ".".join(map(str, LLAMA_CPP_CUDA_MIN_COMPUTE_CAPABILITY))
            return f"llama.cpp's CUDA image has kernels for compute capability {need} and newer."
        return None

    def plan(self, *, request: PlanRequest) -> EngineDraft:
        return _plan(request)

    def default_base_image(self, *, plan: Plan) -> str:
        return _IMAGE_FOR_DEVICE[plan.device]

    def image_cuda_version(self, *, base_image: str) -> str | None:
        return {
            LLAMA_CPP_CUDA_IMAGE: LLAMA_CPP_CUDA_IMAGE_CUDA_VERSION,
            LLAMA_CPP_CUDA13_IMAGE: LLAMA_CPP_CUDA13_IMAGE_CUDA_VERSION,
        }.get(base_image)

    def serve_argv(self, *, plan: Plan, model_dir: str, served_model_name: str) -> list[str]:
        s = plan.settings
        settings = settings_from_plan(plan)
        argv = [
            "llama-server",
            "-m",
            f"{model_dir}/{s['model_file']}",
            "--alias",
            served_model_name,
            "--host",
            "0.0.0.0",
            *server_arguments(settings),
        ]
        if s.get("threads"):
            argv += ["--threads", str(s["threads"])]
        argv += ["--metrics", "--no-webui"]
        return argv

    def run_spec(self, *, plan: Plan, image: str, served_model_name: str, model_dir: str) -> RunSpec:
        s = plan.settings
        profile = Profile(
            name="default",
            device=plan.device,
            argv=tuple(self.serve_argv(plan=plan, model_dir=model_dir, served_model_name=served_model_name)),
            gpus_per_node=int(s.get("gpus_used", 0)),
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
            healthcheck=HEALTHCHECK,
            start_period_s=start_period_s(plan.model.total_bytes),
            profiles=(profile,),
            default_profile=profile.name,
            ipc_host=False,  # one process: nothing shared through /dev/shm
            api_key=ApiKey(env=plan.options.api_key_env, server_env=self.api_key_env)
            if plan.options.api_key_env
            else None,
        )

    def template_values(self, *, plan: Plan, served_model_name: str, model_dir: str) -> dict[str, Any]:
        return {"llama_cpp_build": LLAMA_CPP_BUILD, "llama_cpp_device": plan.device.upper()}

    def context_files(self, *, plan: Plan) -> tuple[tuple[str, bytes], ...]:
        return ()


# The image's health check without python3: the static probe of the offline image where it exists, else curl,
# which ggml-org's images ship. Both exit non-zero unless /health answers 200 (503 while the model loads).
HEALTHCHECK: tuple[str, ...] = (
    "/bin/sh",
    "-c",
    f'if [ -x {LLAMA_CPP_OFFLINE_PROBE} ]; then exec {LLAMA_CPP_OFFLINE_PROBE}; '
    'else exec curl -fsS -o /dev/null --max-time 4 "http://127.0.0.1:${PORT}/health"; fi',
)

_IMAGE_FOR_DEVICE: Mapping[Device, str] = MappingProxyType(
    {"cpu": LLAMA_CPP_CPU_IMAGE, "cuda": LLAMA_CPP_CUDA_IMAGE, "rocm": LLAMA_CPP_ROCM_IMAGE,
     "vulkan": LLAMA_CPP_VULKAN_IMAGE}
)  # fmt: skip


def settings_from_plan(plan: Plan) -> LlamaCppSettings:
    """The llama-server settings a plan fixed (from ``Plan.settings``, JSON types)."""
    s = plan.settings
    return LlamaCppSettings(
        n_ctx=int(s["n_ctx"]),
        n_parallel=int(s["n_parallel"]),
        kv_unified=bool(s.get("kv_unified", False)),
        n_batch=int(s["n_batch"]),
        n_ubatch=int(s["n_ubatch"]),
        cache_type_k=str(s["cache_type_k"]),
        cache_type_v=str(s["cache_type_v"]),
        flash_attn=bool(s["flash_attn"]),
        n_gpu_layers=int(s["n_gpu_layers"]),
        split_mode=s["split_mode"],
        tensor_split=tuple(float(x) for x in s.get("tensor_split", ())),
    )


# CANDIDATES


def device_for(target: Target) -> Device:
    """Where llama.cpp computes on this target: CUDA on NVIDIA, ROCm on AMD, Vulkan on other GPUs."""
    if target.is_cpu_only:
        return "cpu"
    if target.gpu_api is not None:  # asked for (an AMD card through Vulkan); describe_target checked the vendor
        return target.gpu_api
    vendors = {g.vendor for g in target.gpus}
    if vendors == {"nvidia"}:
        return "cuda"
    if vendors == {"amd"}:
        return "rocm"
    return "vulkan"


def candidates(model: ModelInfo) -> list[Candidate]:
    """What could be packed, highest bits per weight first."""
    if model.gguf is not None:
        repo = model.gguf
        reference = repo.header
        found = []
        extra = [f for f in model.files if not f.path.lower().endswith(".gguf")]
        for variant in repo.listing.variants:
            if not variant.complete:
                continue
            header = repo.headers.get(variant.key) or _scaled(reference, variant.total_size)
            files = tuple(sorted([*(ModelFile(path=f.path, size=f.size) for f in variant.files), *extra],
                                 key=lambda f: f.path))  # fmt: skip
            sha = {f.path: f.sha256 for f in model.files}
            files = tuple(dataclasses.replace(f, sha256=sha.get(f.path)) for f in files)
            found.append(
                Candidate(
                    key=variant.key, quant=variant.quant or variant.key, header=header, files=files,
                    model_file=variant.first_file, bytes_on_disk=variant.total_size,
                )
            )
        return sorted(found, key=lambda c: (-c.bits, c.bytes_on_disk))
    return [_conversion_candidate(model, quant) for quant in CONVERSION_QUANTS]


def _scaled(reference: GgufHeader, file_bytes: int) -> GgufHeader:
    """Another quantization of the same model, sized from its file: the reference's tensors with their bytes
    scaled to the other file's tensor data (the metadata part of the file is the same)."""
    data = max(file_bytes - reference.data_offset, 1)
    ratio = data / max(reference.tensor_bytes, 1)
    tensors = tuple(dataclasses.replace(t, nbytes=math.ceil(t.nbytes * ratio)) for t in reference.tensors)
    return dataclasses.replace(reference, tensors=tensors)


def conversion_file_name(model: ModelInfo, quant: str) -> str:
    return f"{model.name}-{quant}.gguf"


def _conversion_candidate(model: ModelInfo, quant: str) -> Candidate:
    header = synthetic_header(model=model, quant=quant)
    name = conversion_file_name(model, quant)
    size = header.data_offset + header.tensor_bytes
    extra = [f for f in model.files if f.path.split("/")[-1].startswith(("LICENSE", "README", "NOTICE", "USE_POLICY"))]
    files = tuple(sorted([ModelFile(path=name, size=size), *extra], key=lambda f: f.path))
    return Candidate(
        key=f"convert-{quant}", quant=quant, header=header, files=files, model_file=name, bytes_on_disk=size,
        converted=True,
    )  # fmt: skip


def synthetic_header(*, model: ModelInfo, quant: str) -> GgufHeader:
    """The GGUF header llama.cpp's converter would write for a dense llama-layout model (tensor names and
    shapes from the config; bytes at the quantization's nominal bits per weight; norms in F32)."""
    from core.sizing import model_shape

    shape = model_shape(config=model.config, quantization=model.quantization)
    arch = CONVERTIBLE_ARCHITECTURES.get(model.architecture or "", "llama")
    bits = bits_per_weight(quant) or 16.0
    main = ggml_type(_MAIN_TYPE.get(quant, "F16"))
    h, hd, ff = shape.hidden_size, shape.head_dim, shape.intermediate_size or 4 * shape.hidden_size
    q, kv = shape.num_attention_heads * hd, shape.num_kv_heads * hd
    tensors: list[GgufTensor] = []

    def add(name: str, dims: tuple[int, ...], kind: str | None = None) -> None:
        elements = math.prod(dims)
        nbytes = elements * 4 if kind == "F32" else math.ceil(elements * bits / 8)
        tensors.append(GgufTensor(name=name, shape=dims, ggml_type=kind or main.name, offset=0, nbytes=nbytes))

    add("token_embd.weight", (h, shape.vocab_size))
    for layer in range(shape.num_layers):
        add(f"blk.{layer}.attn_norm.weight", (h,), "F32")
        add(f"blk.{layer}.attn_q.weight", (h, q))
        add(f"blk.{layer}.attn_k.weight", (h, kv))
        add(f"blk.{layer}.attn_v.weight", (h, kv))
        add(f"blk.{layer}.attn_output.weight", (q, h))
        add(f"blk.{layer}.ffn_norm.weight", (h,), "F32")
        add(f"blk.{layer}.ffn_gate.weight", (h, ff))
        add(f"blk.{layer}.ffn_up.weight", (h, ff))
        add(f"blk.{layer}.ffn_down.weight", (ff, h))
    add("output_norm.weight", (h,), "F32")
    if not shape.tie_word_embeddings:
        add("output.weight", (h, shape.vocab_size))
    offset = 0
    placed = []
    for tensor in tensors:
        placed.append(dataclasses.replace(tensor, offset=offset))
        offset += -(-tensor.nbytes // 32) * 32
    metadata: dict[str, Any] = {
        "general.architecture": arch,
        "general.name": model.name,
        f"{arch}.block_count": shape.num_layers,
        f"{arch}.context_length": shape.context_length or model.context_length or 4096,
        f"{arch}.embedding_length": h,
        f"{arch}.feed_forward_length": ff,
        f"{arch}.attention.head_count": shape.num_attention_heads,
        f"{arch}.attention.head_count_kv": shape.num_kv_heads,
        f"{arch}.attention.key_length": hd,
        f"{arch}.attention.value_length": hd,
        "tokenizer.ggml.tokens": GgufArraySummary(element_type="string", length=shape.vocab_size),
    }
    # the tokenizer arrays make up most of a real header: about 30 bytes per token
    return GgufHeader(
        file=conversion_file_name(model, quant), version=3, metadata=MappingProxyType(metadata),
        tensors=tuple(placed), alignment=32, data_offset=shape.vocab_size * 30,
    )  # fmt: skip


# PLANNING


@dataclass(frozen=True)
class _Budget:
    gpu_free: tuple[int, ...]  # what llama.cpp's buffers may use on each GPU
    host_free: int  # what they may use in host memory
    ram_known: bool


def _budget(target: Target, device: Device) -> _Budget:
    ram = target.ram_bytes
    host = int(ram * RAM_USABLE_FRACTION) - HOST_RUNTIME_BYTES if ram else 1 << 50
    if device == "cpu":
        return _Budget(gpu_free=(), host_free=host, ram_known=bool(ram))
    free = tuple(
        max(int(cuda_visible_bytes(g.memory_bytes) * GPU_USABLE_FRACTION) - CUDA_RUNTIME_BYTES, 0)
        for g in target.gpus
    )
    return _Budget(gpu_free=free, host_free=host, ram_known=bool(ram))


def _settings(*, options: Options, n_ctx: int, slots: int, n_gpu_layers: int, split: str,
              shares: Sequence[float]) -> LlamaCppSettings:  # fmt: skip
    cache = options.kv_cache_type or "f16"
    return LlamaCppSettings(
        n_ctx=n_ctx, n_parallel=slots, kv_unified=False, cache_type_k=cache, cache_type_v=cache, flash_attn=True,
        n_gpu_layers=n_gpu_layers, split_mode=split,  # type: ignore[arg-type]
        tensor_split=tuple(round(s / max(sum(shares), 1) * 100, 1) for s in shares) if split == "layer" else (),
    )  # fmt: skip


def _fits(estimate: MemoryEstimate, budget: _Budget, gpus: int) -> bool:
    if any(g.total > free for g, free in zip(estimate.gpus, budget.gpu_free[:gpus], strict=False)):
        return False
    return estimate.host.total <= budget.host_free


def _place(*, candidate: Candidate, budget: _Budget, options: Options, want: int, slots: int,
           device: Device) -> Fit | None:  # fmt: skip
    """The longest context up to ``want`` per slot for ``candidate``, all layers on the fewest GPUs that hold it
    (or on the CPU); None when not even MIN_SERVABLE_CONTEXT tokens fit that way."""
    header = candidate.header
    n_all = (header.model.block_count or 0) + 1
    layouts: list[tuple[int, int, str]] = []  # (gpus, n_gpu_layers, split)
    if device == "cpu":
        layouts.append((0, 0, "none"))
    else:
        layouts.append((1, n_all, "none"))
        if len(budget.gpu_free) > 1:
            layouts.append((len(budget.gpu_free), n_all, "layer"))
    backend: Backend = "cpu" if device == "cpu" else "cuda"
    for gpus, ngl, split in layouts:
        shares = tuple(float(b) for b in budget.gpu_free[:gpus])
        settings = _settings(options=options, n_ctx=CONTEXT_MULTIPLE * slots, slots=slots, n_gpu_layers=ngl,
                             split=split, shares=shares)  # fmt: skip
        total = max_context_that_fits(
            header=header, settings=settings, gpu_free_bytes=budget.gpu_free[:gpus], host_free_bytes=budget.host_free,
            gpu_shares=shares or None, backend=backend, limit=want * slots,
        )  # fmt: skip
        if total is None:
            continue
        context = min(total // slots, want)
        if context < min(want, MIN_SERVABLE_CONTEXT):
            continue
        chosen = dataclasses.replace(settings, n_ctx=context * slots)
        estimate = memory_estimate(header=header, settings=chosen, gpu_shares=shares, backend=backend)
        return Fit(candidate, chosen, estimate, context, "cpu" if device == "cpu" else "gpu", gpus)
    return None


def _place_partial(*, candidate: Candidate, budget: _Budget, options: Options, want: int,
                   slots: int) -> Fit | None:  # fmt: skip
    """Some layers on the GPUs, the rest in host memory: the most layers that fit with ``want`` tokens."""
    header = candidate.header
    n_all = (header.model.block_count or 0) + 1
    gpus = len(budget.gpu_free)
    shares = tuple(float(b) for b in budget.gpu_free)
    split = "none" if gpus == 1 else "layer"
    for ngl in range(n_all - 1, -1, -1):
        settings = _settings(options=options, n_ctx=want * slots, slots=slots, n_gpu_layers=ngl, split=split,
                             shares=shares)  # fmt: skip
        estimate = memory_estimate(header=header, settings=settings, gpu_shares=shares, backend="cuda")
        if _fits(estimate, budget, gpus):
            return Fit(candidate, settings, estimate, want, "partial" if ngl else "cpu", gpus if ngl else 0)
    return None


def _plan(request: PlanRequest) -> EngineDraft:
    model, target, options = request.model, request.target, request.options
    device = device_for(target)
    budget = _budget(target, device)
    all_candidates = candidates(model)
    if options.quant is not None:
        forced = [c for c in all_candidates if c.quant.upper() == options.quant.upper()]
        if not forced:
            offered = ", ".join(c.quant for c in all_candidates)
            raise InvalidOptionsError(
                f"{model.repo_id} has no {options.quant} quantization; it offers {offered}.",
                hint="Choose one of those with --quant, or leave --quant out to let the planner pick.",
            )
        all_candidates = forced
    context = request.context
    want = min(options.max_model_len or context, context)
    useful = min(context, USEFUL_CONTEXT_TOKENS)
    slots = options.parallel or 1
    reasons: list[Note] = []
    warnings: list[PlanWarning] = []
    failures: list[str] = []

    def place(candidate: Candidate, tokens: int) -> Fit | None:
        try:
            return _place(candidate=candidate, budget=budget, options=options, want=tokens, slots=slots, device=device)
        except EzRunnerError:
            raise
        except (ValueError, ZeroDivisionError) as error:  # a header the memory model cannot size
            raise InvalidOptionsError(
                f"The GGUF {candidate.key} cannot be sized ({error}).", hint="Pick another quantization."
            ) from error

    tried = [(candidate, place(candidate, want)) for candidate in all_candidates]
    # 1. the most bits per weight that holds the wanted context entirely on the device
    fit = next((placed for _, placed in tried if placed is not None and placed.context >= want), None)
    # 2. else the most bits per weight that still holds a useful context there
    if fit is None:
        fit = next((p for _, p in tried if p is not None and p.context >= min(useful, want)), None)
    # 3. else some layers on the GPU and the rest in RAM (forced context or a useful one)
    if fit is None and device != "cpu":
        for candidate in all_candidates:
            partial = _place_partial(candidate=candidate, budget=budget, options=options, want=min(want, useful)
                                     if options.max_model_len is None else want, slots=slots)  # fmt: skip
            if partial is not None:
                fit = partial
                break
    # 4. else anything servable
    if fit is None:
        fit = next((p for _, p in tried if p is not None), None)
    if fit is None:
        return _nothing_fits(request=request, device=device, budget=budget, candidates=all_candidates,
                             want=want)  # fmt: skip
    if options.max_model_len is not None and fit.context < options.max_model_len:
        warnings.append(
            PlanWarning(
                "max_model_len_too_long",
                f"max_model_len {options.max_model_len:,} does not fit with {fit.candidate.quant}; the most that "
                f"fits is {fit.context:,} tokens.",
                {"max_model_len": options.max_model_len, "max_model_len_that_fits": fit.context},
                {"max_model_len": round_down(fit.context, CONTEXT_MULTIPLE)} if fit.context >= CONTEXT_MULTIPLE else {},
            )
        )
        failures.append("max_model_len_too_long")
    fit = _more_slots(fit=fit, budget=budget, options=options, device=device)
    reasons.extend(_notes(fit=fit, tried=tried, device=device, target=target, model=model, want=want, slots=slots))
    warnings.extend(_warnings(fit=fit, request=request, device=device, budget=budget))
    draft = _draft(fit=fit, request=request, device=device, budget=budget, reasons=reasons, warnings=warnings,
                   failures=failures)  # fmt: skip
    if draft.device == "cuda":
        _driver(draft=draft, target=target, options=options)
    return draft


def _more_slots(*, fit: Fit, budget: _Budget, options: Options, device: Device) -> Fit:
    """With room to spare on a GPU, serve several sequences at once (up to llama-server's own default of 4)."""
    if options.parallel is not None or fit.mode != "gpu":
        return fit
    best = fit
    for slots in range(2, DEFAULT_GPU_SLOTS + 1):
        settings = dataclasses.replace(fit.settings, n_parallel=slots, n_ctx=fit.context * slots)
        shares = tuple(float(b) for b in budget.gpu_free[: fit.gpus_used])
        estimate = memory_estimate(header=fit.candidate.header, settings=settings, gpu_shares=shares, backend="cuda")
        if not _fits(estimate, budget, fit.gpus_used):
            break
        best = dataclasses.replace(fit, settings=settings, estimate=estimate)
    return best


def _budgets(fit: Fit, budget: _Budget, target: Target, device: Device) -> tuple[GpuBudget, ...]:
    if device == "cpu" or fit.mode == "cpu":
        host = fit.estimate.host
        ram = target.ram_bytes or 0
        return (
            GpuBudget(
                index=None, weights_bytes=host.weights, kv_cache_bytes=host.kv_cache,
                overhead_bytes=host.compute + host.output + HOST_RUNTIME_BYTES,
                capacity_bytes=int(ram * RAM_USABLE_FRACTION), total_bytes=ram,
            ),
        )  # fmt: skip
    out = []
    for position, memory in enumerate(fit.estimate.gpus):
        gpu = target.gpus[position]
        out.append(
            GpuBudget(
                index=gpu.index if gpu.index is not None else position,
                weights_bytes=memory.weights, kv_cache_bytes=memory.kv_cache,
                overhead_bytes=memory.compute + memory.output + CUDA_RUNTIME_BYTES,
                capacity_bytes=int(cuda_visible_bytes(gpu.memory_bytes) * GPU_USABLE_FRACTION),
                total_bytes=gpu.memory_bytes,
            )
        )
    return tuple(out)


def _draft(*, fit: Fit, request: PlanRequest, device: Device, budget: _Budget, reasons: list[Note],
           warnings: list[PlanWarning], failures: list[str]) -> EngineDraft:  # fmt: skip
    settings, estimate, candidate = fit.settings, fit.estimate, fit.candidate
    target = request.target
    kv_total = sum(g.kv_cache for g in estimate.gpus) + estimate.host.kv_cache
    cells = estimate.shape.n_ctx
    per_token = kv_total // cells if cells else 0
    plan_device: Device = "cpu" if fit.mode == "cpu" else device
    threads = target.cpu_cores
    s: dict[str, Any] = {
        "quant": candidate.quant,
        "variant": candidate.key,
        "model_file": candidate.model_file,
        "n_ctx": settings.n_ctx,
        "n_parallel": settings.n_parallel,
        "kv_unified": settings.kv_unified,
        "n_batch": settings.n_batch,
        "n_ubatch": settings.n_ubatch,
        "cache_type_k": settings.cache_type_k,
        "cache_type_v": settings.cache_type_v,
        "flash_attn": settings.flash_attn,
        "n_gpu_layers": settings.n_gpu_layers if plan_device != "cpu" else 0,
        "split_mode": settings.split_mode,
        "tensor_split": list(settings.tensor_split),
        "gpus_used": fit.gpus_used if plan_device != "cpu" else 0,
        "offload": fit.mode,
        "host_bytes": estimate.host.total + HOST_RUNTIME_BYTES,
        "threads": threads,
        "gguf_bytes": candidate.bytes_on_disk,
    }
    if candidate.converted:
        s["convert"] = {
            "quant": candidate.quant,
            "output": candidate.model_file,
            "estimated_bytes": candidate.bytes_on_disk,
            "pre_tokenizer": request.options.gguf_pre_tokenizer,
            # what the pack downloads and converts (the plan's files are the GGUF it packs)
            "download": [{"path": f.path, "size": f.size, "sha256": f.sha256} for f in request.model.files],
        }
    if plan_device == "cpu":
        s["n_gpu_layers"] = 0
    return EngineDraft(
        engine="llama.cpp",
        device=plan_device,
        dtype=candidate.quant,
        weights_bytes=candidate.header.tensor_bytes,
        tensor_parallel_size=1,
        max_model_len=fit.context,
        kv_cache_bytes_per_token=per_token,
        kv_cache_tokens=cells,
        gpu_memory_utilization=None,
        budgets=_budgets(fit, budget, target, plan_device),
        valid_tps=(1,),
        reasons=reasons,
        warnings=warnings,
        hard_failures=failures,
        settings=s,
        files=candidate.files,
        max_concurrency=float(settings.n_parallel),
    )


def _notes(*, fit: Fit, tried: list[tuple[Candidate, Fit | None]], device: Device, target: Target,
           model: ModelInfo, want: int, slots: int) -> list[Note]:  # fmt: skip
    candidate, settings = fit.candidate, fit.settings
    notes: list[Note] = []
    others = "; ".join(
        f"{c.quant} ({gib(c.bytes_on_disk)} GiB): "
        + ("fits" if p is not None and p.context >= want else
           f"{p.context:,} tokens" if p is not None else "does not fit")
        for c, p in tried if c.key != candidate.key
    )  # fmt: skip
    where = "system RAM" if fit.mode == "cpu" else "GPU memory"
    if candidate.converted:
        notes.append(
            Note(
                "gguf_convert",
                f"The model is safetensors: the pack converts it to GGUF {candidate.quant} (about "
                f"{gib(candidate.bytes_on_disk)} GiB) with llama.cpp's own converter.",
                {"quant": candidate.quant, "gguf_bytes": candidate.bytes_on_disk},
            )
        )
    notes.append(
        Note(
            "gguf_quant",
            f"Quantization {candidate.quant} ({gib(candidate.bytes_on_disk)} GiB, {candidate.bits:.2f} bits per "
            f"weight): the most bits per weight whose weights, KV cache and buffers fit in {where} with "
            f"{min(want, fit.context):,} tokens of context." + (f" Others: {others}." if others else ""),
            {"quant": candidate.quant, "gguf_bytes": candidate.bytes_on_disk, "others": others},
        )
    )
    n_all = (candidate.header.model.block_count or 0) + 1
    if fit.mode == "gpu":
        split = (
            f" split by layers across {fit.gpus_used} GPUs ({', '.join(f'{x:g}' for x in settings.tensor_split)} %)"
            if fit.gpus_used > 1 else " on one GPU"
        )  # fmt: skip
        notes.append(
            Note(
                "llamacpp_full_offload",
                f"All {n_all} layers (-ngl {n_all}, the output layer included){split}; only the token embeddings "
                "stay in host memory, as llama.cpp places them.",
                {"n_gpu_layers": n_all, "gpus": fit.gpus_used},
            )
        )
    elif fit.mode == "partial":
        notes.append(
            Note(
                "llamacpp_partial_offload",
                f"The weights do not fit in GPU memory: {settings.n_gpu_layers} of {n_all} layers on the GPU "
                f"(-ngl {settings.n_gpu_layers}), the rest in system RAM on the CPU (slower than all on the GPU).",
                {"n_gpu_layers": settings.n_gpu_layers, "layers": n_all},
            )
        )
    else:
        notes.append(
            Note(
                "llamacpp_cpu",
                f"On the CPU from system RAM{f', {target.cpu_cores} threads' if target.cpu_cores else ''}.",
                {"threads": target.cpu_cores},
            )
        )
    notes.append(
        Note(
            "llamacpp_slots",
            f"{settings.n_parallel} slot(s) of {fit.context:,} tokens each (-np {settings.n_parallel}, -c "
            f"{settings.n_ctx}): up to {settings.n_parallel} requests decode at once; KV cache "
            f"{settings.cache_type_k}, flash attention on.",
            {"slots": settings.n_parallel, "context": fit.context, "cache_type": settings.cache_type_k},
        )
    )
    return notes


def _warnings(*, fit: Fit, request: PlanRequest, device: Device, budget: _Budget) -> list[PlanWarning]:
    out: list[PlanWarning] = []
    context = request.context
    if fit.context < context and request.options.max_model_len is None:
        change: dict[str, Any] = {}
        smaller = [c for c in candidates(request.model) if c.bits < fit.candidate.bits]
        if smaller:
            change = {"quant": smaller[0].quant}
        out.append(
            PlanWarning(
                "context_capped",
                f"Prompts plus answers longer than {fit.context:,} tokens will be rejected (the model supports "
                f"{context:,}). For longer contexts use a smaller quantization, a q8_0 KV cache, or a bigger "
                "machine.",
                {"max_model_len": fit.context, "context_length": context},
                change,
            )
        )
    if fit.mode == "cpu" and request.target.gpus:
        out.append(
            PlanWarning(
                "llamacpp_cpu_on_gpu_server",
                "The model does not fit the GPUs even in part, so llama.cpp runs it on the CPU (much slower).",
                {},
            )
        )
    if not budget.ram_known:
        out.append(
            PlanWarning(
                "ram_unknown",
                "The target's RAM is unknown, so the plan could not check the host memory llama.cpp needs "
                f"({gib(fit.estimate.host.total)} GiB). Describe the server's RAM to check.",
                {"host_bytes": fit.estimate.host.total},
            )
        )
    return out


def _driver(*, draft: EngineDraft, target: Target, options: Options) -> None:
    driver_warning(
        draft=draft,
        target=target,
        options=options,
        image=LLAMA_CPP_CUDA_IMAGE,
        image_cuda=LLAMA_CPP_CUDA_IMAGE_CUDA_VERSION,
        advice=(
            f" (R{CUDA_MIN_DRIVER[LLAMA_CPP_CUDA_IMAGE_CUDA_VERSION].split('.')[0]} or newer; an R525+ data-center "
            "driver may work through CUDA minor-version compatibility), or run on the CPU."
        ),
    )


def _nothing_fits(*, request: PlanRequest, device: Device, budget: _Budget, candidates: Sequence[Candidate],
                  want: int) -> EngineDraft:  # fmt: skip
    """A plan that does not fit, with the smallest candidate's shortfall as the message."""
    smallest = min(candidates, key=lambda c: c.bytes_on_disk)
    options = request.options
    settings = _settings(options=options, n_ctx=min(want, MIN_SERVABLE_CONTEXT), slots=1,
                         n_gpu_layers=0 if device == "cpu" else (smallest.header.model.block_count or 0) + 1,
                         split="none", shares=budget.gpu_free[:1])  # fmt: skip
    backend: Backend = "cpu" if device == "cpu" else "cuda"
    estimate = memory_estimate(header=smallest.header, settings=settings, gpu_shares=budget.gpu_free[:1],
                               backend=backend)  # fmt: skip
    need = estimate.host.total if device == "cpu" else estimate.gpus[0].total + estimate.host.total
    have = budget.host_free if device == "cpu" else budget.gpu_free[0] + budget.host_free
    fit = Fit(smallest, settings, estimate, settings.n_ctx, "cpu" if device == "cpu" else "gpu",
              0 if device == "cpu" else 1)  # fmt: skip
    warning = PlanWarning(
        "weights_do_not_fit",
        f"Even {smallest.quant} ({gib(smallest.bytes_on_disk)} GiB) needs {gib(need)} GiB with a "
        f"{settings.n_ctx:,}-token context, and the target has {gib(max(have, 0))} GiB usable. To run it, use a "
        "machine with more memory, or a smaller model.",
        {"needed_bytes": need, "usable_bytes": have, "quant": smallest.quant},
    )
    return _draft(fit=fit, request=request, device=device, budget=budget, reasons=[], warnings=[warning],
                  failures=["weights_do_not_fit"])  # fmt: skip


__all__ = [
    "CONVERSION_QUANTS",
    "CONVERTIBLE_ARCHITECTURES",
    "CUDA_RUNTIME_BYTES",
    "GIB",
    "HEALTHCHECK",
    "Candidate",
    "LlamaCppEngine",
    "ModelShape",
    "candidates",
    "device_for",
    "settings_from_plan",
    "synthetic_header",
]
