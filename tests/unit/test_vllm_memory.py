"""vLLM's start-up memory against public start-up logs (tests/unit/fixtures/vllm_logs, one JSON per log with
the verbatim lines and their source), and the version table the prediction is built from."""

from __future__ import annotations

import itertools
import json
import re
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from core.engines.versions import VLLM_VERSION
from core.engines.vllm_memory import (
    CUDA_TOTAL_BYTES,
    TENSOR_PARALLEL_STARTUP_BYTES,
    UNKNOWN_GPU_RESERVED_BYTES,
    VLLM_MEMORY_TABLE,
    VllmMemoryProfile,
    constants_for,
    cuda_total_bytes,
    cudagraph_capture_counts,
    default_batch_limits,
    kv_dtype_bytes,
    kv_pool_capacity,
    tensor_parallel_startup_bytes,
    vllm_memory_profile,
)
from core.errors import PlanError
from core.hardware import Gpu
from core.hubs.base import WeightStats
from core.sizing import (
    GIB,
    SAFETENSORS_DTYPE_BYTES,
    ModelShape,
    kv_bytes_per_token_per_layer,
    model_shape,
    pipeline_stage_layers,
    weights_per_gpu_bytes,
)

LOGS = Path(__file__).parent / "fixtures" / "vllm_logs"
CONFIGS = Path(__file__).parent / "configs"
# "Available KV cache memory: 58.11 GiB" is rounded to two decimals
PRINT_ROUNDING = 0.005 * GIB
# Thresholds of the sizing issue: weights within 2 %, KV pool median within 5 % and never above vLLM's
WEIGHTS_TOLERANCE = 0.02
POOL_MEDIAN_TOLERANCE = 0.05


@dataclass(frozen=True)
class LoggedRun:
    fixture: dict[str, Any]
    shape: ModelShape
    weights: WeightStats

    @property
    def id(self) -> str:
        return str(self.fixture["id"])

    @property
    def logged(self) -> dict[str, Any]:
        return dict(self.fixture["logged"])

    @property
    def gpu_total(self) -> int:
        return int(self.fixture["gpu"]["cuda_total_gib"] * GIB)

    @property
    def pool_from_tokens(self) -> int:
        """The pool the logged token count implies for full-attention models (the minimum over workers,
        which is what decides; the "Available" line is the first worker's)."""
        return int(self.logged["gpu_kv_cache_tokens"]) * self.kv_bytes_per_token

    @property
    def kv_bytes_per_token(self) -> int:
        f = self.fixture
        layers = max(
            pipeline_stage_layers(num_layers=self.shape.num_layers, pipeline_parallel_size=f["pipeline_parallel_size"])
        )
        per_layer = kv_bytes_per_token_per_layer(
            shape=self.shape,
            kv_dtype_bytes=kv_dtype_bytes(kv_cache_dtype=f["kv_cache_dtype"], model_dtype=f["dtype"]),
            tensor_parallel_size=f["tensor_parallel_size"],
        )
        return layers * per_layer

    def weights_per_gpu(self) -> int:
        f = self.fixture
        return weights_per_gpu_bytes(
            weights=self.weights,
            shape=self.shape,
            dtype=f["dtype"],
            tensor_parallel_size=f["tensor_parallel_size"],
            pipeline_parallel_size=f["pipeline_parallel_size"],
        )

    def profile(self) -> VllmMemoryProfile:
        f = self.fixture
        count = f["gpu"]["count"]
        return vllm_memory_profile(
            shape=self.shape,
            weights_per_gpu_bytes=self.weights_per_gpu(),
            gpus=[Gpu(f["gpu"]["name"], 0, (9, 0))] * count,
            tensor_parallel_size=f["tensor_parallel_size"],
            pipeline_parallel_size=f["pipeline_parallel_size"],
            gpu_memory_utilization=f["gpu_memory_utilization"],
            max_model_len=f["max_model_len"],
            max_num_seqs=f["max_num_seqs"],
            max_num_batched_tokens=f["max_num_batched_tokens"],
            kv_cache_dtype=f["kv_cache_dtype"],
            model_dtype=f["dtype"],
            usage_context=f["usage_context"],
            enforce_eager=f["enforce_eager"],
            gpu_total_bytes=[self.gpu_total] * count,
            version=f["vllm_version"],
        )


