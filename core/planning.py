"""The plan's value types, shared by the planner (``core/plan.py``) and every engine (``core/engines/``).

A leaf module: it imports only the error, hardware and model value types, so engines can build plans
without importing the planner that chooses among them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from core.hardware import Target
from core.hubs.base import ModelFile, ModelInfo

# Where the server computes: an NVIDIA GPU (CUDA), an AMD GPU (ROCm), any GPU through Vulkan, or the CPU.
Device = Literal["cuda", "rocm", "vulkan", "cpu"]
GPU_DEVICES: tuple[Device, ...] = ("cuda", "rocm", "vulkan")


@dataclass(frozen=True)
class Options:
    """What the user may force; None means "let the planner decide"."""

    engine: str = "auto"  # "auto" or an engine name from core.engines.ENGINES
    tensor_parallel_size: int | None = None
    # Replicas of the model on one node, each on its own tensor-parallel group of GPUs (vLLM's
    # --data-parallel-size); None: as many as the node's GPUs hold.
    data_parallel_size: int | None = None
    # Identical servers (each with the target's GPUs) the model may span, pipeline parallel across them.
    nodes: int = 1
    max_model_len: int | None = None
    gpu_memory_utilization: float | None = None  # None: the engine's default
    dtype: str | None = None  # "auto", "bfloat16", "float16", "float32"
    port: int = 8000
    base_image: str | None = None  # overrides the engine's pinned base image
    quant: str | None = None  # GGUF quantization to pack ("Q4_K_M"); for safetensors: convert to it
    kv_cache_type: str | None = None  # llama.cpp KV cache type ("f16", "q8_0", "q4_0")
    parallel: int | None = None  # llama.cpp slots (concurrent sequences)
    # A safetensors model converted to GGUF at pack time: the pre-tokenizer llama.cpp's converter cannot
    # recognise by itself ("llama-bpe", "qwen2", "gpt-2", ...)
    gguf_pre_tokenizer: str | None = None
    # The environment variable the packed server reads its API key from when the container starts
    # (``--api-key-env NAME``); None: the server answers without a key. Only the name: never the key.
    api_key_env: str | None = None


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
    kv_cache_bytes: int  # what the planned max_model_len needs (all slots, for llama.cpp)
    overhead_bytes: int  # CUDA context, activations / compute buffers, non-torch allocations
    capacity_bytes: int  # usable: total × gpu_memory_utilization (or the engine's usable share)
    total_bytes: int  # physical

    @property
    def used_bytes(self) -> int:
        return self.weights_bytes + self.kv_cache_bytes + self.overhead_bytes


@dataclass(frozen=True)
class Alternative:
    """Another engine the planner weighed for this model and target, in one line."""

    engine: str
    fits: bool
    max_model_len: int
    summary: str  # "vLLM: fits, 32,768 tokens, 14 sequences at once"


@dataclass(frozen=True)
class Plan:
    model: ModelInfo  # ``files`` are exactly what will be packed (one GGUF quantization, for instance)
    target: Target
    options: Options
    engine: str
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
    device: Device = "cuda"
    context_length: int = 0  # the model's own context
    # Tokens of KV cache the tightest device holds after the safety margin: max_model_len ≤ this when fits.
    kv_cache_tokens: int = 0
    valid_tensor_parallel_sizes: tuple[int, ...] = ()
    # Engine-specific values the engine's run spec reads (JSON types only), e.g. llama.cpp's GPU layers.
    settings: Mapping[str, Any] = field(default_factory=dict)
    alternatives: tuple[Alternative, ...] = ()
    # How many sequences of max_model_len tokens the KV cache holds at once (vLLM's "Maximum concurrency for
    # N tokens per request"; llama.cpp's slots). None where the engine preallocates no pool.
    max_concurrency: float | None = None
    # Pipeline stages, one per node (vLLM over Ray); 1 for every one-node plan.
    pipeline_parallel_size: int = 1
    # Replicas of the model on the node, each on tensor_parallel_size GPUs; every GPU used when it divides them.
    data_parallel_size: int = 1
    # Plans of the same model, engine and image for nearby targets (fewer / more GPUs, smaller cards): each
    # becomes a profile the image can start with (core.profiles.with_neighbours fills them at pack time).
    neighbours: tuple[Plan, ...] = ()

    @property
    def nodes(self) -> int:
        """Servers the plan runs on: one per pipeline stage."""
        return self.pipeline_parallel_size

    @property
    def gpus_per_node(self) -> int:
        """GPUs one node (one container, one Kubernetes pod) uses: those with a budget (0 on the CPU)."""
        return sum(1 for budget in self.per_gpu if budget.index is not None)

    @property
    def idle_gpu_indices(self) -> tuple[int, ...]:
        """GPUs of the target the plan leaves unused (a TP size that does not divide them, a CPU plan)."""
        used = {budget.index for budget in self.per_gpu}
        indices = (g.index if g.index is not None else i for i, g in enumerate(self.target.gpus))
        return tuple(index for index in indices if index not in used)


@dataclass
class EngineDraft:
    """What an engine's ``plan()`` returns to the planner before the planner adds its own notes."""

    engine: str
    device: Device
    dtype: str
    weights_bytes: int
    tensor_parallel_size: int
    max_model_len: int
    kv_cache_bytes_per_token: int
    kv_cache_tokens: int
    gpu_memory_utilization: float | None
    budgets: tuple[GpuBudget, ...] = ()
    valid_tps: tuple[int, ...] = ()
    reasons: list[Note] = field(default_factory=list)
    warnings: list[PlanWarning] = field(default_factory=list)
    hard_failures: list[str] = field(default_factory=list)  # codes of warnings that make fits False
    settings: dict[str, Any] = field(default_factory=dict)
    files: tuple[ModelFile, ...] | None = None  # narrows ModelInfo.files (the chosen GGUF variant)
    max_concurrency: float | None = None
    pipeline_parallel_size: int = 1
    data_parallel_size: int = 1

    @property
    def fits(self) -> bool:
        return not self.hard_failures
