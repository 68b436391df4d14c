"""The planner: engine, tensor parallelism, max_model_len and dtype, each with its reason or warning."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from core.engines import engine_for
from core.engines.shared import PlanRequest
from core.engines.versions import (
    TRANSFORMERS_CPU_BASE_IMAGE,
    TRANSFORMERS_GPU_BASE_IMAGE,
    VLLM_IMAGE,
    VLLM_IMAGE_CUDA_12,
    VLLM_VERSION,
)
from core.engines.vllm import plan_vllm
from core.engines.vllm_memory import activation_peak_bytes, constants_for, cuda_total_bytes
from core.errors import InvalidOptionsError, ModelConfigError
from core.hardware import Gpu, Target
from core.hubs.base import ModelInfo, WeightStats
from core.plan import (
    DEFAULT_GPU_MEMORY_UTILIZATION,
    MAX_MODEL_LEN_MULTIPLE,
    Options,
    Plan,
    PlanWarning,
    plan,
    plan_to_dict,
    tensor_parallel_problem,
    valid_tensor_parallel_sizes,
)
from core.sizing import (
    GIB,
    MXFP4_LOADED_EXPANSION,
    checkpoint_weights_bytes,
    model_shape,
    mtp_weights_bytes,
    round_down,
    weights_per_gpu_bytes,
)
from tests.unit.test_sizing import (
    A100_80,
    H100,
    H200,
    L4,
    RTX_4090,
    T4,
    V100,
    load_config,
    model_info,
    shape_of,
)

FIXTURES = Path(__file__).parent / "fixtures"


def gpus(gpu: Gpu, count: int, *, cuda: str | None = "13.0", driver: str | None = "580.82.07") -> Target:
    indexed = tuple(replace(gpu, index=i) for i in range(count))
    return Target(gpus=indexed, cuda_version=cuda, driver_version=driver, ram_bytes=256 * GIB)


def codes(p: Plan) -> set[str]:
    return {w.code for w in p.warnings}


def reason(p: Plan, code: str) -> str:
    return next(n.text for n in p.reasons if n.code == code)


def warning(p: Plan, code: str) -> PlanWarning:
    return next(w for w in p.warnings if w.code == code)


def pool_params(p: Plan) -> dict[str, Any]:
    """The figures of the plan's KV pool note (vLLM's start-up memory, per GPU)."""
    return dict(next(n.params for n in p.reasons if n.code == "kv_pool"))


def assert_budgets_hold(p: Plan) -> None:
    """A fitting plan never promises more than each device's usable memory."""
    assert p.per_gpu
    for budget in p.per_gpu:
        assert budget.used_bytes <= budget.capacity_bytes <= budget.total_bytes


# TENSOR PARALLELISM


@pytest.mark.parametrize(
    ("name", "gpu_count", "valid"),
    [
        ("Qwen3-14B", 8, [1, 2, 4, 8]),  # 40 heads allow 5, but 151936 % 5 != 0
        ("Llama-3.1-70B", 8, [1, 2, 4, 8]),
        (
            "Qwen2.5-7B-Instruct",
            8,
            [1, 2, 4],
        ),  # 28 heads: 7 divides them but not 152064... nor the 4 KV heads
        ("Qwen2.5-0.5B", 8, [1, 2]),  # 14 heads
        ("DeepSeek-V3", 8, [1, 2, 4, 8]),  # MLA: KV heads do not constrain TP
        ("Llama-3.1-8B-Instruct", 3, [1, 2]),
    ],
)
def test_valid_tensor_parallel_sizes(name: str, gpu_count: int, valid: list[int]) -> None:
    assert valid_tensor_parallel_sizes(shape=shape_of(name), gpu_count=gpu_count) == valid


def test_tensor_parallel_problem_names_the_rule() -> None:
    qwen3 = shape_of("Qwen3-14B")
    assert "151936" in (tensor_parallel_problem(shape=qwen3, size=5) or "")
    assert "attention heads" in (tensor_parallel_problem(shape=qwen3, size=3) or "")
    assert tensor_parallel_problem(shape=qwen3, size=8) is None
    kv = model_shape(
        config=load_config("Llama-3.1-8B-Instruct") | {"num_key_value_heads": 8, "vocab_size": 128_256}
    )
    assert tensor_parallel_problem(shape=kv, size=16) is None  # 8 KV heads replicated twice
    odd = model_shape(config=load_config("Llama-3.1-8B-Instruct") | {"num_key_value_heads": 6})
    assert "KV heads" in (tensor_parallel_problem(shape=odd, size=4) or "")


def test_invalid_forced_tp_is_rejected_naming_valid_sizes() -> None:
    with pytest.raises(InvalidOptionsError) as error:
        plan(model=model_info("Qwen3-14B"), target=gpus(H100, 8), options=Options(tensor_parallel_size=5))
    message = str(error.value)
    assert "151936" in message
    assert "1, 2, 4, 8" in message


def test_forced_tp_larger_than_the_server_is_rejected() -> None:
    with pytest.raises(InvalidOptionsError, match="has 2"):
        plan(
            model=model_info("Llama-3.1-8B-Instruct"),
            target=gpus(H100, 2),
            options=Options(tensor_parallel_size=4),
        )


def test_llama_70b_on_four_a100_80_runs_two_tp_2_replicas_with_tp_4_as_the_fix_for_its_full_context() -> None:
    # vLLM 0.33 on an A100 80GB (79.25 GiB CUDA total × 0.92 = 72.91 GiB requested): TP 2 holds 65.8 GiB of
    # weights per GPU, a small profile-run peak (A100s get the 2048-token / 256-sequence batch limits),
    # 2.25 GiB non-torch, 1.68 GiB of CUDA graphs and the 0.5 GiB margin, leaving ~2.2 GiB: one 14k request,
    # a useful context. The other two GPUs serve a second replica; TP 4 holds the whole 131,072-token context
    # and is the fix the plan offers.
    p = plan(model=model_info("Llama-3.1-70B"), target=gpus(A100_80, 4))
    assert (p.engine, p.tensor_parallel_size, p.data_parallel_size, p.fits) == ("vllm", 2, 2, True)
    assert 8192 <= p.max_model_len < 131_072 and p.max_model_len % MAX_MODEL_LEN_MULTIPLE == 0
    assert [b.index for b in p.per_gpu] == [0, 1, 2, 3]
    assert "TP 1 cannot hold the weights" in reason(p, "tp_longest_context")
    assert warning(p, "context_capped").change == {"tensor_parallel_size": 4}
    assert_budgets_hold(p)
    # TP 4, the fix, holds the full context on all four GPUs
    p4 = plan(model=model_info("Llama-3.1-70B"), target=gpus(A100_80, 4), options=Options(tensor_parallel_size=4))
    assert (p4.tensor_parallel_size, p4.data_parallel_size, p4.max_model_len) == (4, 1, 131_072)
    shape, weights = shape_of("Llama-3.1-70B"), model_info("Llama-3.1-70B").weights
    per_gpu = weights_per_gpu_bytes(weights=weights, shape=shape, dtype="bfloat16", tensor_parallel_size=4)
    assert all(b.weights_bytes == per_gpu for b in p4.per_gpu)  # a quarter of the weights plus the RoPE table
    assert_budgets_hold(p4)


