"""What vLLM does with GPU memory at start-up, version by version: the KV-cache pool it will have, in bytes,
blocks and tokens, and the concurrency it will report.

vLLM measures rather than estimates (``vllm/v1/worker/gpu_worker.py`` ``determine_available_memory``)::

    requested = ceil(cuda_total × gpu_memory_utilization)                   (v1/worker/utils.py request_memory)
    kv_pool   = requested − weights − profile-run peak − non-torch − CUDA graph estimate (the last since 0.21)

This module predicts each term from the model's shape, the GPU and vLLM's batch limits, with the constants
of each vLLM release in one table (``VLLM_MEMORY_TABLE``, every constant with its source), then promises
``kv_pool − safety`` so that the pool it states never exceeds the one vLLM logs ("Available KV cache
memory"). The code paths are read from vLLM v0.33.0 (the pinned release, wheel commit g4ba787ec9); the
measured constants come from public start-up logs (``tests/unit/fixtures/vllm_logs``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from core.engines.versions import VLLM_VERSION
from core.errors import PlanError
from core.hardware import Gpu, find_gpu_preset
from core.sizing import (
    GIB,
    STATE_KINDS,
    TORCH_DTYPE_BYTES,
    ModelShape,
    ceil_div,
    kv_bytes_per_token_per_layer,
    pipeline_stage_layers,
    state_bytes_per_layer,
)

MIB = 1 << 20
UsageContext = Literal["api_server", "llm_class"]

# CUDA-visible memory (torch.cuda.mem_get_info total, what vLLM multiplies by gpu_memory_utilization) of the
# cards seen in public logs. NVML reports more: the driver keeps 0.45-0.75 GiB.
CUDA_TOTAL_BYTES: dict[str, int] = {
    # scripts/check-gpu on an H100 80GB HBM3, driver 580.159.04; llm-d-planner v0.19.0 logs: total 79.19 GiB
    "NVIDIA H100 80GB HBM3": 85_017_493_504,
    # "Free memory on device (78.84/79.25 GiB)" — vLLM 0.31.0 on an A100 80GB (fixture llama-3.1-8b-a100-80gb)
    "NVIDIA A100-SXM4-80GB": int(79.25 * GIB),
    # "Free memory on device cuda:0 (… /39.49 GiB)" — ten public A100 40GB logs (e.g. vllm PR threads, CI notes)
    "NVIDIA A100-SXM4-40GB": int(39.49 * GIB),
    # "Free memory on device (139.21/139.81 GiB)" — vLLM 0.10.2 on H200 (fixture qwen3-next-80b-h200-tp2)
    "NVIDIA H200": int(139.81 * GIB),
    # "Free memory on device (22.93/23.56 GiB)" — wtdcode/vllm-backport#34, RTX 3090
    "NVIDIA GeForce RTX 3090": int(23.56 * GIB),
}
# Where vLLM picks max_num_batched_tokens and max_num_seqs when neither is set (see default_batch_limits).
BATCH_DEFAULTS_SOURCE = "vllm/engine/arg_utils.py get_batch_defaults"
# For a card not in the table: NVML total less the largest reservation seen above (A100 80GB: 768 MiB).
UNKNOWN_GPU_RESERVED_BYTES = 768 * MIB
# Memory in use when vLLM takes its start-up snapshot, outside the gpu_memory_utilization budget but checked
# against it ("Free memory on device … is less than desired GPU memory utilization"): the CUDA context
# ("worker init memory snapshot: … cuda_memory=0.51GiB" at TP 1) and, with tensor parallelism, NCCL set up
# before the snapshot (free 77.12-77.66 instead of 78.68 GiB at TP 2-4; llm-d-planner v0.19.0 H100 logs).
CUDA_CONTEXT_BYTES = int(0.51 * GIB)
TENSOR_PARALLEL_STARTUP_BYTES = int(1.56 * GIB)
# Without NVSwitch, NCCL sets up no NVLink SHARP (NVLS) buffers and takes far less before the snapshot: "Free
# memory on device (94.05/95.01 GiB) on startup" at TP 4 on RTX PRO 6000 PCIe cards (fixture
# qwen3-235b-a22b-fp8-rtx-pro-6000-tp4): 0.96 GiB in use, 0.45 GiB beyond the CUDA context. One log only, so
# the plan takes 0.75 GiB.
TENSOR_PARALLEL_STARTUP_BYTES_WITHOUT_NVSWITCH = int(0.75 * GIB)
# Cards that sit on NVSwitch and so get NVLS buffers (Hopper and newer SXM parts), by lower-case name part.
NVSWITCH_CARD_MARKERS = ("h100 80gb hbm3", "h100 sxm", "h100 80gb sxm", "h200", "h800", "gh200", "b200", "b300")
# vLLM's page size in tokens (vllm/config/cache.py DEFAULT_BLOCK_SIZE); hybrid models raise it (see below).
DEFAULT_BLOCK_SIZE = 16
# Attention block sizes of hybrid (attention + state) models are rounded up to this many tokens
# ("Setting attention block size to 544 tokens to ensure that attention page size is >= mamba page size").
HYBRID_BLOCK_ALIGNMENT = 16
# vLLM groups layers of different kinds with a group size of min(layers per kind), or max when max < 1.5·min
# (v1/core/kv_cache_planning.py _get_kv_cache_groups_uniform_page_size).
GROUP_SIZE_MAX_RATIO = 1.5


@dataclass(frozen=True)
class Constant:
    """One measured or read number of the memory model, with where it comes from."""

    name: str
    value: float
    unit: str
    source: str


@dataclass(frozen=True)
class VllmConstants:
    """The memory behaviour of a range of vLLM releases (first and last inclusive, by (major, minor))."""

    label: str
    first: tuple[int, int]
    last: tuple[int, int]
    default_gpu_memory_utilization: Constant
    sampler_bytes_per_logit: Constant
    hidden_bytes_per_element: Constant
    moe_workspaces: Constant
    encoder_profile_bytes: Constant
    non_torch_single_gpu_bytes: Constant
    non_torch_tensor_parallel_bytes: Constant
    cudagraph_single_gpu_bytes: Constant
    cudagraph_tensor_parallel_bytes: Constant
    cudagraph_bytes_per_graph: Constant
    cudagraph_bytes_per_graph_tensor_parallel: Constant
    safety_bytes: Constant
    cudagraph_subtracted: bool  # VLLM_MEMORY_PROFILER_ESTIMATE_CUDAGRAPHS defaults to 1
    tokens_from_concurrency: bool  # "GPU KV cache size" = int(max_concurrency × max_model_len)
    in_flight_batches: int  # batches a sliding-window layer must keep (2 with async scheduling)
    state_blocks_per_request: int  # Mamba/linear state blocks a request holds (2 in "align" cache mode)
    # first release in the row where GPUs with >= 160 GiB get 16384 batched tokens in the API server too
    large_gpu_batch_tier_from: tuple[int, int] | None
    # first release in the row that keeps DGX Spark (GB10) on the small-GPU batch limits
    gb10_small_batch_tier_from: tuple[int, int] | None

    def constants(self) -> tuple[Constant, ...]:
        return (
            self.default_gpu_memory_utilization,
            self.sampler_bytes_per_logit,
            self.hidden_bytes_per_element,
            self.moe_workspaces,
            self.encoder_profile_bytes,
            self.non_torch_single_gpu_bytes,
            self.non_torch_tensor_parallel_bytes,
            self.cudagraph_single_gpu_bytes,
            self.cudagraph_tensor_parallel_bytes,
            self.cudagraph_bytes_per_graph,
            self.cudagraph_bytes_per_graph_tensor_parallel,
            self.safety_bytes,
        )


_LLMD_0_19 = (
    "llm-d-planner accuracy/results/v0.19.0/logs (commit d3121e0), DEBUG 'Memory profiling takes' lines of "
    "22 H100 runs"
)
_HIDDEN = Constant(
    "hidden_bytes_per_element",
    2.3,
    "B per batched token × hidden (16-bit)",
    "the hidden states alive while the sampler runs; fitted across vocabularies in " + _LLMD_0_19 + ": Gemma-2 "
    "2B/9B/27B (same vocabulary) peak 3.62/3.65/3.66 GiB for hidden 2304/3584/4608",
)
_MOE = Constant(
    "moe_workspaces",
    2.0,
    "× batched tokens × top-k × max(2·expert intermediate/tp, hidden) × dtype",
    "fused-MoE intermediate caches kept by the workspace manager; " + _LLMD_0_19 + ": Qwen3-30B-A3B +0.49 GiB, "
    "Qwen1.5-MoE +0.30 GiB, DeepSeek-V2-Lite +0.46 GiB over the dense peak",
)
_ENCODER = Constant(
    "encoder_profile_bytes",
    0.25 * GIB,
    "B",
    "vision encoder profiled with the largest image batch before the text forward; " + _LLMD_0_19 + ": Gemma-3 "
    "4B/12B/27B +0.18/+0.20/+0.23 GiB, Mistral-Small-3.1 +0.11 GiB over the text-only peak",
)
_SAFETY = Constant(
    "safety_bytes",
    0.5 * GIB,
    "B",
    "absolute margin under vLLM's pool, because the errors are of fixed size (a 2 GiB pool and a 60 GiB pool "
    "miss by the same few hundred MiB): before the margin, the pool of the 27 fixture logs is at most 0.10 GiB "
    "above vLLM's (Qwen3-8B, A100 40GB, 0.19.1) and 0.01 GiB is print rounding; the rest covers what no log of "
    "0.33 can show yet (a CUDA-graph estimate above the modelled one, as the 2.35 GiB A100 40GB outlier)",
)

VLLM_MEMORY_TABLE: tuple[VllmConstants, ...] = (
    VllmConstants(
        label="0.10-0.16",
        first=(0, 10),
        last=(0, 16),
        default_gpu_memory_utilization=Constant(
            "default_gpu_memory_utilization", 0.9, "", "vllm/config/cache.py Field(default=0.9) (read in 0.19.0)"
        ),
        sampler_bytes_per_logit=Constant(
            "sampler_bytes_per_logit",
            39.0,
            "B per max_num_seqs × vocab",
            "llm-d-planner config_explorer/empirical-vllm-memory-results.md (vLLM 0.11.0, H100, 1024 seqs): "
            "activation Llama-3.1-8B 4.76, Qwen3 5.56-5.64, gpt-oss 7.38 GiB; 0.10.2 Qwen3-Next on H200 5.58 GiB",
        ),
        hidden_bytes_per_element=_HIDDEN,
        moe_workspaces=_MOE,
        encoder_profile_bytes=_ENCODER,
        non_torch_single_gpu_bytes=Constant(
            "non_torch_single_gpu_bytes", 0.15 * GIB, "B", "vLLM 0.11.0 H100 runs: 0.13-0.14 GiB (llm-d-planner)"
        ),
        non_torch_tensor_parallel_bytes=Constant(
            "non_torch_tensor_parallel_bytes",
            1.4 * GIB,
            "B",
            "vLLM 0.10.2 Qwen3-Next TP 2 on H200: 1.38 GiB (fixture qwen3-next-80b-h200-tp2); 0.11.0 TP 2: 0.55",
        ),
        cudagraph_single_gpu_bytes=Constant("cudagraph_single_gpu_bytes", 0, "B", "not subtracted before 0.21"),
        cudagraph_tensor_parallel_bytes=Constant(
            "cudagraph_tensor_parallel_bytes", 0, "B", "not subtracted before 0.21"
        ),
        cudagraph_bytes_per_graph=Constant("cudagraph_bytes_per_graph", 0, "B", "not subtracted before 0.21"),
        cudagraph_bytes_per_graph_tensor_parallel=Constant(
            "cudagraph_bytes_per_graph_tensor_parallel", 0, "B", "not subtracted before 0.21"
        ),
        safety_bytes=_SAFETY,
        cudagraph_subtracted=False,
        tokens_from_concurrency=False,
        in_flight_batches=1,
        state_blocks_per_request=1,
        large_gpu_batch_tier_from=None,
        gb10_small_batch_tier_from=None,
    ),
    VllmConstants(
        label="0.17-0.20",
        first=(0, 17),
        last=(0, 20),
        default_gpu_memory_utilization=Constant(
            "default_gpu_memory_utilization", 0.9, "", "vllm/config/cache.py Field(default=0.9), v0.19.0"
        ),
        sampler_bytes_per_logit=Constant(
            "sampler_bytes_per_logit",
            14.66,
            "B per max_num_seqs × vocab (16-bit logits; +2 B with 32-bit logits)",
            _LLMD_0_19 + ": torch peak 1.89 GiB (Llama, vocab 128,256), 2.21 (Qwen, 151,936-152,064), 3.62-3.66 "
            "(Gemma-2, 256,000) at 1024 seqs; the 0.17 sampler rewrite cut it ~60 % (llm-d-planner report)",
        ),
        hidden_bytes_per_element=_HIDDEN,
        moe_workspaces=_MOE,
        encoder_profile_bytes=_ENCODER,
        non_torch_single_gpu_bytes=Constant(
            "non_torch_single_gpu_bytes", 0.27 * GIB, "B", _LLMD_0_19 + ": 0.24-0.27 GiB at TP 1 and PP"
        ),
        non_torch_tensor_parallel_bytes=Constant(
            "non_torch_tensor_parallel_bytes",
            2.25 * GIB,
            "B",
            _LLMD_0_19 + ": 2.06-2.11 GiB at TP 2, 2.13-2.21 GiB at TP 4 (NCCL and custom all-reduce buffers)",
        ),
        cudagraph_single_gpu_bytes=Constant(
            "cudagraph_single_gpu_bytes", 0, "B", "estimated but not subtracted (env default 0 in 0.19.0)"
        ),
        cudagraph_tensor_parallel_bytes=Constant(
            "cudagraph_tensor_parallel_bytes", 0, "B", "estimated but not subtracted (env default 0 in 0.19.0)"
        ),
        cudagraph_bytes_per_graph=Constant(
            "cudagraph_bytes_per_graph", 0, "B", "estimated but not subtracted (env default 0 in 0.19.0)"
        ),
        cudagraph_bytes_per_graph_tensor_parallel=Constant(
            "cudagraph_bytes_per_graph_tensor_parallel", 0, "B", "estimated but not subtracted (env default 0)"
        ),
        safety_bytes=_SAFETY,
        cudagraph_subtracted=False,
        tokens_from_concurrency=False,
        in_flight_batches=1,
        state_blocks_per_request=1,
        large_gpu_batch_tier_from=None,
        gb10_small_batch_tier_from=None,
    ),
    VllmConstants(
        label="0.21-0.33",
        first=(0, 21),
        last=(0, 33),
        default_gpu_memory_utilization=Constant(
            "default_gpu_memory_utilization",
            0.92,
            "",
            "vllm/config/cache.py Field(default=0.92) in 0.21.0, 0.31.0 and 0.33.0",
        ),
        sampler_bytes_per_logit=Constant(
            "sampler_bytes_per_logit",
            14.66,
            "B per max_num_seqs × vocab (16-bit logits; +2 B with 32-bit logits)",
            "as 0.19 (the 0.33.0 dummy sampler runs the same fp32 logits → top-k/top-p → softmax → exponential "
            "path, twice in sequence); vLLM 0.31.0 A100 log consistent (fixture llama-3.1-8b-a100-80gb)",
        ),
        hidden_bytes_per_element=_HIDDEN,
        moe_workspaces=_MOE,
        encoder_profile_bytes=_ENCODER,
        non_torch_single_gpu_bytes=Constant(
            "non_torch_single_gpu_bytes",
            0.27 * GIB,
            "B",
            "vLLM 0.31.0 A100: 15.26 GiB consumed − 15.0 weights = 0.26 GiB (fixture llama-3.1-8b-a100-80gb)",
        ),
        non_torch_tensor_parallel_bytes=Constant(
            "non_torch_tensor_parallel_bytes",
            2.25 * GIB,
            "B",
            "as 0.19 (no public TP log of 0.21-0.33 with the breakdown); 0.33.0 still creates NCCL before the "
            "init snapshot but its lazily allocated buffers are counted in total_consumed",
        ),
        cudagraph_single_gpu_bytes=Constant(
            "cudagraph_single_gpu_bytes",
            0.25 * GIB,
            "B first capture + cudagraph_bytes_per_graph per captured graph",
            "'Estimated PIECEWISE/FULL CUDA graph memory: 96-262 MiB first-capture + (51-1) × 4-26 MiB per-graph' ("
            + _LLMD_0_19
            + "); totals at TP 1: 0.5-1.4 GiB on H100 (102 graphs), 0.52 GiB RTX A5000 (LMCache#3430, 0.21.0), "
            "~0.97 GiB A100 (0.31.0); one 2.35 GiB outlier (A100 40GB, 0.19.1) is left to the safety margin",
        ),
        cudagraph_tensor_parallel_bytes=Constant(
            "cudagraph_tensor_parallel_bytes",
            0.5 * GIB,
            "B first capture + cudagraph_bytes_per_graph_tensor_parallel per captured graph",
            "'Estimated CUDA graph memory' at TP >= 2: 0.57-1.92 GiB with 102 graphs (" + _LLMD_0_19 + "); "
            "1.58-1.97 GiB in 0.2x TP 2 logs",
        ),
        cudagraph_bytes_per_graph=Constant(
            "cudagraph_bytes_per_graph",
            12 * MIB,
            "B per graph at TP 1",
            "upper end of the per-graph estimates at TP 1 (4-8 MiB FULL, 8-12 MiB PIECEWISE, " + _LLMD_0_19 + ")",
        ),
        cudagraph_bytes_per_graph_tensor_parallel=Constant(
            "cudagraph_bytes_per_graph_tensor_parallel",
            14 * MIB,
            "B per graph at TP >= 2",
            "Llama-3.1-8B TP 2: 96 MiB + 50 × 26 MiB PIECEWISE, 132 MiB + 50 × 6 MiB FULL (" + _LLMD_0_19 + ")",
        ),
        safety_bytes=_SAFETY,
        cudagraph_subtracted=True,
        tokens_from_concurrency=True,
        in_flight_batches=2,
        state_blocks_per_request=2,
        large_gpu_batch_tier_from=(0, 31),  # absent from 0.21.0's arg_utils.py, present in 0.31.0's
        gb10_small_batch_tier_from=(0, 33),  # absent from 0.31.0, present in 0.33.0
    ),
)


@dataclass(frozen=True)
class KvCacheGroup:
    """One of vLLM's KV cache groups: layers of one kind sharing a block table."""

    kind: str
    layers: int  # layers per group (padded groups count their padding)
    groups: int  # how many groups of this kind
    page_bytes: int  # one layer's block
    block_tokens: int  # tokens per block (state groups: one sequence per block)
    blocks_per_request: int  # blocks one max_model_len request holds in each group of this kind