def load_run(path: Path) -> LoggedRun:
    fixture = json.loads(path.read_text())
    config = json.loads((CONFIGS / f"{fixture['config_fixture']}.json").read_text())
    params = fixture["weights"]["parameters_by_dtype"]
    weights = WeightStats(
        parameters_by_dtype=params,
        bytes_by_dtype={k: v * SAFETENSORS_DTYPE_BYTES[k] for k, v in params.items()},
        tensor_count=1,
        lm_head_bytes=fixture["weights"].get("lm_head_bytes", 0),
    )
    return LoggedRun(fixture=fixture, shape=model_shape(config=config), weights=weights)


RUNS = [load_run(p) for p in sorted(LOGS.glob("*.json"))]


def pool_error(run: LoggedRun) -> float:
    """Signed relative error of the promised pool against vLLM's logged one (negative: we promise less)."""
    logged = run.logged["available_kv_cache_gib"] * GIB
    if run.fixture["pipeline_parallel_size"] > 1:
        logged = run.pool_from_tokens
    return (run.profile().kv_pool_bytes - logged) / logged


# THE FIXTURES THEMSELVES


def test_at_least_fifteen_logs_mostly_of_the_v1_engine() -> None:
    assert len(RUNS) >= 15
    versions = {r.fixture["vllm_version"] for r in RUNS}
    assert all(tuple(int(x) for x in v.split(".")[:2]) >= (0, 10) for v in versions)
    assert len(versions) >= 4


@pytest.mark.parametrize("run", RUNS, ids=lambda r: r.id)
def test_fixture_quotes_its_lines_and_names_its_source(run: LoggedRun) -> None:
    lines = "\n".join(run.fixture["lines"])
    logged = run.logged
    assert f"Model loading took {logged['model_loading_took_gib']:g}" in lines
    assert f"Available KV cache memory: {logged['available_kv_cache_gib']:g}" in lines
    assert f"GPU KV cache size: {logged['gpu_kv_cache_tokens']:,} tokens" in lines
    source = run.fixture["source"]
    assert source["where"]
    assert source["url"] or source["index_file_ids"]


# THE LOG-BASED THRESHOLDS


@pytest.mark.parametrize("run", RUNS, ids=lambda r: r.id)
def test_weights_per_gpu_within_two_percent_of_model_loading_took(run: LoggedRun) -> None:
    logged = run.logged["model_loading_took_gib"] * GIB
    assert abs(run.weights_per_gpu() - logged) / logged <= WEIGHTS_TOLERANCE


@pytest.mark.parametrize("run", RUNS, ids=lambda r: r.id)
def test_promised_pool_never_exceeds_the_logged_pool(run: LoggedRun) -> None:
    profile = run.profile()
    logged_bytes = run.logged["available_kv_cache_gib"] * GIB
    if run.fixture["pipeline_parallel_size"] > 1:
        logged_bytes = run.pool_from_tokens  # the tightest stage decides, not the first worker's line
    assert profile.kv_pool_bytes <= logged_bytes + PRINT_ROUNDING
    assert profile.pool_tokens <= run.logged["gpu_kv_cache_tokens"]
    assert profile.max_concurrency <= run.logged["max_concurrency"] + 0.005


def test_kv_pool_median_error_within_five_percent() -> None:
    errors = sorted(abs(pool_error(r)) for r in RUNS)
    median = statistics.median(errors)
    weights = [abs(r.weights_per_gpu() / (r.logged["model_loading_took_gib"] * GIB) - 1) for r in RUNS]
    print(
        f"\n{len(RUNS)} logs: KV pool error median {median:.2%}, max {errors[-1]:.2%}; "
        f"weights error median {statistics.median(weights):.2%}, max {max(weights):.2%}"
    )
    assert median <= POOL_MEDIAN_TOLERANCE


# With pipeline parallelism the "Available" line is the first stage's and the token count the tightest stage's.
SINGLE_STAGE_RUNS = [r for r in RUNS if r.fixture["pipeline_parallel_size"] == 1]