def test_llama_70b_on_eight_h100_uses_the_fewest_gpus_that_fit() -> None:
    p = plan(model=model_info("Llama-3.1-70B"), target=gpus(H100, 8))
    assert p.tensor_parallel_size == 4
    # the other four GPUs serve a second replica (data parallel), each with the same budget
    assert p.data_parallel_size == 2 and len(p.per_gpu) == 8 and p.idle_gpu_indices == ()
    assert len({(b.weights_bytes, b.kv_cache_bytes) for b in p.per_gpu}) == 1
    assert p.valid_tensor_parallel_sizes == (1, 2, 4, 8)
    # and forcing 8 is honoured, with more KV room per GPU
    p8 = plan(
        model=model_info("Llama-3.1-70B"), target=gpus(H100, 8), options=Options(tensor_parallel_size=8)
    )
    assert p8.tensor_parallel_size == 8
    assert p8.kv_cache_tokens > p.kv_cache_tokens
    assert "as requested" in reason(p8, "tp_forced")


@pytest.mark.parametrize(
    ("name", "gpu", "count", "tp"),
    [
        ("Llama-3.1-8B-Instruct", H100, 8, 1),
        ("Qwen2.5-7B-Instruct", L4, 4, 1),
        ("Mistral-Nemo-Instruct-2407", RTX_4090, 2, 2),  # 22.8 GiB of weights does not fit one 4090
        ("Mixtral-8x7B-Instruct-v0.1", H100, 8, 2),  # 87 GiB
        ("Gemma-3-12B-it", L4, 2, 2),
    ],
)
def test_fewest_gpus_that_fit(name: str, gpu: Gpu, count: int, tp: int) -> None:
    p = plan(model=model_info(name), target=gpus(gpu, count))
    assert (p.engine, p.tensor_parallel_size, p.fits) == ("vllm", tp, True)
    assert_budgets_hold(p)


def test_multi_gpu_overhead_includes_nccl() -> None:
    one = plan(model=model_info("Llama-3.1-8B-Instruct"), target=gpus(H100, 2))
    two = plan(
        model=model_info("Llama-3.1-8B-Instruct"),
        target=gpus(H100, 2),
        options=Options(tensor_parallel_size=2),
    )
    # overhead = profile-run peak + non-torch + CUDA graphs + safety margin, as in the pool note
    for p in (one, two):
        pool = pool_params(p)
        terms = ("activation_bytes", "non_torch_bytes", "cudagraph_bytes", "safety_bytes")
        assert p.per_gpu[0].overhead_bytes == sum(pool[k] for k in terms)
    # TP 2 adds NCCL and custom all-reduce buffers, and larger CUDA graphs (102 graphs at 1024 sequences);
    # the sampler's peak is the same (it does not shrink with TP)
    c = constants_for(VLLM_VERSION)
    nccl = int(c.non_torch_tensor_parallel_bytes.value) - int(c.non_torch_single_gpu_bytes.value)
    graphs = int(c.cudagraph_tensor_parallel_bytes.value + 102 * c.cudagraph_bytes_per_graph_tensor_parallel.value)
    graphs -= int(c.cudagraph_single_gpu_bytes.value + 102 * c.cudagraph_bytes_per_graph.value)
    assert pool_params(one)["activation_bytes"] == pool_params(two)["activation_bytes"]
    assert two.per_gpu[0].overhead_bytes - one.per_gpu[0].overhead_bytes == nccl + graphs


# MAX_MODEL_LEN


def test_llama_8b_on_one_rtx_4090_caps_the_context() -> None:
    p = plan(model=model_info("Llama-3.1-8B-Instruct"), target=gpus(RTX_4090, 1))
    assert (p.engine, p.tensor_parallel_size, p.fits) == ("vllm", 1, True)
    assert 16_384 <= p.max_model_len <= 40_000  # 21.6 GiB usable − 15 GiB weights − 2.2 GiB overhead
    assert p.max_model_len % MAX_MODEL_LEN_MULTIPLE == 0
    assert p.max_model_len <= p.kv_cache_tokens
    capped = warning(p, "context_capped")
    assert capped.change == {"max_model_len": p.max_model_len}
    assert "131,072" in capped.text
    assert "2 × NVIDIA GeForce RTX 4090" in capped.text  # the full context needs a second card
    assert "4-bit" in capped.text
    # the KV budget is what the planned length needs, and it stays inside vLLM's pool (after the margin)
    budget = p.per_gpu[0]
    assert budget.kv_cache_bytes == p.max_model_len * 131_072
    pool = budget.capacity_bytes - budget.weights_bytes - budget.overhead_bytes
    assert pool == pool_params(p)["kv_pool_bytes"]
    assert budget.kv_cache_bytes <= pool
    # the pool as vLLM says it: int(concurrency × max_model_len) tokens, concurrency just above 1
    assert p.max_concurrency is not None and 1 <= p.max_concurrency < 1.05
    assert p.kv_cache_tokens == int(p.max_concurrency * p.max_model_len)
    assert_budgets_hold(p)


def test_context_capped_change_prefers_more_gpus_when_the_server_has_them() -> None:
    p = plan(
        model=model_info("Llama-3.1-8B-Instruct"),
        target=gpus(RTX_4090, 2),
        options=Options(tensor_parallel_size=1),
    )
    assert warning(p, "context_capped").change == {"tensor_parallel_size": 2}