@dataclass(frozen=True)
class VllmMemoryProfile:
    """The memory of one vLLM GPU at start-up (the tightest GPU decides the pool for all), in bytes."""

    version: str
    constants_label: str
    gpu_total_bytes: int  # CUDA-visible memory of the tightest GPU
    gpu_memory_utilization: float
    requested_bytes: int
    weights_bytes: int
    activation_peak_bytes: int
    non_torch_bytes: int
    cudagraph_bytes: int
    startup_free_bytes: int  # free memory vLLM's start-up check will see (total − CUDA context − NCCL)
    expected_kv_pool_bytes: int  # what vLLM will report as "Available KV cache memory"
    safety_bytes: int
    kv_pool_bytes: int  # what EZ Runner promises: expected − safety (never above vLLM's)
    block_size: int
    num_blocks: int
    pool_tokens: int  # "GPU KV cache size: N tokens" for the promised pool
    max_model_len: int
    max_concurrency: float  # "Maximum concurrency for max_model_len tokens per request"
    max_num_seqs: int
    max_num_batched_tokens: int
    defaults_assumed: tuple[str, ...]  # batch limits taken from vLLM's defaults, as sentences
    kv_groups: tuple[KvCacheGroup, ...]
    constants_used: tuple[Constant, ...] = field(default=())

    @property
    def starts(self) -> bool:
        """False when the start-up check refuses gpu_memory_utilization (free memory below requested)."""
        return self.startup_free_bytes >= self.requested_bytes

    def as_vllm_prints(self) -> tuple[str, str]:
        """The promised pool in vLLM 0.33's own words (gpu_worker.py and kv_cache_utils.py log lines)."""
        return (
            f"Available KV cache memory: {self.kv_pool_bytes / GIB:.2f} GiB",
            f"GPU KV cache size: {self.pool_tokens:,} tokens, Maximum concurrency for {self.max_model_len:,} "
            f"tokens per request: {self.max_concurrency:.2f}x",
        )

    @property
    def fits_one_request(self) -> bool:
        """vLLM refuses to start unless one max_model_len request fits the pool."""
        return self.max_concurrency >= 1.0

    @property
    def highest_starting_utilization(self) -> float:
        """The largest gpu_memory_utilization (two decimals) that passes the start-up check on this GPU."""
        if self.gpu_total_bytes <= 0:
            return 0.0
        util = math.floor(self.startup_free_bytes / self.gpu_total_bytes * 100) / 100
        while util > 0 and math.ceil(self.gpu_total_bytes * util) > self.startup_free_bytes:
            util = round(util - 0.01, 2)
        return max(0.0, util)

    @property
    def block_bytes(self) -> int:
        """One block of the pool: a page in every layer of a group (all groups share the page size)."""
        return max((g.layers * g.page_bytes for g in self.kv_groups), default=0)

    @property
    def blocks_per_request(self) -> int:
        """Blocks one max_model_len request holds, summed over the groups."""
        return sum(g.groups * g.blocks_per_request for g in self.kv_groups)

    @property
    def request_kv_bytes(self) -> int:
        """Bytes of the pool one max_model_len request holds (its blocks in every group)."""
        return self.blocks_per_request * self.block_bytes

    def max_concurrency_at(self, tokens: int) -> float:
        """How many requests of ``tokens`` tokens the promised pool holds at once."""
        need = sum(g.groups * _blocks_for(g, tokens) for g in self.kv_groups)
        return self.num_blocks / need if need else math.inf