@pytest.mark.parametrize("run", SINGLE_STAGE_RUNS, ids=lambda r: r.id)
def test_logged_pool_said_as_vllm_says_it(run: LoggedRun) -> None:
    """The logged "Available KV cache memory", turned into blocks, gives the logged "GPU KV cache size" and
    "Maximum concurrency" (within the two-decimal rounding of the GiB figure)."""
    f = run.fixture
    constants = constants_for(f["vllm_version"])
    profile = run.profile()

    def capacity(delta: float) -> tuple[int, float]:
        cap = kv_pool_capacity(
            shape=run.shape,
            pool_bytes=int(run.logged["available_kv_cache_gib"] * GIB + delta),
            constants=constants,
            tensor_parallel_size=f["tensor_parallel_size"],
            kv_cache_dtype=f["kv_cache_dtype"],
            model_dtype=f["dtype"],
            max_model_len=f["max_model_len"],
            max_num_batched_tokens=profile.max_num_batched_tokens,
        )
        return cap.pool_tokens, cap.max_concurrency

    low_tokens, low_concurrency = capacity(-PRINT_ROUNDING)
    high_tokens, high_concurrency = capacity(PRINT_ROUNDING)
    assert low_tokens <= run.logged["gpu_kv_cache_tokens"] <= high_tokens
    assert low_concurrency - 0.005 <= run.logged["max_concurrency"] <= high_concurrency + 0.005


STARTUP_FREE = re.compile(r"Free memory on device \(([\d.]+)/([\d.]+) GiB\) on startup")
STARTUP_RUNS = [r for r in RUNS if any(STARTUP_FREE.search(line) for line in r.fixture["lines"])]


@pytest.mark.parametrize("run", STARTUP_RUNS, ids=lambda r: r.id)
def test_start_up_free_memory_is_never_overestimated(run: LoggedRun) -> None:
    """vLLM refuses to start when the free memory it sees is below what it requests: the profile's estimate of
    that free memory must stay at or under the logged one (NVSwitch H100s at TP 2-4, PCIe cards, PP 2)."""
    free_gib = float(next(m for line in run.fixture["lines"] if (m := STARTUP_FREE.search(line))).group(1))
    assert run.profile().startup_free_bytes <= free_gib * GIB + PRINT_ROUNDING


def test_nccl_takes_less_before_the_snapshot_without_nvswitch() -> None:
    assert tensor_parallel_startup_bytes(gpu_name="NVIDIA H100 80GB HBM3") == TENSOR_PARALLEL_STARTUP_BYTES
    assert tensor_parallel_startup_bytes(gpu_name="NVIDIA H200") == TENSOR_PARALLEL_STARTUP_BYTES
    assert tensor_parallel_startup_bytes(gpu_name="NVIDIA L4") < TENSOR_PARALLEL_STARTUP_BYTES
    assert tensor_parallel_startup_bytes(gpu_name="NVIDIA H100 PCIe") < TENSOR_PARALLEL_STARTUP_BYTES


def test_described_presets_get_the_measured_cuda_total() -> None:
    described = Gpu("NVIDIA H100 80GB SXM", 81_559 * 2**20, (9, 0))  # a preset's display name
    assert cuda_total_bytes(described) == CUDA_TOTAL_BYTES["NVIDIA H100 80GB HBM3"]
    other_size = Gpu("NVIDIA H100 80GB SXM", 64 * GIB, (9, 0))  # the preset with another memory size
    assert cuda_total_bytes(other_size) == 64 * GIB - UNKNOWN_GPU_RESERVED_BYTES


def test_pipeline_parallel_pool_is_the_tightest_stage() -> None:
    run = next(r for r in RUNS if r.fixture["pipeline_parallel_size"] > 1)
    first_stage = run.logged["available_kv_cache_gib"] * GIB
    assert run.pool_from_tokens < first_stage  # the last stage (output head and sampler) has less room
    assert run.profile().kv_pool_bytes <= run.pool_from_tokens


# THE VERSION TABLE


def test_pinned_version_is_in_the_table_and_every_constant_has_a_source() -> None:
    row = constants_for(VLLM_VERSION)
    assert row.first <= (0, 33) <= row.last
    assert row.cudagraph_subtracted and row.tokens_from_concurrency
    for table_row in VLLM_MEMORY_TABLE:
        for constant in table_row.constants():
            assert constant.source and constant.name
    ranges = [(r.first, r.last) for r in VLLM_MEMORY_TABLE]
    assert ranges == sorted(ranges)
    assert all(a[1] < b[0] for a, b in itertools.pairwise(ranges))  # no overlap


