"""The planner: engine, tensor parallelism, max_model_len and dtype, each with its reason or warning."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from core.engines.versions import (
    TRANSFORMERS_CPU_BASE_IMAGE,
    TRANSFORMERS_GPU_BASE_IMAGE,
    VLLM_IMAGE,
    VLLM_IMAGE_CUDA_12,
)
from core.errors import InvalidOptionsError
from core.hardware import Gpu, Target
from core.plan import (
    DEFAULT_GPU_MEMORY_UTILIZATION,
    KV_MARGIN_DENSE,
    KV_MARGIN_MOE_OR_MLA,
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
    activation_bytes,
    cuda_visible_bytes,
    kv_cache_bytes,
    model_shape,
    non_torch_bytes,
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


def gpus(gpu: Gpu, count: int, *, cuda: str | None = "13.0", driver: str | None = "580.82.07") -> Target:
    indexed = tuple(replace(gpu, index=i) for i in range(count))
    return Target(gpus=indexed, cuda_version=cuda, driver_version=driver, ram_bytes=256 * GIB)


def codes(p: Plan) -> set[str]:
    return {w.code for w in p.warnings}


def reason(p: Plan, code: str) -> str:
    return next(n.text for n in p.reasons if n.code == code)


def warning(p: Plan, code: str) -> PlanWarning:
    return next(w for w in p.warnings if w.code == code)


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


def test_llama_70b_on_four_a100_80_uses_tp_4() -> None:
    # TP 2: 65.7 GiB of weights + 2.1 GiB NCCL + 3.8 GiB activation exceed the ~71.5 GiB usable
    # (80 GiB less the driver's 480 MiB reservation, × 0.9). TP 4 leaves ~25 GiB of KV per GPU.
    p = plan(model=model_info("Llama-3.1-70B"), target=gpus(A100_80, 4))
    assert (p.engine, p.tensor_parallel_size, p.fits) == ("vllm", 4, True)
    assert p.max_model_len == 131_072
    assert len(p.per_gpu) == 4
    assert [b.index for b in p.per_gpu] == [0, 1, 2, 3]
    assert all(b.weights_bytes == -(-p.weights_bytes // 4) for b in p.per_gpu)
    text = reason(p, "tp_fewest")
    assert "TP 2 cannot hold the weights" in text
    assert "TP 1 cannot hold the weights" in text
    assert_budgets_hold(p)


def test_llama_70b_on_eight_h100_uses_the_fewest_gpus_that_fit() -> None:
    p = plan(model=model_info("Llama-3.1-70B"), target=gpus(H100, 8))
    assert p.tensor_parallel_size == 4
    assert len(p.per_gpu) == 4
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
    shape = shape_of("Llama-3.1-8B-Instruct")
    assert one.per_gpu[0].overhead_bytes == non_torch_bytes(tensor_parallel_size=1) + activation_bytes(
        shape=shape
    )
    assert two.per_gpu[0].overhead_bytes == non_torch_bytes(tensor_parallel_size=2) + activation_bytes(
        shape=shape
    )
    assert two.per_gpu[0].overhead_bytes - one.per_gpu[0].overhead_bytes == int(1.85 * GIB)


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
    # the KV budget is what the planned length needs, and it stays inside the usable memory
    budget = p.per_gpu[0]
    assert budget.kv_cache_bytes == p.max_model_len * 131_072
    pool = budget.capacity_bytes - budget.weights_bytes - budget.overhead_bytes
    assert budget.kv_cache_bytes <= pool * KV_MARGIN_DENSE
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
    assert "131.42 GiB" in problem.text
    assert "4 × NVIDIA A100-SXM4-80GB" in problem.text  # TP 4 is the fewest valid GPUs that fit
    assert "4-bit" in problem.text
    assert problem.params["gpus_needed"] == 4
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
    assert default.gpu_memory_utilization == DEFAULT_GPU_MEMORY_UTILIZATION == 0.9
    assert default.per_gpu[0].capacity_bytes == int(cuda_visible_bytes(RTX_4090.memory_bytes) * 0.9)
    more = plan(
        model=model_info("Llama-3.1-8B-Instruct"),
        target=gpus(RTX_4090, 1),
        options=Options(gpu_memory_utilization=0.95),
    )
    assert more.gpu_memory_utilization == 0.95
    assert more.max_model_len > default.max_model_len
    full = plan(
        model=model_info("Qwen2.5-0.5B"), target=gpus(H100, 1), options=Options(gpu_memory_utilization=1.0)
    )
    assert full.fits


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
    # MoE/MLA estimates carry a wider safety margin
    budget = p.per_gpu[0]
    pool = budget.capacity_bytes - budget.weights_bytes - budget.overhead_bytes
    assert p.kv_cache_tokens == int(pool * KV_MARGIN_MOE_OR_MLA) // 70_272
    assert_budgets_hold(p)


def test_gemma_3_text_config_and_sliding_window() -> None:
    p = plan(model=model_info("Gemma-3-12B-it"), target=gpus(H100, 1))
    assert (p.engine, p.tensor_parallel_size, p.max_model_len, p.fits) == ("vllm", 1, 131_072, True)
    assert p.kv_cache_bytes_per_token == 393_216
    shape = shape_of("Gemma-3-12B-it")
    assert p.per_gpu[0].kv_cache_bytes == kv_cache_bytes(shape=shape, tokens=131_072)
    assert p.per_gpu[0].kv_cache_bytes < 131_072 * 393_216 / 4  # 40 of 48 layers stop at the window
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
    else:
        assert p.warnings