def _blocks_for(group: KvCacheGroup, tokens: int) -> int:
    if group.kind in STATE_KINDS:
        return group.blocks_per_request
    if tokens <= 0:
        return 0
    return min(group.blocks_per_request, ceil_div(tokens, group.block_tokens))


def parse_version(version: str) -> tuple[int, int]:
    """``"0.33.0"`` → (0, 33); pre-release suffixes are ignored."""
    parts = version.strip().lstrip("v").split(".")
    try:
        return int(parts[0]), int("".join(ch for ch in parts[1] if ch.isdigit()) or 0)
    except (IndexError, ValueError) as error:
        raise PlanError(
            f"vLLM version {version!r} is not of the form MAJOR.MINOR.PATCH.", hint="Pass a release like 0.33.0."
        ) from error


def constants_for(version: str = VLLM_VERSION) -> VllmConstants:
    """The table row of ``version``; PlanError outside the range the table covers."""
    wanted = parse_version(version)
    for row in VLLM_MEMORY_TABLE:
        if row.first <= wanted <= row.last:
            return row
    first, last = VLLM_MEMORY_TABLE[0].first, VLLM_MEMORY_TABLE[-1].last
    raise PlanError(
        f"vLLM {version} is outside the releases whose memory behaviour EZ Runner knows "
        f"({first[0]}.{first[1]} to {last[0]}.{last[1]}).",
        hint=f"Use the pinned vLLM {VLLM_VERSION}, or add a row for {version} to VLLM_MEMORY_TABLE.",
    )