@pytest.mark.parametrize(
    ("version", "label"),
    [
        ("0.10.2", "0.10-0.16"),
        ("0.15.1", "0.10-0.16"),
        ("0.19.0", "0.17-0.20"),
        ("0.31.0", "0.21-0.33"),
        ("v0.33.0", "0.21-0.33"),
    ],
)
def test_versions_pick_their_row(version: str, label: str) -> None:
    assert constants_for(version).label == label


@pytest.mark.parametrize("version", ["0.9.2", "0.34.0", "1.0.0"])
def test_versions_outside_the_table_are_refused_with_the_way_out(version: str) -> None:
    with pytest.raises(PlanError, match=f"vLLM {version} is outside") as error:
        constants_for(version)
    assert "VLLM_MEMORY_TABLE" in str(error.value)


def test_malformed_version_is_a_plan_error() -> None:
    with pytest.raises(PlanError, match=r"MAJOR\.MINOR\.PATCH"):
        constants_for("latest")


def test_default_utilization_changed_with_0_21() -> None:
    assert constants_for("0.19.0").default_gpu_memory_utilization.value == 0.9
    assert constants_for("0.33.0").default_gpu_memory_utilization.value == 0.92


# BATCH LIMITS AND GPUS


@pytest.mark.parametrize(
    ("version", "name", "total_gib", "context", "expected"),
    [
        ("0.33.0", "NVIDIA H100 80GB HBM3", 79.19, "api_server", (8192, 1024)),
        ("0.33.0", "NVIDIA H100 80GB HBM3", 79.19, "llm_class", (16384, 1024)),
        ("0.33.0", "NVIDIA A100-SXM4-80GB", 79.25, "api_server", (2048, 256)),  # A100s stay on the small tier
        ("0.33.0", "NVIDIA GeForce RTX 4090", 23.53, "api_server", (2048, 256)),
        ("0.33.0", "NVIDIA B200", 178.35, "api_server", (16384, 1024)),  # >= 160 GiB tier since 0.31
        ("0.19.0", "NVIDIA B200", 178.35, "api_server", (8192, 1024)),
        ("0.33.0", "NVIDIA GB10", 121.69, "api_server", (2048, 256)),  # DGX Spark kept small in 0.33
        ("0.31.0", "NVIDIA GB10", 121.69, "api_server", (8192, 1024)),
    ],
)
def test_default_batch_limits_follow_arg_utils(
    version: str, name: str, total_gib: float, context: str, expected: tuple[int, int]
) -> None:
    limits = default_batch_limits(
        version=version,
        gpu_name=name,
        gpu_total_bytes=int(total_gib * GIB),
        usage_context="api_server" if context == "api_server" else "llm_class",
    )
    assert limits == expected


def test_cuda_totals_measured_or_nvml_less_the_largest_reservation() -> None:
    h100 = Gpu("NVIDIA H100 80GB HBM3", 81_559 * 2**20, (9, 0))
    assert cuda_total_bytes(h100) == CUDA_TOTAL_BYTES["NVIDIA H100 80GB HBM3"]
    assert abs(cuda_total_bytes(h100) / GIB - 79.19) < 0.02
    unknown = Gpu("NVIDIA L40S", 46_068 * 2**20, (8, 9))
    assert cuda_total_bytes(unknown) == 46_068 * 2**20 - UNKNOWN_GPU_RESERVED_BYTES


def test_kv_cache_dtype_bytes() -> None:
    assert kv_dtype_bytes(kv_cache_dtype="auto", model_dtype="bfloat16") == 2
    assert kv_dtype_bytes(kv_cache_dtype="fp8_e4m3", model_dtype="bfloat16") == 1
    assert kv_dtype_bytes(kv_cache_dtype="auto", model_dtype="float32") == 4
    with pytest.raises(PlanError, match="kv_cache_dtype 'int3'"):
        kv_dtype_bytes(kv_cache_dtype="int3", model_dtype="bfloat16")


# THE PROFILE ITSELF