def test_full_context_when_it_fits() -> None:
    p = plan(model=model_info("Llama-3.1-8B-Instruct"), target=gpus(H100, 1))
    assert p.max_model_len == 131_072 == p.context_length
    assert "context_capped" not in codes(p)
    assert "full context" in reason(p, "max_model_len_full")


def test_forced_max_model_len_above_what_fits_states_the_maximum() -> None:
    auto = plan(model=model_info("Llama-3.1-8B-Instruct"), target=gpus(RTX_4090, 1))
    p = plan(
        model=model_info("Llama-3.1-8B-Instruct"),
        target=gpus(RTX_4090, 1),
        options=Options(max_model_len=65_536),
    )
    assert p.fits is False
    assert p.max_model_len == 65_536
    too_long = warning(p, "max_model_len_too_long")
    assert too_long.change == {"max_model_len": auto.max_model_len}
    assert f"{auto.max_model_len:,}" in too_long.text
    # applying the change gives a plan that fits
    fixed = plan(
        model=model_info("Llama-3.1-8B-Instruct"),
        target=gpus(RTX_4090, 1),
        options=Options(**too_long.change),
    )
    assert fixed.fits and fixed.max_model_len == auto.max_model_len


def test_forced_max_model_len_keeps_vllm_rather_than_switching_engine() -> None:
    # 36,000 tokens would fit transformers on this card (no preallocation), but the user sized it for vLLM
    p = plan(
        model=model_info("Llama-3.1-8B-Instruct"),
        target=gpus(RTX_4090, 1),
        options=Options(max_model_len=36_000),
    )
    assert (p.engine, p.fits) == ("vllm", False)
    assert "max_model_len_too_long" in codes(p)


def test_forced_max_model_len_that_fits_is_kept() -> None:
    p = plan(
        model=model_info("Llama-3.1-8B-Instruct"),
        target=gpus(RTX_4090, 1),
        options=Options(max_model_len=8000),
    )
    assert (p.max_model_len, p.fits) == (8000, True)
    assert p.per_gpu[0].kv_cache_bytes == 8000 * 131_072


def test_max_model_len_beyond_the_model_context_is_invalid() -> None:
    with pytest.raises(InvalidOptionsError, match="32,768"):
        plan(
            model=model_info("Qwen2.5-7B-Instruct"),
            target=gpus(H100, 1),
            options=Options(max_model_len=65_536),
        )


# ENGINE CHOICE


def test_cpu_target_plans_transformers_in_system_ram() -> None:
    target = Target(ram_bytes=16 * GIB, cpu_cores=8)
    p = plan(model=model_info("Qwen2.5-0.5B"), target=target)
    assert (p.engine, p.device, p.dtype, p.fits) == ("transformers", "cpu", "bfloat16", True)
    assert p.tensor_parallel_size == 1
    assert p.gpu_memory_utilization is None
    assert p.base_image == TRANSFORMERS_CPU_BASE_IMAGE
    assert len(p.per_gpu) == 1
    ram = p.per_gpu[0]
    assert ram.index is None
    assert ram.total_bytes == 16 * GIB
    assert ram.weights_bytes == p.weights_bytes == 494_032_768 * 2
    assert p.max_model_len == 32_768
    assert "no GPU" in reason(p, "engine_cpu")
    assert "bfloat16" in reason(p, "dtype_cpu_bf16")
    assert "cpu_is_slow" in codes(p)
    assert_budgets_hold(p)


def test_cpu_target_without_enough_ram_does_not_fit() -> None:
    p = plan(model=model_info("Llama-3.1-8B-Instruct"), target=Target(ram_bytes=8 * GIB))
    assert (p.engine, p.fits) == ("transformers", False)
    assert "weights_do_not_fit" in codes(p)
    assert "more RAM" in warning(p, "weights_do_not_fit").text


def test_cpu_target_with_unknown_ram_warns() -> None:
    p = plan(model=model_info("Qwen2.5-0.5B"), target=Target())
    assert p.engine == "transformers" and p.device == "cpu"
    assert "ram_unknown" in codes(p)


def test_vllm_forced_on_a_cpu_target_is_invalid() -> None:
    with pytest.raises(InvalidOptionsError, match="NVIDIA GPU"):
        plan(
            model=model_info("Qwen2.5-0.5B"),
            target=Target(ram_bytes=16 * GIB),
            options=Options(engine="vllm"),
        )


def test_old_gpu_gets_llamacpp_with_a_conversion() -> None:
    # V100 (7.0) is below vLLM's 7.5: llama.cpp's CUDA image runs there; the safetensors model is converted
    p = plan(
        model=model_info("Llama-3.1-8B-Instruct"), target=gpus(V100, 1, cuda="12.8", driver="570.124.06")
    )
    assert (p.engine, p.device, p.fits) == ("llama.cpp", "cuda", True)
    old = reason(p, "engine_old_gpu_llamacpp")
    assert "7.0" in old and "7.5" in old and "converted to GGUF" in old
    assert p.settings["convert"]["quant"] == p.settings["quant"] == p.dtype
    assert p.settings["offload"] == "gpu"
    assert "gguf_convert" in {n.code for n in p.reasons}
    # the packed file is the converted GGUF, not the safetensors shards
    assert [f.path for f in p.model.files if f.path.endswith(".gguf")] == [p.settings["model_file"]]
    assert not [f for f in p.model.files if f.path.endswith(".safetensors")]
    # the 128k context in f16 KV (16 GiB) does not fit next to F16 weights on 32 GB: a smaller quant does
    assert p.settings["quant"] != "F16" and p.max_model_len == 131_072
    assert "driver_too_old" not in codes(p)  # the CUDA 12.8 image runs on a 570 driver


def test_old_gpu_with_a_forced_dtype_keeps_transformers_in_float16() -> None:
    p = plan(
        model=model_info("Llama-3.1-8B-Instruct"),
        target=gpus(V100, 1, cuda="12.8", driver="570.124.06"),
        options=Options(engine="transformers"),
    )
    assert (p.engine, p.device, p.dtype, p.fits) == ("transformers", "cuda", "float16", True)
    assert p.base_image == TRANSFORMERS_GPU_BASE_IMAGE
    assert p.per_gpu[0].index == 0
    assert "bfloat16 needs 8.0" in reason(p, "dtype_fp16_old_gpu")
    assert "fp16_for_bf16_checkpoint" in codes(p)
    assert "driver_too_old" not in codes(p)  # the CUDA 12.8 image runs on a 570 driver