def cuda_total_bytes(gpu: Gpu) -> int:
    """What CUDA lets vLLM see of ``gpu``: the measured figure for known cards, else NVML less 768 MiB.

    A described preset ("NVIDIA H100 80GB SXM", its display name) is looked up by its NVML name, as long as
    its memory is the preset's (a preset given another memory size is a different card)."""
    known = CUDA_TOTAL_BYTES.get(gpu.name)
    if known is None:
        preset = find_gpu_preset(name=gpu.name)
        if preset is not None and preset.memory_bytes == gpu.memory_bytes:
            known = CUDA_TOTAL_BYTES.get(preset.nvml_name)
    return known if known is not None else max(0, gpu.memory_bytes - UNKNOWN_GPU_RESERVED_BYTES)


def tensor_parallel_startup_bytes(*, gpu_name: str) -> int:
    """What NCCL holds on each GPU before vLLM's start-up snapshot when several GPUs serve one model."""
    name = gpu_name.lower()
    if any(marker in name for marker in NVSWITCH_CARD_MARKERS):
        return TENSOR_PARALLEL_STARTUP_BYTES
    return TENSOR_PARALLEL_STARTUP_BYTES_WITHOUT_NVSWITCH


def default_batch_limits(
    *,
    version: str = VLLM_VERSION,
    gpu_name: str,
    gpu_total_bytes: int,
    usage_context: UsageContext = "api_server",
) -> tuple[int, int]:
    """(max_num_batched_tokens, max_num_seqs) vLLM picks when neither is set (engine/arg_utils.py
    get_batch_defaults, read in 0.19.0, 0.31.0 and 0.33.0): H100-class cards (>= 70 GiB, not an A100) get
    8192 tokens / 1024 sequences in the API server, all others 2048 / 256; since 0.31 cards with >= 160 GiB get
    16384 / 1024; 0.33 keeps DGX Spark (GB10) on the small tier."""
    constants, release = constants_for(version), parse_version(version)
    api = usage_context == "api_server"
    name = gpu_name.lower()
    large_from, gb10_from = constants.large_gpu_batch_tier_from, constants.gb10_small_batch_tier_from
    if large_from is not None and release >= large_from and gpu_total_bytes >= 160 * GIB:
        return 16384, 1024
    small_gb10 = gb10_from is not None and release >= gb10_from and "gb10" in name
    if gpu_total_bytes >= 70 * GIB and "a100" not in name and not small_gb10:
        return (8192 if api else 16384), 1024
    return (2048 if api else 8192), 256