def _profile(name: str, **overrides: Any) -> VllmMemoryProfile:
    run = next(r for r in RUNS if r.id == name)
    f = run.fixture
    arguments: dict[str, Any] = {
        "shape": run.shape,
        "weights_per_gpu_bytes": run.weights_per_gpu(),
        "gpus": [Gpu(f["gpu"]["name"], 0, (9, 0))] * f["gpu"]["count"],
        "tensor_parallel_size": f["tensor_parallel_size"],
        "max_model_len": f["max_model_len"],
        "gpu_total_bytes": [run.gpu_total] * f["gpu"]["count"],
    }
    arguments.update(overrides)
    return vllm_memory_profile(**arguments)


def test_pool_is_requested_minus_every_term_minus_the_safety() -> None:
    p = _profile("llama-3.1-8b-h100-tp1")  # pinned version, default utilization
    assert p.gpu_memory_utilization == 0.92
    terms = p.weights_bytes + p.activation_peak_bytes + p.non_torch_bytes + p.cudagraph_bytes
    assert p.expected_kv_pool_bytes == p.requested_bytes - terms
    assert p.kv_pool_bytes == p.expected_kv_pool_bytes - p.safety_bytes
    assert p.safety_bytes == int(0.5 * GIB)
    # subtracted since 0.21: first capture + one estimate per graph (51 PIECEWISE + 51 FULL at 1024 seqs)
    assert p.cudagraph_bytes == int(0.25 * GIB + 102 * 12 * 2**20)
    assert p.max_num_batched_tokens == 8192 and p.max_num_seqs == 1024
    assert len(p.defaults_assumed) == 2 and "default" in p.defaults_assumed[0]
    names = {c.name for c in p.constants_used}
    assert {"sampler_bytes_per_logit", "safety_bytes", "cudagraph_single_gpu_bytes"} <= names


def test_cuda_graphs_are_not_subtracted_before_0_21_or_when_eager() -> None:
    assert _profile("llama-3.1-8b-h100-tp1", version="0.19.0").cudagraph_bytes == 0
    assert _profile("llama-3.1-8b-h100-tp1", enforce_eager=True).cudagraph_bytes == 0
    tp2 = _profile("llama-3.1-8b-h100-tp2", tensor_parallel_size=2)
    assert tp2.cudagraph_bytes == int(0.5 * GIB + 102 * 14 * 2**20)
    few = _profile("llama-3.1-8b-h100-tp1", max_num_seqs=32)  # sizes up to 64 PIECEWISE, 32 FULL
    assert few.cudagraph_bytes == int(0.25 * GIB + (11 + 7) * 12 * 2**20)


@pytest.mark.parametrize(("seqs", "counts"), [(1024, (51, 51)), (256, (51, 35)), (32, (11, 7)), (1, (2, 1))])
def test_cudagraph_capture_sizes_follow_max_num_seqs(seqs: int, counts: tuple[int, int]) -> None:
    assert cudagraph_capture_counts(max_num_seqs=seqs, max_num_batched_tokens=8192) == counts


def test_start_up_check_refuses_a_utilization_above_the_free_memory() -> None:
    assert _profile("llama-3.1-8b-h100-tp1", gpu_memory_utilization=0.98).starts  # 77.6 of 78.68 GiB free
    tp2 = _profile("llama-3.1-8b-h100-tp2", tensor_parallel_size=2, gpu_memory_utilization=0.98)
    assert not tp2.starts  # NCCL took ~1.5 GiB before the snapshot: vLLM would refuse to start


def test_profile_says_its_pool_as_vllm_prints_it() -> None:
    p = _profile("llama-3.1-8b-a100-80gb", max_model_len=131072)
    available, size = p.as_vllm_prints()
    assert available == f"Available KV cache memory: {p.kv_pool_bytes / GIB:.2f} GiB"
    assert size.startswith(f"GPU KV cache size: {p.pool_tokens:,} tokens, Maximum concurrency for 131,072 tokens")
    assert size.endswith(f"{p.max_concurrency:.2f}x")