def test_vllm_forced_on_an_old_gpu_does_not_fit_and_points_to_transformers() -> None:
    p = plan(model=model_info("Qwen2.5-0.5B"), target=gpus(V100, 1), options=Options(engine="vllm"))
    assert (p.engine, p.fits) == ("vllm", False)
    assert warning(p, "gpu_too_old_for_vllm").change == {"engine": "transformers"}


def test_turing_runs_vllm_in_float16() -> None:
    p = plan(model=model_info("Qwen2.5-0.5B"), target=gpus(T4, 1))
    assert (p.engine, p.dtype, p.fits) == ("vllm", "float16", True)
    assert "fp16_for_bf16_checkpoint" in codes(p)


def test_transformers_forced_on_a_gpu_server() -> None:
    p = plan(
        model=model_info("Qwen2.5-7B-Instruct"), target=gpus(H100, 2), options=Options(engine="transformers")
    )
    assert (p.engine, p.device, p.tensor_parallel_size) == ("transformers", "cuda", 1)
    assert p.base_image == TRANSFORMERS_GPU_BASE_IMAGE
    assert "as requested" in reason(p, "engine_forced")


def test_transformers_with_tensor_parallelism_is_invalid() -> None:
    with pytest.raises(InvalidOptionsError, match="one device"):
        plan(
            model=model_info("Qwen2.5-7B-Instruct"),
            target=gpus(H100, 2),
            options=Options(engine="transformers", tensor_parallel_size=2),
        )


def test_model_too_big_for_vllm_and_gpu_falls_back_to_cpu_ram() -> None:
    target = replace(gpus(A100_80, 1), ram_bytes=512 * GIB)
    p = plan(model=model_info("Llama-3.1-70B"), target=target)
    assert (p.engine, p.device, p.fits) == ("transformers", "cpu", True)
    assert "cannot fit" in reason(p, "engine_vllm_does_not_fit")
    assert "transformers_cpu_fallback" in {n.code for n in p.reasons}


def test_nothing_fits_says_why_and_what_to_do() -> None:
    target = replace(gpus(A100_80, 1), ram_bytes=64 * GIB)
    p = plan(model=model_info("Llama-3.1-70B"), target=target)
    assert (p.engine, p.fits) == ("vllm", False)
    problem = warning(p, "weights_do_not_fit")
    assert "131.45 GiB" in problem.text  # 131.42 GiB of weights and the 32 MiB RoPE table vLLM loads with them
    assert "2 × NVIDIA A100-SXM4-80GB" in problem.text  # TP 2 is the fewest valid GPUs that hold 8192 tokens
    assert "4-bit" in problem.text
    assert problem.params["gpus_needed"] == 2
    assert "nothing fits" in reason(p, "engine_vllm_nothing_fits")


def test_quantized_variant_is_not_suggested_for_quantized_models() -> None:
    p = plan(
        model=model_info("Qwen2.5-7B-Instruct-AWQ"), target=gpus(T4, 1), options=Options(max_model_len=32_768)
    )
    assert all("4-bit" not in w.text for w in p.warnings)


# DTYPE


@pytest.mark.parametrize(
    ("name", "gpu", "dtype"),
    [
        ("Llama-3.1-8B-Instruct", H100, "bfloat16"),
        ("Qwen2.5-7B-Instruct-AWQ", RTX_4090, "float16"),  # the checkpoint's own dtype
        ("Qwen2.5-0.5B", T4, "float16"),  # Turing has no bfloat16
    ],
)
def test_dtype_choice(name: str, gpu: Gpu, dtype: str) -> None:
    assert plan(model=model_info(name), target=gpus(gpu, 1)).dtype == dtype


def test_float32_checkpoint_is_served_in_bfloat16_on_ampere() -> None:
    config = load_config("Qwen2.5-0.5B") | {"torch_dtype": "float32"}
    info = replace(model_info("Qwen2.5-0.5B"), config=config)
    info = replace(
        info, weights=replace(info.weights, bytes_by_dtype={}, parameters_by_dtype={"F32": 494_032_768})
    )
    p = plan(model=info, target=gpus(H100, 1))
    assert p.dtype == "bfloat16"
    assert p.weights_bytes == 494_032_768 * 2
    assert "float32" in reason(p, "dtype_downcast")


def test_forced_dtype_is_honoured_and_bf16_on_old_gpus_warns() -> None:
    p = plan(model=model_info("Qwen2.5-0.5B"), target=gpus(H100, 1), options=Options(dtype="float32"))
    assert p.dtype == "float32"
    assert p.weights_bytes == 494_032_768 * 4
    assert p.kv_cache_bytes_per_token == 12_288 * 2
    old = plan(
        model=model_info("Qwen2.5-0.5B"), target=gpus(V100, 1), options=Options(engine="transformers", dtype="bfloat16")
    )
    assert warning(old, "bf16_unsupported").change == {"dtype": "float16"}


def test_fp8_checkpoint_on_turing_is_flagged() -> None:
    p = plan(
        model=model_info("Meta-Llama-3.1-8B-Instruct-FP8"), target=gpus(T4, 1), options=Options(engine="vllm")
    )
    assert p.fits is False
    assert "fp8_needs_ampere" in codes(p)


def test_awq_model_sizes_by_stored_bytes() -> None:
    p = plan(model=model_info("Qwen2.5-7B-Instruct-AWQ"), target=gpus(RTX_4090, 1))
    assert p.weights_bytes / GIB == pytest.approx(5.19, abs=0.01)
    assert (p.engine, p.max_model_len, p.fits) == ("vllm", 32_768, True)
    assert "awq 4-bit group 128" in reason(p, "weights")


# OPTIONS