def cudagraph_capture_counts(*, max_num_seqs: int, max_num_batched_tokens: int) -> tuple[int, int]:
    """(PIECEWISE, FULL) graphs vLLM captures by default (config/vllm.py _set_cudagraph_sizes, v0.33.0): sizes
    1, 2, 4, multiples of 8 below 256, multiples of 16 up to min(2 × max_num_seqs, 512); FULL decode graphs
    only up to max_num_seqs. 1024 sequences: 51 + 51 graphs; 256: 51 + 35."""

    def count(limit: int) -> int:
        sizes = [n for n in (1, 2, 4) if n <= limit]
        sizes += list(range(8, min(limit + 1, 256), 8)) + list(range(256, limit + 1, 16))
        return len(sizes)

    largest = min(2 * max_num_seqs, 512, max_num_batched_tokens)
    return count(largest), count(min(max_num_seqs, largest))


def kv_dtype_bytes(*, kv_cache_dtype: str, model_dtype: str) -> int:
    """Bytes of one cached element: "auto" follows the model dtype, fp8 variants take one byte."""
    name = kv_cache_dtype.lower()
    if name in ("auto", ""):
        return TORCH_DTYPE_BYTES[model_dtype]
    if name.startswith("fp8"):
        return 1
    if name in TORCH_DTYPE_BYTES:
        return TORCH_DTYPE_BYTES[name]
    raise PlanError(
        f"kv_cache_dtype {kv_cache_dtype!r} is not one vLLM accepts.",
        hint="Use auto, fp8, fp8_e4m3, fp8_e5m2, bfloat16 or float16.",
    )