def test_activation_follows_batch_limits_and_vocabulary_not_model_size() -> None:
    """On an H100 (1024 sequences) the sampler's logits dominate whatever the model's size; on a small card
    (256 sequences) the same model peaks four times lower."""
    llama_8b = _profile("llama-3.1-8b-h100-tp1", version="0.19.0").activation_peak_bytes
    llama_70b = _profile("llama-3.3-70b-fp8-h100-tp2", version="0.19.0").activation_peak_bytes
    assert abs(llama_70b - llama_8b) < 0.15 * GIB
    rtx_4090 = Gpu("NVIDIA GeForce RTX 4090", 24_564 * 2**20, (8, 9))
    small = _profile("llama-3.1-8b-h100-tp1", version="0.19.0", gpus=[rtx_4090], gpu_total_bytes=None)
    assert small.max_num_seqs == 256 and small.max_num_batched_tokens == 2048
    assert small.activation_peak_bytes < llama_8b / 3
    user = _profile("llama-3.1-8b-h100-tp1", version="0.19.0", max_num_seqs=64, max_num_batched_tokens=4096)
    assert user.defaults_assumed == ()
    assert user.activation_peak_bytes < small.activation_peak_bytes * 1.5


def test_max_concurrency_at_a_shorter_length() -> None:
    p = _profile("llama-3.1-8b-h100-tp1", max_model_len=131072)
    # full attention only: concurrency scales inversely with the blocks a request takes
    assert p.max_concurrency_at(131072) == pytest.approx(p.max_concurrency)
    assert p.max_concurrency_at(8192) == pytest.approx(p.max_concurrency * 16)
    assert p.pool_tokens == int(p.max_concurrency * 131072)
    assert p.fits_one_request


def test_one_request_that_does_not_fit_is_reported() -> None:
    p = _profile("qwen2.5-72b-h100-tp2", tensor_parallel_size=2, max_model_len=32768)
    assert p.max_concurrency < 1 and not p.fits_one_request


def test_tightest_gpu_decides() -> None:
    run = next(r for r in RUNS if r.id == "llama-3.1-8b-h100-tp2")
    even = _profile("llama-3.1-8b-h100-tp2", tensor_parallel_size=2)
    uneven = _profile(
        "llama-3.1-8b-h100-tp2", tensor_parallel_size=2, gpu_total_bytes=[run.gpu_total, run.gpu_total - 4 * GIB]
    )
    assert even.kv_pool_bytes - uneven.kv_pool_bytes == pytest.approx(4 * GIB * 0.92, abs=2)


def test_the_issue_example_qwen3_32b_on_one_h100_is_not_over_promised() -> None:
    """Sizing issue: the old planner promised 28,000 tokens where vLLM's pool was 18,176 (4.45 GiB). That run
    is vLLM 0.11.0 with --block-size 128 at utilization 0.9; it started at max-model-len 16000 and failed at
    32000 (llm-d-planner config_explorer/empirical-vllm-memory-results.md, commit 87ab01b)."""
    config = json.loads((CONFIGS / "Qwen3-32B.json").read_text())
    shape = model_shape(config=config)
    params = {"BF16": 32_762_123_264}  # per-tensor shapes of the config (64 layers of 487.6 M + embeddings)
    weights = WeightStats(parameters_by_dtype=params, bytes_by_dtype={"BF16": params["BF16"] * 2})
    per_gpu = weights_per_gpu_bytes(weights=weights, shape=shape, dtype="bfloat16")
    assert per_gpu / GIB == pytest.approx(61.03, abs=0.02)  # "Model loading took 61.03 GiB"

    def plan(max_model_len: int) -> VllmMemoryProfile:
        return vllm_memory_profile(
            shape=shape,
            weights_per_gpu_bytes=per_gpu,
            gpus=[Gpu("NVIDIA H100 80GB HBM3", 81_559 * 2**20, (9, 0))],
            gpu_memory_utilization=0.9,
            max_model_len=max_model_len,
            block_size=128,
            version="0.11.0",
        )

    assert plan(16000).expected_kv_pool_bytes / GIB == pytest.approx(4.45, abs=0.15)
    # the promise stays under vLLM's 18,176 tokens by the safety margin (0.5 GiB = 2,048 tokens here)
    assert 0.8 * 18_176 <= plan(16000).pool_tokens < 18_176
    assert not plan(32000).fits_one_request  # as vLLM refused: lower max_model_len or add a GPU


@pytest.mark.parametrize("utilization", [0.0, 1.2])
def test_utilization_outside_the_unit_interval_is_refused(utilization: float) -> None:
    with pytest.raises(PlanError, match="outside"):
        _profile("llama-3.1-8b-h100-tp1", gpu_memory_utilization=utilization)