@pytest.mark.parametrize("util", [0.0, -0.1, 1.01, 2.0])
def test_gpu_memory_utilization_out_of_range_is_invalid(util: float) -> None:
    with pytest.raises(InvalidOptionsError, match="gpu_memory_utilization"):
        plan(
            model=model_info("Qwen2.5-0.5B"),
            target=gpus(H100, 1),
            options=Options(gpu_memory_utilization=util),
        )


def test_gpu_memory_utilization_default_and_override() -> None:
    default = plan(model=model_info("Llama-3.1-8B-Instruct"), target=gpus(RTX_4090, 1))
    # vLLM 0.33's own default, the value the profile is sized with and the argv passes
    assert default.gpu_memory_utilization == DEFAULT_GPU_MEMORY_UTILIZATION == 0.92
    assert pool_params(default)["requested_bytes"] == math.ceil(cuda_total_bytes(RTX_4090) * 0.92)
    assert default.per_gpu[0].capacity_bytes == math.ceil(cuda_total_bytes(RTX_4090) * 0.92)
    assert "vLLM 0.33.0's own default" in reason(default, "gpu_memory_utilization")
    more = plan(
        model=model_info("Llama-3.1-8B-Instruct"),
        target=gpus(RTX_4090, 1),
        options=Options(gpu_memory_utilization=0.95),
    )
    assert more.gpu_memory_utilization == 0.95
    assert more.max_model_len > default.max_model_len


def test_utilization_vllm_would_refuse_at_start_up_is_a_failure_with_the_highest_that_starts() -> None:
    # 1.0 asks for all 79.18 GiB, but the CUDA context holds 0.51 GiB before vLLM's start-up check
    full = plan(
        model=model_info("Qwen2.5-0.5B"), target=gpus(H100, 1), options=Options(gpu_memory_utilization=1.0)
    )
    assert full.fits is False
    too_high = warning(full, "gpu_memory_utilization_too_high")
    assert too_high.change == {"gpu_memory_utilization": 0.99}
    fixed = plan(model=model_info("Qwen2.5-0.5B"), target=gpus(H100, 1), options=Options(**too_high.change))
    assert fixed.fits and "gpu_memory_utilization_too_high" not in codes(fixed)


def test_default_utilization_is_lowered_where_nccl_leaves_too_little_free() -> None:
    # two T4s at TP 2: 8 % of the 14.25 GiB CUDA sees is less than the CUDA context plus NCCL (0.51 + 0.75 GiB)
    p = plan(model=model_info("Qwen2.5-7B-Instruct"), target=gpus(T4, 2))
    assert p.tensor_parallel_size == 2 and p.fits
    assert p.gpu_memory_utilization == 0.91
    assert "lowered from vLLM 0.33.0's default 0.92" in reason(p, "gpu_memory_utilization")
    assert pool_params(p)["requested_bytes"] == math.ceil(cuda_total_bytes(T4) * 0.91)
    argv = engine_for("vllm").run_spec(plan=p, image="x:1", served_model_name="m", model_dir="/m").default.argv
    assert argv[list(argv).index("--gpu-memory-utilization") + 1] == f"{p.gpu_memory_utilization:g}"


@pytest.mark.parametrize(
    "options",
    [Options(max_model_len=0), Options(dtype="int4"), Options(tensor_parallel_size=0)],
)
def test_other_invalid_options(options: Options) -> None:
    with pytest.raises(InvalidOptionsError):
        plan(model=model_info("Qwen2.5-0.5B"), target=gpus(H100, 1), options=options)


def test_base_image_override_skips_the_driver_check() -> None:
    target = gpus(H100, 1, cuda="12.4", driver="550.54.15")
    p = plan(
        model=model_info("Qwen2.5-0.5B"), target=target, options=Options(base_image="mirror/vllm:v0.30.0")
    )
    assert p.base_image == "mirror/vllm:v0.30.0"
    assert "driver_too_old" not in codes(p)
    assert "driver_not_checked" in {n.code for n in p.reasons}


# DRIVER


def test_old_driver_warns_with_the_cuda_12_image_as_the_way_out() -> None:
    p = plan(model=model_info("Qwen2.5-0.5B"), target=gpus(H100, 1, cuda=None, driver="550.54.15"))
    assert p.base_image == VLLM_IMAGE
    old = warning(p, "driver_too_old")
    assert old.change == {"base_image": VLLM_IMAGE_CUDA_12}
    assert "580.65.06" in old.text and "Upgrade the driver" in old.text
    assert old.params["target_cuda"] == "12.4"


def test_very_old_driver_has_no_image_to_switch_to() -> None:
    p = plan(model=model_info("Qwen2.5-0.5B"), target=gpus(H100, 1, cuda="11.4", driver="470.82.01"))
    assert warning(p, "driver_too_old").change == {}


def test_new_driver_and_unknown_driver() -> None:
    ok = plan(model=model_info("Qwen2.5-0.5B"), target=gpus(H100, 1, cuda="13.0", driver="580.95.05"))
    assert not codes(ok) & {"driver_too_old", "driver_unknown"}
    unknown = plan(model=model_info("Qwen2.5-0.5B"), target=gpus(H100, 1, cuda=None, driver=None))
    assert "driver_unknown" in codes(unknown)


# MLA, MOE, TEXT_CONFIG