def activation_peak_bytes(
    *,
    shape: ModelShape,
    constants: VllmConstants,
    max_num_batched_tokens: int,
    max_num_seqs: int,
    dtype_bytes: int,
    tensor_parallel_size: int,
) -> int:
    """The profile run's transient peak (v1/worker/gpu_model_runner.py profile_run): a forward pass of
    ``max_num_batched_tokens`` tokens, then the dummy sampler on ``min(max_num_seqs, tokens)`` rows of logits
    over the full vocabulary while the hidden states stay alive. MoE workspaces and the vision encoder's
    profiling batch come on top."""
    tokens = max_num_batched_tokens
    rows = min(max_num_seqs, tokens)
    tp = max(1, tensor_parallel_size)
    per_logit = constants.sampler_bytes_per_logit.value + (dtype_bytes - 2)
    sampler = per_logit * rows * shape.vocab_size
    hidden = constants.hidden_bytes_per_element.value * tokens * shape.hidden_size * dtype_bytes / 2
    intermediate = shape.intermediate_size or 4 * shape.hidden_size
    dense = tokens * (3 * intermediate // tp + 4 * shape.hidden_size) * dtype_bytes
    peak = max(float(dense), sampler + hidden)
    if shape.is_moe:
        expert = (shape.moe_intermediate_size or intermediate) // tp
        width = max(2 * expert, shape.hidden_size)
        top_k = shape.num_experts_per_token or 2
        peak += constants.moe_workspaces.value * tokens * top_k * width * dtype_bytes
    if shape.vision is not None:
        peak += constants.encoder_profile_bytes.value
    return int(peak)


def kv_cache_groups(
    *,
    shape: ModelShape,
    constants: VllmConstants,
    tensor_parallel_size: int,
    kv_element_bytes: int,
    state_dtype_bytes: int,
    max_model_len: int,
    max_num_batched_tokens: int,
    layers: int | None = None,
    block_size: int | None = None,
) -> tuple[int, tuple[KvCacheGroup, ...]]:
    """(block size, groups) as v1/core/kv_cache_planning.py builds them: one bucket per layer kind, split into
    groups of equal size with one page size for all; state layers force a larger attention block so that an
    attention page is at least one sequence's state."""
    kinds = list(shape.kinds)
    if layers is not None and layers < len(kinds):
        kinds = kinds[:layers]  # the deciding pipeline stage's share (its layer kinds follow the same pattern)
    per_token = kv_bytes_per_token_per_layer(
        shape=shape, kv_dtype_bytes=kv_element_bytes, tensor_parallel_size=tensor_parallel_size
    )
    state_page = max(
        (
            state_bytes_per_layer(
                shape=shape, kind=k, tensor_parallel_size=tensor_parallel_size, dtype_bytes=state_dtype_bytes
            )
            for k in set(kinds) & STATE_KINDS
        ),
        default=0,
    )
    size = block_size or DEFAULT_BLOCK_SIZE
    if state_page and per_token:
        size = max(size, ceil_div(ceil_div(state_page, per_token), HYBRID_BLOCK_ALIGNMENT) * HYBRID_BLOCK_ALIGNMENT)
    page = max(size * per_token, state_page)
    buckets = {k: kinds.count(k) for k in ("full", "sliding", "chunked", "linear", "mamba") if k in kinds}
    if not buckets:
        return size, ()
    smallest, largest = min(buckets.values()), max(buckets.values())
    group_size = largest if largest < smallest * GROUP_SIZE_MAX_RATIO else smallest
    in_flight = constants.in_flight_batches * max_num_batched_tokens
    groups = []
    for kind, count in buckets.items():
        if kind == "sliding":
            window = shape.sliding_window or max_model_len
            blocks = ceil_div(min(window - 1 + in_flight, max_model_len), size) + 1
        elif kind == "chunked":
            chunk = shape.attention_chunk_size or max_model_len
            blocks = ceil_div(min(chunk + in_flight, max_model_len), size)
        elif kind in STATE_KINDS:
            blocks = constants.state_blocks_per_request
        else:
            blocks = ceil_div(max_model_len, size)
        groups.append(KvCacheGroup(kind, group_size, ceil_div(count, group_size), page, size, blocks))
    return size, tuple(groups)


@dataclass(frozen=True)
class KvPoolCapacity:
    """A pool of bytes said as vLLM says it (v1/core/kv_cache_utils.py): blocks, tokens, concurrency."""

    block_size: int
    num_blocks: int
    pool_tokens: int  # "GPU KV cache size: N tokens"
    max_concurrency: float  # "Maximum concurrency for max_model_len tokens per request: X"
    groups: tuple[KvCacheGroup, ...]


def kv_pool_capacity(
    *,
    shape: ModelShape,
    pool_bytes: int,
    constants: VllmConstants,
    tensor_parallel_size: int = 1,
    pipeline_parallel_size: int = 1,
    kv_cache_dtype: str = "auto",
    model_dtype: str = "bfloat16",
    max_model_len: int,
    max_num_batched_tokens: int,
    block_size: int | None = None,
) -> KvPoolCapacity:
    """Blocks = pool // (layers per group × page); a max_model_len request takes blocks from every group; the
    token figure is blocks ÷ groups × block size before 0.21 and int(concurrency × max_model_len) since."""
    pp = max(1, pipeline_parallel_size)
    stage_layers = max(pipeline_stage_layers(num_layers=shape.num_layers, pipeline_parallel_size=pp))
    size, groups = kv_cache_groups(
        shape=shape,
        constants=constants,
        tensor_parallel_size=tensor_parallel_size,
        kv_element_bytes=kv_dtype_bytes(kv_cache_dtype=kv_cache_dtype, model_dtype=model_dtype),
        state_dtype_bytes=TORCH_DTYPE_BYTES[model_dtype],
        max_model_len=max_model_len,
        max_num_batched_tokens=max_num_batched_tokens,
        layers=stage_layers if pp > 1 else None,
        block_size=block_size,
    )
    bytes_per_block = max((g.layers * g.page_bytes for g in groups), default=0)
    blocks = max(0, pool_bytes) // bytes_per_block if bytes_per_block else 0
    per_request = sum(g.groups * g.blocks_per_request for g in groups)
    concurrency = blocks / per_request if per_request else math.inf
    n_groups = sum(g.groups for g in groups)
    if constants.tokens_from_concurrency:
        tokens = int(concurrency * max_model_len) if per_request else 0
    else:
        tokens = blocks // n_groups * size if n_groups else 0
    return KvPoolCapacity(size, blocks, tokens, concurrency, groups)


def vllm_memory_profile(
    *,
    shape: ModelShape,
    weights_per_gpu_bytes: int,
    gpus: Sequence[Gpu],
    tensor_parallel_size: int = 1,
    pipeline_parallel_size: int = 1,
    gpu_memory_utilization: float | None = None,
    max_model_len: int,
    max_num_seqs: int | None = None,
    max_num_batched_tokens: int | None = None,
    kv_cache_dtype: str = "auto",
    model_dtype: str = "bfloat16",
    usage_context: UsageContext = "api_server",
    enforce_eager: bool = False,
    block_size: int | None = None,
    gpu_total_bytes: Sequence[int] | None = None,
    version: str = VLLM_VERSION,
) -> VllmMemoryProfile:
    """Predict vLLM's start-up memory on ``gpus`` (the tensor × pipeline parallel ranks, in order).

    ``weights_per_gpu_bytes`` is the largest per-GPU weight share (``core.sizing.weights_per_gpu_bytes``).
    ``gpu_total_bytes`` overrides the CUDA-visible totals (a measured value per GPU); otherwise they come from
    ``cuda_total_bytes``. The pool is the tightest GPU's, as vLLM takes the minimum over workers."""
    if not gpus and not gpu_total_bytes:
        raise PlanError("vLLM needs at least one GPU to size its memory.", hint="Describe the target's GPUs.")
    if max_model_len <= 0:
        raise PlanError(f"max_model_len {max_model_len} is not positive.", hint="Pass the planned context length.")
    if gpu_memory_utilization is not None and not 0 < gpu_memory_utilization <= 1:
        raise PlanError(
            f"gpu_memory_utilization {gpu_memory_utilization} is outside (0, 1].",
            hint="vLLM takes a fraction of each GPU's memory, such as 0.9.",
        )
    constants = constants_for(version)
    totals = list(gpu_total_bytes) if gpu_total_bytes else [cuda_total_bytes(g) for g in gpus]
    total = min(totals)
    name = gpus[0].name if gpus else ""
    util = gpu_memory_utilization or constants.default_gpu_memory_utilization.value
    requested = math.ceil(total * util)

    default_tokens, default_seqs = default_batch_limits(
        version=version, gpu_name=name, gpu_total_bytes=total, usage_context=usage_context
    )
    assumed = []
    seqs = max_num_seqs
    source = f"vLLM {constants.label} default for this GPU, {BATCH_DEFAULTS_SOURCE}"
    if seqs is None:
        seqs = default_seqs
        assumed.append(f"max_num_seqs {seqs} ({source})")
    tokens = max_num_batched_tokens
    if tokens is None:
        # chunked prefill is always on in the V1 engine, so the default is not raised to max_model_len
        tokens = min(default_tokens, seqs * max_model_len)
        assumed.append(f"max_num_batched_tokens {tokens} ({source})")

    dtype_bytes = TORCH_DTYPE_BYTES[model_dtype]
    tp = max(1, tensor_parallel_size)
    activation = activation_peak_bytes(
        shape=shape,
        constants=constants,
        max_num_batched_tokens=tokens,
        max_num_seqs=seqs,
        dtype_bytes=dtype_bytes,
        tensor_parallel_size=tp,
    )
    multi = tp > 1
    nccl = tp * max(1, pipeline_parallel_size) > 1  # pipeline stages talk through NCCL too
    non_torch = int(
        (constants.non_torch_tensor_parallel_bytes if multi else constants.non_torch_single_gpu_bytes).value
    )
    cudagraph = 0
    if constants.cudagraph_subtracted and not enforce_eager:
        graphs = sum(cudagraph_capture_counts(max_num_seqs=seqs, max_num_batched_tokens=tokens))
        if multi:
            first, each = constants.cudagraph_tensor_parallel_bytes, constants.cudagraph_bytes_per_graph_tensor_parallel
        else:
            first, each = constants.cudagraph_single_gpu_bytes, constants.cudagraph_bytes_per_graph
        cudagraph = int(first.value + graphs * each.value)
    expected = requested - weights_per_gpu_bytes - activation - non_torch - cudagraph
    safety = int(constants.safety_bytes.value)
    promised = max(0, expected - safety)

    capacity = kv_pool_capacity(
        shape=shape,
        pool_bytes=promised,
        constants=constants,
        tensor_parallel_size=tp,
        pipeline_parallel_size=pipeline_parallel_size,
        kv_cache_dtype=kv_cache_dtype,
        model_dtype=model_dtype,
        max_model_len=max_model_len,
        max_num_batched_tokens=tokens,
        block_size=block_size,
    )

    return VllmMemoryProfile(
        version=version,
        constants_label=constants.label,
        gpu_total_bytes=total,
        gpu_memory_utilization=util,
        requested_bytes=requested,
        startup_free_bytes=total - CUDA_CONTEXT_BYTES - (tensor_parallel_startup_bytes(gpu_name=name) if nccl else 0),
        weights_bytes=weights_per_gpu_bytes,
        activation_peak_bytes=activation,
        non_torch_bytes=non_torch,
        cudagraph_bytes=cudagraph,
        expected_kv_pool_bytes=expected,
        safety_bytes=safety,
        kv_pool_bytes=promised,
        block_size=capacity.block_size,
        num_blocks=capacity.num_blocks,
        pool_tokens=capacity.pool_tokens,
        max_model_len=max_model_len,
        max_concurrency=capacity.max_concurrency,
        max_num_seqs=seqs,
        max_num_batched_tokens=tokens,
        defaults_assumed=tuple(assumed),
        kv_groups=capacity.groups,
        constants_used=constants.constants(),
    )