def test_deepseek_v3_mla_cache_is_not_split_by_tp() -> None:
    p = plan(model=model_info("DeepSeek-V3"), target=gpus(H200, 8))
    assert (p.engine, p.tensor_parallel_size, p.fits) == ("vllm", 8, True)
    assert p.kv_cache_bytes_per_token == 70_272
    assert p.max_model_len == 163_840
    for budget in p.per_gpu:
        assert budget.kv_cache_bytes == 70_272 * 163_840  # every rank holds the whole latent cache
    assert "not split" in reason(p, "kv_cache")
    # the pool in blocks of 16 tokens × 61 layers × 1152 B, said as vLLM says it
    budget = p.per_gpu[0]
    pool = budget.capacity_bytes - budget.weights_bytes - budget.overhead_bytes
    blocks = pool // (16 * 70_272)
    assert p.max_concurrency == pytest.approx(blocks / (163_840 // 16))
    assert p.kv_cache_tokens == int(blocks / (163_840 // 16) * 163_840)
    assert_budgets_hold(p)


def test_gemma_3_text_config_and_sliding_window() -> None:
    p = plan(model=model_info("Gemma-3-12B-it"), target=gpus(H100, 1))
    assert (p.engine, p.tensor_parallel_size, p.max_model_len, p.fits) == ("vllm", 1, 131_072, True)
    assert p.kv_cache_bytes_per_token == 393_216
    # vLLM's groups: 8 full layers, 40 sliding ones in 5 groups of 8; a block is 8 layers × 16 tokens × 8 KiB.
    # One request: 8192 full blocks + 5 × (⌈(1023 + 2 × 8192 in-flight) / 16⌉ + 1) sliding blocks.
    per_request = 131_072 // 16 + 5 * (-(-(1023 + 2 * 8192) // 16) + 1)
    assert p.per_gpu[0].kv_cache_bytes == per_request * 8 * 16 * 8192
    assert p.per_gpu[0].kv_cache_bytes < 131_072 * 393_216 / 3  # 40 of 48 layers stop at the window
    assert "window" in reason(p, "kv_cache")


def test_gqa_kv_per_gpu_at_tp_2() -> None:
    p = plan(model=model_info("Llama-3.1-70B"), target=gpus(H200, 2))
    assert p.tensor_parallel_size == 2
    assert p.kv_cache_bytes_per_token == 327_680  # whole model
    assert p.per_gpu[0].kv_cache_bytes == p.max_model_len * 163_840  # 4 of 8 KV heads per GPU


def test_tied_embeddings_in_the_plan() -> None:
    p = plan(model=model_info("Qwen3-0.6B"), target=gpus(L4, 1))
    assert p.weights_bytes / GIB == pytest.approx(1.11, abs=0.01)
    assert "tied" in reason(p, "weights")


# PURITY AND JSON


def test_plan_is_pure_and_repeatable() -> None:
    a = plan(model=model_info("Llama-3.1-70B"), target=gpus(A100_80, 4))
    b = plan(model=model_info("Llama-3.1-70B"), target=gpus(A100_80, 4))
    assert a == b
    assert plan_to_dict(a) == plan_to_dict(b)


def test_plan_to_dict_is_json_with_the_documented_keys() -> None:
    p = plan(
        model=model_info("Llama-3.1-8B-Instruct"), target=gpus(RTX_4090, 1, cuda="12.4", driver="550.54.15")
    )
    data = json.loads(json.dumps(plan_to_dict(p)))
    for key in (
        "engine",
        "tensor_parallel_size",
        "max_model_len",
        "fits",
        "weights_bytes",
        "kv_cache_bytes_per_token",
        "per_gpu",
        "reasons",
        "warnings",
        "dtype",
        "base_image",
        "gpu_memory_utilization",
        "model",
        "target",
    ):
        assert key in data
    assert data["model"]["id"] == "org/Llama-3.1-8B-Instruct"
    assert data["model"]["commit"] == "0123456789abcdef0123456789abcdef01234567"
    assert data["target"]["gpus"][0]["compute_capability"] == "8.9"
    assert data["kv_cache_bytes_per_token"] == 131_072
    assert data["weights_bytes"] == 16_060_522_496
    assert set(data["per_gpu"][0]) == {
        "index",
        "weights_bytes",
        "kv_cache_bytes",
        "overhead_bytes",
        "capacity_bytes",
        "total_bytes",
    }
    assert {w["code"] for w in data["warnings"]} >= {"context_capped", "driver_too_old"}
    for entry in data["warnings"]:
        assert set(entry) == {"code", "text", "params", "change"}
    for entry in data["reasons"]:
        assert set(entry) == {"code", "text", "params"} and entry["text"]


@pytest.mark.parametrize(
    "name",
    [
        "Llama-3.1-8B-Instruct",
        "Qwen2.5-7B-Instruct",
        "Qwen2.5-0.5B",
        "Qwen3-0.6B",
        "Mistral-Nemo-Instruct-2407",
        "Gemma-3-12B-it",
        "Qwen2.5-7B-Instruct-AWQ",
        "Meta-Llama-3.1-8B-Instruct-FP8",
    ],
)
@pytest.mark.parametrize(("gpu", "count"), [(RTX_4090, 1), (RTX_4090, 2), (L4, 4), (H100, 1), (A100_80, 2)])
def test_every_fitting_plan_stays_within_memory(name: str, gpu: Gpu, count: int) -> None:
    p = plan(model=model_info(name), target=gpus(gpu, count))
    assert p.reasons and all(n.text for n in p.reasons)
    if p.fits:
        assert_budgets_hold(p)
        assert p.max_model_len <= p.kv_cache_tokens
        assert p.max_model_len >= min(p.context_length, 2048)
        if p.engine == "vllm":  # vLLM starts only when one max_model_len request fits its pool
            assert p.max_concurrency is not None and p.max_concurrency >= 1
    else:
        assert p.warnings


# THE POOL AS VLLM SAYS IT


def test_pool_note_states_the_pool_as_vllm_logs_it() -> None:
    p = plan(model=model_info("Llama-3.1-8B-Instruct"), target=gpus(H100, 1))
    assert p.max_concurrency is not None
    text = reason(p, "kv_pool")
    assert (
        f"GPU KV cache size: {p.kv_cache_tokens:,} tokens, Maximum concurrency for 131,072 tokens per request: "
        f"{p.max_concurrency:.2f}x" in text
    )
    pool = pool_params(p)
    assert f"Available KV cache memory: {pool['kv_pool_bytes'] / GIB:.2f} GiB" in text
    # the batch limits vLLM picks on an H100 when none is given, with where they come from
    assert pool["defaults_assumed"] and "max_num_seqs 1024" in text and "arg_utils.py" in text
    assert (pool["max_num_seqs"], pool["max_num_batched_tokens"]) == (1024, 8192)
    # 16-token blocks of 32 layers × 4 KiB: the pool's tokens are its blocks × 16
    assert pool["num_blocks"] == pool["kv_pool_bytes"] // (16 * 131_072)
    assert p.kv_cache_tokens == pool["num_blocks"] * 16
    assert p.max_concurrency == pytest.approx(pool["num_blocks"] / (131_072 // 16))
    data = plan_to_dict(p)
    assert (data["kv_cache_tokens"], data["max_concurrency"]) == (p.kv_cache_tokens, p.max_concurrency)


QWEN3_32B_BF16 = 32_762_123_264  # per-tensor shapes of the config fixture (64 layers of 487.6 M + embeddings)


def qwen3_32b() -> ModelInfo:
    config = load_config("Qwen3-32B")
    weights = WeightStats(
        parameters_by_dtype={"BF16": QWEN3_32B_BF16}, bytes_by_dtype={"BF16": 2 * QWEN3_32B_BF16}, tensor_count=1
    )
    return replace(model_info("Qwen3-14B", config=config), repo_id="org/Qwen3-32B", weights=weights)


def test_the_issue_example_qwen3_32b_on_one_h100_promises_no_more_than_vllm_had() -> None:
    """Sizing issue: the old planner promised 27,904 tokens of Qwen3-32B on one H100 at utilization 0.9,
    where vLLM 0.11.0 logged an 18,176-token pool (4.45 GiB) and refused max-model-len 32000 (llm-d-planner
    config_explorer/empirical-vllm-memory-results.md, commit 87ab01b). Planned with that release's memory
    behaviour, the plan stays under the logged pool; planned for the pinned release, under the old promise."""
    model, target = qwen3_32b(), gpus(H100, 1)
    options = Options(gpu_memory_utilization=0.9)
    shape = model_shape(config=model.config)
    assert shape.context_length == 40_960
    request = PlanRequest(model=model, shape=shape, context=40_960, margin=1.0, target=target, options=options)
    then = plan_vllm(request=request, version="0.11.0")
    assert then.fits and then.tensor_parallel_size == 1
    assert then.max_model_len <= then.kv_cache_tokens <= 18_176
    # what the plan gives up: the 0.5 GiB safety margin (2,048 tokens of 256 KiB) and the model's error
    assert then.max_model_len >= 0.8 * 18_176
    refused = plan_vllm(request=replace(request, options=replace(options, max_model_len=32_000)), version="0.11.0")
    assert not refused.fits
    too_long = next(w for w in refused.warnings if w.code == "max_model_len_too_long")
    assert too_long.change == {"max_model_len": then.max_model_len}
    now = plan(model=model, target=target, options=options)
    assert now.fits and now.max_model_len <= now.kv_cache_tokens < 27_904
    assert now.max_model_len == round_down(now.max_model_len, MAX_MODEL_LEN_MULTIPLE) < 40_960


# THE NEWEST FAMILIES: each plan follows from the sizing's hand-worked figures (tests/unit/test_sizing.py)


def test_gpt_oss_plan_holds_the_full_context_on_one_h100() -> None:
    p = plan(model=model_info("gpt-oss-20b"), target=gpus(H100, 1))
    assert (p.engine, p.tensor_parallel_size, p.max_model_len, p.fits) == ("vllm", 1, 131_072, True)
    assert p.kv_cache_bytes_per_token == 24 * 2 * 8 * 64 * 2 == 49_152
    # header sums: MXFP4 experts (U8) grow by the re-layout, BF16 stays; every GPU adds the YaRN RoPE table
    assert p.weights_bytes == int(10_152_345_600 * MXFP4_LOADED_EXPANSION) + 2 * 1_804_459_584
    assert p.per_gpu[0].weights_bytes == p.weights_bytes + 4096 * 32 * 64 * 2
    pool = pool_params(p)
    blocks = pool["kv_pool_bytes"] // (12 * 16 * 2048)  # one group of 12 layers, 16 tokens × 2 KiB each
    per_request = 131_072 // 16 + (-(-(127 + 2 * 8192) // 16) + 1)  # full + the window's blocks
    assert pool["num_blocks"] == blocks
    assert p.max_concurrency == pytest.approx(blocks / per_request)
    assert p.kv_cache_tokens == int(blocks / per_request * 131_072)
    assert p.per_gpu[0].kv_cache_bytes == per_request * 12 * 16 * 2048
    assert_budgets_hold(p)


def test_gemma_3_27b_plan_caps_the_context_where_one_request_fills_the_pool() -> None:
    p = plan(model=model_info("Gemma-3-27B-it"), target=gpus(H100, 1))
    assert (p.engine, p.tensor_parallel_size, p.fits) == ("vllm", 1, True)
    assert p.kv_cache_bytes_per_token == 62 * 8192
    assert p.weights_bytes == 2 * 27_432_406_640
    assert abs(p.per_gpu[0].weights_bytes / GIB - 51.45) / 51.45 < 0.01  # "Model loading took 51.45 GiB"
    # 10 global layers, 52 sliding ones in 6 groups of 10; a block is 10 layers × 16 tokens × 8 KiB. A request
    # of L tokens takes ⌈L/16⌉ global blocks and 6 × 1089 sliding ones, so the longest is 16 × (blocks − 6534).
    blocks = pool_params(p)["kv_pool_bytes"] // (10 * 16 * 8192)
    sliding = -(-(1023 + 2 * 8192) // 16) + 1
    longest = 16 * (blocks - 6 * sliding)
    assert p.max_model_len == round_down(longest, MAX_MODEL_LEN_MULTIPLE) < 131_072
    assert warning(p, "context_capped").params["max_model_len"] == p.max_model_len
    assert p.max_concurrency is not None and 1 <= p.max_concurrency < 1.01
    assert_budgets_hold(p)


def test_qwen3_next_plan_pays_the_state_per_sequence() -> None:
    p = plan(model=model_info("Qwen3-Next-80B-A3B-Instruct"), target=gpus(H200, 2))
    assert (p.engine, p.tensor_parallel_size, p.max_model_len, p.fits) == ("vllm", 2, 262_144, True)
    assert p.weights_bytes == 2 * 79_674_391_296
    assert p.kv_cache_bytes_per_token == 12 * 2 * 2 * 256 * 2 == 24_576
    state = ((2 * 16 * 128 + 32 * 128) * 3 + 32 * 128 * 128) * 2  # one gated delta-net layer, one sequence
    kv = next(n for n in p.reasons if n.code == "kv_cache")
    assert kv.params["state_bytes_per_sequence"] == 36 * state
    assert kv.params["state_bytes_per_sequence_per_gpu"] == 36 * (state // 2)
    assert "fixed state" in kv.text
    # TP 2: 1 KiB per attention token and layer, so a 548,864-byte state page forces 544-token blocks
    pool = pool_params(p)
    assert pool["block_size"] == 544
    page = max(544 * 1024, state // 2)
    blocks = pool["kv_pool_bytes"] // (12 * page)  # groups of 12 layers: 1 full, 3 linear
    per_request = -(-262_144 // 544) + 3 * 2  # two state blocks per linear group ("align" mode)
    assert p.max_concurrency == pytest.approx(blocks / per_request)
    assert p.per_gpu[0].kv_cache_bytes == per_request * 12 * page
    assert_budgets_hold(p)


def test_llama_4_plan_counts_chunks_and_caps_the_ten_million_token_context() -> None:
    p = plan(model=model_info("Llama-4-Scout-17B-16E-Instruct"), target=gpus(H100, 4))
    assert (p.engine, p.tensor_parallel_size, p.fits) == ("vllm", 4, True)
    assert p.weights_bytes == 2 * 108_641_793_536
    assert abs(p.per_gpu[0].weights_bytes / GIB - 53.12) / 53.12 < 0.01  # its RoPE table is 2.5 GiB of it
    assert p.kv_cache_bytes_per_token == 48 * 2 * 8 * 128 * 2
    # TP 4: 2 KV heads per GPU, 1 KiB per token and layer; groups of 12 layers: 1 NoPE global, 3 chunked.
    # A long request takes ⌈L/16⌉ global blocks and 3 × (8192 + 2 × 8192 in-flight) / 16 chunked ones.
    blocks = pool_params(p)["kv_pool_bytes"] // (12 * 16 * 1024)
    longest = 16 * (blocks - 3 * (8192 + 2 * 8192) // 16)
    assert p.max_model_len == round_down(longest, MAX_MODEL_LEN_MULTIPLE) < 10_485_760
    assert "chunks" in reason(p, "kv_cache")
    assert_budgets_hold(p)


def test_deepseek_v3_plan_leaves_the_mtp_layer_on_disk() -> None:
    model = model_info("DeepSeek-V3")
    p = plan(model=model, target=gpus(H200, 8))
    stored = checkpoint_weights_bytes(weights=model.weights)
    mtp = mtp_weights_bytes(shape=shape_of("DeepSeek-V3"), loaded_bytes=stored)
    assert 10e9 < mtp < 12e9
    assert p.weights_bytes == stored - mtp  # block-FP8 bytes as stored, less the MTP layer
    assert p.per_gpu[0].weights_bytes == weights_per_gpu_bytes(
        weights=model.weights, shape=shape_of("DeepSeek-V3"), dtype="bfloat16", tensor_parallel_size=8
    )
    assert (p.max_model_len, p.kv_cache_bytes_per_token) == (163_840, 61 * 576 * 2)


def test_vision_language_plan_profiles_the_encoder_too() -> None:
    fixture = json.loads(
        (FIXTURES / "vllm_logs" / "mistral-small-3.1-24b-h100.json").read_text()
    )  # its weights: the header sums of the config's tensors, vision tower included
    params = fixture["weights"]["parameters_by_dtype"]
    weights = WeightStats(parameters_by_dtype=params, bytes_by_dtype={"BF16": 2 * params["BF16"]}, tensor_count=1)
    config = load_config("Mistral-Small-3.1-24B-Instruct-2503")
    model = replace(model_info("Qwen3-14B", config=config), repo_id="org/Mistral-Small-3.1", weights=weights)
    p = plan(model=model, target=gpus(H100, 1))
    assert (p.engine, p.max_model_len, p.fits) == ("vllm", 131_072, True)
    assert p.weights_bytes == 2 * 24_011_361_280
    assert p.kv_cache_bytes_per_token == 40 * 2 * 8 * 128 * 2
    shape = model_shape(config=config)
    assert shape.vision is not None
    c = constants_for(VLLM_VERSION)

    def peak(s: Any) -> int:
        return activation_peak_bytes(
            shape=s, constants=c, max_num_batched_tokens=8192, max_num_seqs=1024, dtype_bytes=2,
            tensor_parallel_size=1,
        )

    assert pool_params(p)["activation_bytes"] == peak(shape)
    assert peak(shape) - peak(replace(shape, vision=None)) == int(c.encoder_profile_bytes.value)


# BAD INPUT, THROUGH THE PLANNER


def test_inconsistent_hybrid_layout_is_refused_with_the_way_out() -> None:
    config = load_config("gpt-oss-20b") | {"layer_types": ["sliding_attention", "full_attention"] * 11}
    with pytest.raises(ModelConfigError, match="layer_types lists 22 layers but num_hidden_layers is 24") as error:
        plan(model=model_info("gpt-oss-20b", config=config), target=gpus(H100, 1))
    assert "original config.json" in str(error.value)


def test_unknown_quantization_method_is_a_warning_naming_the_fallback() -> None:
    config = load_config("Qwen2.5-7B-Instruct-AWQ") | {"quantization_config": {"quant_method": "superquant"}}
    model = model_info("Qwen2.5-7B-Instruct-AWQ", config=config)
    p = plan(model=model, target=gpus(RTX_4090, 1))
    unknown = warning(p, "quantization_method_unknown")
    assert unknown.params == {"method": "superquant"}
    assert "'superquant'" in unknown.text and "fallback" in unknown.text
    assert p.weights_bytes == checkpoint_weights_bytes(weights=model.weights)  # the stored bytes, not cast
    assert p.fits  # a warning, not a failure: vLLM may well load it


def test_sliding_window_wider_than_the_context_is_planned_as_full_attention() -> None:
    config = load_config("Mixtral-8x7B-Instruct-v0.1") | {"sliding_window": 65_536}  # context 32,768
    p = plan(model=model_info("Mixtral-8x7B-Instruct-v0.1", config=config), target=gpus(H100, 2))
    assert warning(p, "sliding_window_not_smaller").params == {"sliding_window": 65_536, "context_length": 32_768}
    assert (p.tensor_parallel_size, p.max_model_len, p.fits) == (2, 32_768, True)
    # all 32 layers keep every token: 2048 blocks × 32 layers × 16 tokens × 2 KiB (4 of 8 KV heads per GPU)
    assert p.per_gpu[0].kv_cache_bytes == 32_768 * 131_072 // 2
    assert "window" not in reason(p, "kv_cache")
