"""The memory model against real config.json files and the measured numbers in the sizing notes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from core.engines.vllm_memory import activation_peak_bytes, constants_for, kv_pool_capacity, vllm_memory_profile
from core.errors import ModelConfigError, PlanError
from core.hardware import Gpu
from core.hubs.base import ModelInfo, WeightStats
from core.refs import ModelRef
from core.sizing import (
    ACTIVATION_BYTES_MAX,
    ACTIVATION_BYTES_MIN,
    GIB,
    MXFP4_LOADED_EXPANSION,
    NON_TORCH_BYTES_MULTI_GPU,
    NON_TORCH_BYTES_SINGLE_GPU,
    SAFETENSORS_DTYPE_BYTES,
    activation_bytes,
    checkpoint_weights_bytes,
    estimated_parameters,
    kv_bytes_per_token_per_layer,
    kv_cache_bytes,
    kv_cache_bytes_per_token,
    loaded_weights_bytes,
    model_shape,
    mtp_weights_bytes,
    non_torch_bytes,
    pipeline_stage_layers,
    quantization_scheme,
    rope_cache_bytes,
    state_bytes_per_layer,
    state_bytes_per_sequence,
    tokens_that_fit,
    unpacked_parameter_count,
    weights_per_gpu_bytes,
)

CONFIGS = Path(__file__).parent / "configs"

# Per-dtype element counts as the safetensors headers report them (the hub's "safetensors.parameters").
PARAMETERS: dict[str, dict[str, int]] = {
    "Llama-3.1-8B-Instruct": {"BF16": 8_030_261_248},
    "Llama-3.1-70B": {"BF16": 70_553_706_496},
    "Qwen2.5-7B-Instruct": {"BF16": 7_615_616_512},
    "Qwen2.5-0.5B": {"BF16": 494_032_768},  # tied, and no lm_head tensor in the file
    "Qwen3-0.6B": {"BF16": 751_632_384},  # tied, but lm_head.weight is stored too
    "Qwen3-14B": {"BF16": 14_768_307_200},
    "Mistral-Nemo-Instruct-2407": {"BF16": 12_247_782_400},
    "Mixtral-8x7B-Instruct-v0.1": {"BF16": 46_702_792_704},
    "Gemma-3-12B-it": {"BF16": 12_187_325_040},
    # AWQ 4-bit g128: qweight + qzeros packed in I32; scales, embeddings, lm_head, norms, biases in F16
    "Qwen2.5-7B-Instruct-AWQ": {"I32": 822_033_408, "F16": 1_141_306_880},
    # FP8 (compressed-tensors): linear weights F8_E4M3; embeddings, lm_head, norms and scales BF16
    "Meta-Llama-3.1-8B-Instruct-FP8": {"F8_E4M3": 6_979_321_856, "BF16": 1_050_939_840},
    # block-FP8 with F32 block scales; approximate split of the ~684.5 B the hub reports
    "DeepSeek-V3": {"F8_E4M3": 682_000_000_000, "BF16": 2_500_000_000, "F32": 41_000_000},
    # the families below: per-tensor shapes of the config fixture, as the safetensors header lists them
    # (tests/unit/fixtures/vllm_logs/*.json carry the same sums next to the logs that check them)
    "gpt-oss-20b": {"BF16": 1_804_459_584, "U8": 10_152_345_600},  # MXFP4 experts: U8 blocks + U8 scales
    "Gemma-3-27B-it": {"BF16": 27_432_406_640},  # text 26.99 B + SigLIP 0.42 B + projector
    "Qwen3-Next-80B-A3B-Instruct": {"BF16": 79_674_391_296},
    "Llama-4-Scout-17B-16E-Instruct": {"BF16": 108_641_793_536},
}
LM_HEAD_BYTES = {"Qwen3-0.6B": 151_936 * 1024 * 2}

# NVML totals of common cards
H100 = Gpu("NVIDIA H100 80GB HBM3", 81_559 * 2**20, (9, 0))
H200 = Gpu("NVIDIA H200", 143_771 * 2**20, (9, 0))
A100_80 = Gpu("NVIDIA A100-SXM4-80GB", 81_920 * 2**20, (8, 0))
RTX_4090 = Gpu("NVIDIA GeForce RTX 4090", 24_564 * 2**20, (8, 9))
L4 = Gpu("NVIDIA L4", 23_034 * 2**20, (8, 9))
T4 = Gpu("Tesla T4", 15_360 * 2**20, (7, 5))
V100 = Gpu("Tesla V100-SXM2-32GB", 32_768 * 2**20, (7, 0))


def load_config(name: str) -> dict[str, Any]:
    config: dict[str, Any] = json.loads((CONFIGS / f"{name}.json").read_text())
    return config


def weight_stats(name: str) -> WeightStats:
    params = PARAMETERS[name]
    return WeightStats(
        parameters_by_dtype=params,
        bytes_by_dtype={k: v * SAFETENSORS_DTYPE_BYTES[k] for k, v in params.items()},
        tensor_count=1,
        lm_head_bytes=LM_HEAD_BYTES.get(name, 0),
    )


def model_info(name: str, *, config: dict[str, Any] | None = None) -> ModelInfo:
    cfg = config if config is not None else load_config(name)
    return ModelInfo(
        ref=ModelRef(source="hf", repo_id=f"org/{name}"),
        repo_id=f"org/{name}",
        revision="main",
        commit="0123456789abcdef0123456789abcdef01234567",
        files=(),
        config=cfg,
        weights=weight_stats(name),
        architecture=(cfg.get("architectures") or [None])[0],
    )


def shape_of(name: str) -> Any:
    return model_shape(config=load_config(name))


# KV CACHE


@pytest.mark.parametrize(
    ("name", "bytes_per_token"),
    [
        ("Llama-3.1-8B-Instruct", 131_072),  # 2 × 32 × 8 × 128 × 2
        ("Qwen2.5-7B-Instruct", 57_344),  # 2 × 28 × 4 × 128 × 2
        ("Qwen2.5-0.5B", 12_288),  # 2 × 24 × 2 × 64 × 2
        ("Llama-3.1-70B", 327_680),  # 2 × 80 × 8 × 128 × 2
        ("DeepSeek-V3", 70_272),  # MLA: 61 × (512 + 64) × 2
        ("Qwen3-0.6B", 114_688),  # explicit head_dim 128 (hidden 1024 / 16 heads would give 64)
        ("Mistral-Nemo-Instruct-2407", 163_840),  # explicit head_dim 128 (5120 / 32 would give 160)
        ("Gemma-3-12B-it", 393_216),  # text_config; head_dim defaults to 256 (3840 / 16 = 240)
        ("Mixtral-8x7B-Instruct-v0.1", 131_072),  # MoE: experts do not change the KV cache
        ("Qwen2.5-7B-Instruct-AWQ", 57_344),  # weight quantization leaves the KV cache in 16 bit
    ],
)
def test_kv_bytes_per_token_matches_vllm(name: str, bytes_per_token: int) -> None:
    assert kv_cache_bytes_per_token(shape=shape_of(name), kv_dtype_bytes=2) == bytes_per_token


def test_kv_bytes_per_token_scales_with_kv_dtype() -> None:
    shape = shape_of("Llama-3.1-8B-Instruct")
    assert kv_cache_bytes_per_token(shape=shape, kv_dtype_bytes=4) == 262_144
    assert kv_cache_bytes_per_token(shape=shape, kv_dtype_bytes=1) == 65_536


@pytest.mark.parametrize(
    ("name", "tp", "per_rank"),
    [
        ("Llama-3.1-70B", 2, 163_840),  # 4 KV heads per rank
        ("Llama-3.1-70B", 8, 40_960),  # 1 KV head per rank
        ("Llama-3.1-70B", 16, 40_960),  # replicated: max(1, 8 // 16) = 1
        ("Qwen2.5-0.5B", 2, 6_144),
        ("Qwen2.5-0.5B", 4, 6_144),  # 2 KV heads replicated over 4 ranks: still 1 head each
        ("DeepSeek-V3", 8, 70_272),  # MLA latent is on every rank, never split
        ("DeepSeek-V3", 16, 70_272),
    ],
)
def test_kv_heads_per_rank_split_and_replication(name: str, tp: int, per_rank: int) -> None:
    shape = shape_of(name)
    assert kv_cache_bytes_per_token(shape=shape, tensor_parallel_size=tp) == per_rank


def test_null_head_dim_falls_back_to_hidden_over_heads() -> None:
    config = load_config("Llama-3.1-8B-Instruct") | {"head_dim": None}
    assert model_shape(config=config).head_dim == 128
    nemo = load_config("Mistral-Nemo-Instruct-2407")
    nemo_without = {k: v for k, v in nemo.items() if k != "head_dim"}
    assert model_shape(config=nemo).head_dim == 128
    assert model_shape(config=nemo_without).head_dim == 160


def test_missing_kv_heads_means_multi_head_attention() -> None:
    config = {k: v for k, v in load_config("Llama-3.1-8B-Instruct").items() if k != "num_key_value_heads"}
    assert kv_cache_bytes_per_token(shape=model_shape(config=config)) == 2 * 32 * 32 * 128 * 2


def test_dtype_key_is_read_when_torch_dtype_is_absent() -> None:
    config = {k: v for k, v in load_config("Qwen3-0.6B").items() if k != "torch_dtype"}
    assert model_shape(config=config).checkpoint_dtype is None
    assert model_shape(config=config | {"dtype": "float16"}).checkpoint_dtype == "float16"
    assert model_shape(config=config | {"torch_dtype": "bf16"}).checkpoint_dtype == "bfloat16"


def test_text_config_is_unnested_with_family_defaults() -> None:
    shape = shape_of("Gemma-3-12B-it")
    assert shape.nested_text_config
    assert (shape.num_layers, shape.hidden_size, shape.num_attention_heads, shape.num_kv_heads) == (
        48,
        3840,
        16,
        8,
    )
    assert shape.head_dim == 256
    assert shape.context_length == 131_072
    assert shape.vocab_size == 262_208
    assert shape.checkpoint_dtype == "bfloat16"  # from the top level
    # Gemma 3: five sliding (1024-token) layers for every global one
    assert (shape.sliding_window, shape.sliding_window_layers) == (1024, 40)


def test_sliding_window_switched_off_is_ignored() -> None:
    shape = shape_of("Qwen2.5-7B-Instruct")  # sliding_window 131072 but use_sliding_window false
    assert shape.sliding_window_layers == 0
    assert kv_cache_bytes(shape=shape, tokens=10_000) == 10_000 * 57_344


def test_layer_types_decide_the_sliding_layers() -> None:
    config = load_config("Llama-3.1-8B-Instruct") | {
        "sliding_window": 4096,
        "layer_types": ["sliding_attention", "full_attention"] * 16,
    }
    shape = model_shape(config=config)
    assert shape.sliding_window_layers == 16
    per_layer = 131_072 // 32
    assert kv_cache_bytes(shape=shape, tokens=100_000) == per_layer * (16 * 100_000 + 16 * (4096 + 8192))


def test_sliding_window_layers_stop_growing() -> None:
    shape = shape_of("Gemma-3-12B-it")
    per_layer = 393_216 // 48
    window = 1024 + 8192  # the window plus vLLM's batched-token allowance
    assert kv_cache_bytes(shape=shape, tokens=100_000) == per_layer * (8 * 100_000 + 40 * window)
    assert kv_cache_bytes(shape=shape, tokens=1000) == 1000 * 393_216


def test_mla_is_detected_only_with_kv_lora_rank() -> None:
    assert shape_of("DeepSeek-V3").mla_latent_dim == 576
    assert shape_of("DeepSeek-V3").is_moe
    assert shape_of("Llama-3.1-8B-Instruct").mla_latent_dim is None


@pytest.mark.parametrize(
    "name", ["Llama-3.1-8B-Instruct", "Gemma-3-12B-it", "DeepSeek-V3", "Qwen2.5-0.5B", "Llama-3.1-70B"]
)
@pytest.mark.parametrize("tp", [1, 2, 4])
@pytest.mark.parametrize("budget", [0, 5_000_000, 1 * GIB, 7 * GIB + 12_345, 40 * GIB])
def test_tokens_that_fit_is_the_inverse_of_kv_cache_bytes(name: str, tp: int, budget: int) -> None:
    shape = shape_of(name)
    tokens = tokens_that_fit(shape=shape, kv_bytes=budget, tensor_parallel_size=tp)
    assert kv_cache_bytes(shape=shape, tokens=tokens, tensor_parallel_size=tp) <= budget
    assert kv_cache_bytes(shape=shape, tokens=tokens + 1, tensor_parallel_size=tp) > budget


# WEIGHTS


@pytest.mark.parametrize(
    ("name", "tp", "measured_gib"),
    [
        ("Llama-3.1-8B-Instruct", 1, 14.99),  # vLLM log, llm-d-planner report and vllm#10517
        ("Llama-3.1-8B-Instruct", 2, 7.51),  # llm-d-planner report
        ("Qwen2.5-7B-Instruct-AWQ", 1, 5.20),  # vllm#13882
        ("Meta-Llama-3.1-8B-Instruct-FP8", 1, 8.49),  # notes §1.1 (runtime fp8 measurement)
        ("Qwen3-0.6B", 1, 1.12),  # notes §1.3: tied embeddings loaded once
    ],
)
def test_weights_within_two_percent_of_vllm_measurements(name: str, tp: int, measured_gib: float) -> None:
    shape = shape_of(name)
    dtype = shape.checkpoint_dtype or "bfloat16"
    per_gpu = loaded_weights_bytes(weights=weight_stats(name), shape=shape, dtype=dtype) / tp
    assert abs(per_gpu / GIB - measured_gib) / measured_gib < 0.02


def test_llama_8b_bf16_exact_bytes() -> None:
    shape = shape_of("Llama-3.1-8B-Instruct")
    stats = weight_stats("Llama-3.1-8B-Instruct")
    assert checkpoint_weights_bytes(weights=stats) == 16_060_522_496
    assert loaded_weights_bytes(weights=stats, shape=shape, dtype="bfloat16") == 16_060_522_496


def test_tied_embeddings_are_deduplicated_only_when_stored() -> None:
    qwen3 = shape_of("Qwen3-0.6B")
    stats = weight_stats("Qwen3-0.6B")
    assert checkpoint_weights_bytes(weights=stats) / GIB == pytest.approx(1.40, abs=0.01)
    assert loaded_weights_bytes(weights=stats, shape=qwen3, dtype="bfloat16") == 1_503_264_768 - 311_164_928
    # Qwen2.5-0.5B ties too, but its file has no lm_head tensor: nothing to remove
    small = shape_of("Qwen2.5-0.5B")
    assert loaded_weights_bytes(weights=weight_stats("Qwen2.5-0.5B"), shape=small, dtype="bfloat16") == (
        494_032_768 * 2
    )
    # untied model with an lm_head: both stay
    untied = model_shape(config=load_config("Qwen3-0.6B") | {"tie_word_embeddings": False})
    assert loaded_weights_bytes(weights=stats, shape=untied, dtype="bfloat16") == 1_503_264_768


def test_awq_packed_int32_is_counted_at_stored_size() -> None:
    shape = shape_of("Qwen2.5-7B-Instruct-AWQ")
    stats = weight_stats("Qwen2.5-7B-Instruct-AWQ")
    loaded = loaded_weights_bytes(weights=stats, shape=shape, dtype="float16")
    assert loaded / GIB == pytest.approx(5.19, abs=0.01)
    # quantized tensors are not cast: serving in bf16 keeps the same bytes
    assert loaded_weights_bytes(weights=stats, shape=shape, dtype="bfloat16") == loaded
    # the I32 count understates the weights 8×; unpacking it gives back ~7.6 B parameters
    unpacked = unpacked_parameter_count(weights=stats, shape=shape)
    assert unpacked == 822_033_408 * 8 + 1_141_306_880
    assert 7.0e9 < unpacked < 8.2e9
    # a naive "params × 0.5 bytes" would be far off
    assert abs(stats.total_parameters * 0.5 / GIB - 5.19) > 1.0


def test_fp8_checkpoint_keeps_one_byte_weights_and_16_bit_embeddings() -> None:
    shape = shape_of("Meta-Llama-3.1-8B-Instruct-FP8")
    assert shape.quantization is not None and shape.quantization.bits == 8
    loaded = loaded_weights_bytes(
        weights=weight_stats("Meta-Llama-3.1-8B-Instruct-FP8"), shape=shape, dtype="bfloat16"
    )
    assert loaded == 6_979_321_856 + 2 * 1_050_939_840
    assert loaded / GIB == pytest.approx(8.46, abs=0.01)


def test_unquantized_float_tensors_are_cast_to_the_serving_dtype() -> None:
    shape = shape_of("Llama-3.1-8B-Instruct")
    fp32 = WeightStats(parameters_by_dtype={"F32": 1000}, bytes_by_dtype={"F32": 4000})
    assert loaded_weights_bytes(weights=fp32, shape=shape, dtype="bfloat16") == 2000
    bf16 = weight_stats("Llama-3.1-8B-Instruct")
    assert loaded_weights_bytes(weights=bf16, shape=shape, dtype="float32") == 2 * 16_060_522_496


def test_counts_without_bytes_and_bytes_without_counts_agree() -> None:
    shape = shape_of("Qwen2.5-7B-Instruct-AWQ")
    only_counts = WeightStats(parameters_by_dtype=PARAMETERS["Qwen2.5-7B-Instruct-AWQ"])
    only_bytes = WeightStats(bytes_by_dtype=weight_stats("Qwen2.5-7B-Instruct-AWQ").bytes_by_dtype)
    a = loaded_weights_bytes(weights=only_counts, shape=shape, dtype="float16")
    b = loaded_weights_bytes(weights=only_bytes, shape=shape, dtype="float16")
    assert a == b == 5_570_747_392


def test_config_only_estimate_when_no_safetensors_stats() -> None:
    shape = shape_of("Llama-3.1-8B-Instruct")
    estimate = estimated_parameters(shape=shape)
    assert abs(estimate - 8_030_261_248) / 8_030_261_248 < 0.001  # only the norms are missing
    assert loaded_weights_bytes(weights=WeightStats(), shape=shape, dtype="bfloat16") == estimate * 2


# QUANTIZATION CONFIG


def test_quantization_schemes() -> None:
    awq = quantization_scheme(config=load_config("Qwen2.5-7B-Instruct-AWQ"))
    assert awq is not None and (awq.method, awq.bits, awq.group_size) == ("awq", 4, 128)
    fp8 = quantization_scheme(config=load_config("DeepSeek-V3"))
    assert fp8 is not None and (fp8.method, fp8.bits) == ("fp8", 8)
    ct = quantization_scheme(config=load_config("Meta-Llama-3.1-8B-Instruct-FP8"))
    assert ct is not None and (ct.method, ct.bits) == ("compressed-tensors", 8)
    assert quantization_scheme(config=load_config("Llama-3.1-8B-Instruct")) is None
    # nested under text_config (Mistral-Small-3.1 / Llama-4 style)
    nested = {"text_config": {"quantization_config": {"quant_method": "gptq", "bits": 4, "group_size": 32}}}
    gptq = quantization_scheme(config=nested)
    assert gptq is not None and (gptq.method, gptq.bits, gptq.group_size) == ("gptq", 4, 32)
    # the hub's own copy wins over config.json
    hub = quantization_scheme(config={}, quantization={"quant_method": "bitsandbytes", "load_in_4bit": True})
    assert hub is not None and (hub.method, hub.bits) == ("bitsandbytes", 4)


# OVERHEADS AND ERRORS


def test_overheads_follow_the_measured_constants() -> None:
    assert non_torch_bytes(tensor_parallel_size=1) == NON_TORCH_BYTES_SINGLE_GPU == int(0.25 * GIB)
    assert non_torch_bytes(tensor_parallel_size=2) == non_torch_bytes(tensor_parallel_size=8)
    assert non_torch_bytes(tensor_parallel_size=4) == NON_TORCH_BYTES_MULTI_GPU == int(2.1 * GIB)
    assert activation_bytes(shape=shape_of("Llama-3.1-8B-Instruct")) == int(1.9 * GIB)
    assert activation_bytes(shape=shape_of("Qwen2.5-0.5B")) == ACTIVATION_BYTES_MIN
    assert activation_bytes(shape=shape_of("Llama-3.1-70B")) == 2 * int(1.9 * GIB)  # hidden 8192
    wide = model_shape(
        config=load_config("Llama-3.1-70B") | {"hidden_size": 16384, "num_attention_heads": 128}
    )
    assert activation_bytes(shape=wide) == ACTIVATION_BYTES_MAX
    # H100 calibration point (notes §3): 79.19 × 0.95 − 14.99 − 58.11 ≈ overhead at TP 1
    overhead = activation_bytes(shape=shape_of("Llama-3.1-8B-Instruct")) + non_torch_bytes(
        tensor_parallel_size=1
    )
    assert overhead / GIB == pytest.approx(79.19 * 0.95 - 14.99 - 58.11, abs=0.05)


def test_config_without_layers_is_a_plan_error_naming_the_field() -> None:
    with pytest.raises(PlanError, match="num_hidden_layers"):
        model_shape(config={"hidden_size": 4096, "num_attention_heads": 32})


def test_model_info_helper_builds_consistent_stats() -> None:
    info = model_info("Llama-3.1-8B-Instruct")
    assert info.weights.total_bytes == 16_060_522_496
    assert info.architecture == "LlamaForCausalLM"


# NEWEST FAMILIES: per-layer kinds, windows, chunks, recurrent state, MTP, vision towers

H100_TOTAL = int(79.19 * GIB)  # torch-visible total in the llm-d-planner v0.19.0 H100 logs


def _pinned_profile(name: str, *, gpus: int, max_model_len: int, tp: int = 1) -> Any:
    shape = shape_of(name)
    per_gpu = weights_per_gpu_bytes(
        weights=weight_stats(name), shape=shape, dtype="bfloat16", tensor_parallel_size=tp
    )
    return vllm_memory_profile(
        shape=shape,
        weights_per_gpu_bytes=per_gpu,
        gpus=[H100] * gpus,
        tensor_parallel_size=tp,
        max_model_len=max_model_len,
        gpu_total_bytes=[H100_TOTAL] * gpus,
    )


def test_gpt_oss_alternates_128_token_windows_with_full_layers_and_has_sinks() -> None:
    shape = shape_of("gpt-oss-20b")
    assert shape.kinds == ("sliding", "full") * 12
    assert (shape.sliding_window, shape.sliding_window_layers) == (128, 12)
    assert shape.attention_sinks  # one learned logit per head; no cache of its own
    assert shape.is_moe and (shape.num_experts, shape.num_experts_per_token) == (32, 4)
    assert shape.quantization is not None and shape.quantization.method == "mxfp4"
    # 2 (K, V) × 8 KV heads × head_dim 64 × 2 B per layer and token (config.json), 24 attention layers
    assert kv_bytes_per_token_per_layer(shape=shape) == 2 * 8 * 64 * 2 == 2048
    assert kv_cache_bytes_per_token(shape=shape) == 24 * 2048 == 49_152
    assert kv_bytes_per_token_per_layer(shape=shape, tensor_parallel_size=2) == 1024
    # a 100,000-token sequence: 12 full layers keep all of it, 12 sliding layers their window + in-flight
    assert kv_cache_bytes(shape=shape, tokens=100_000) == 2048 * (12 * 100_000 + 12 * (128 + 8192))


def test_gpt_oss_mxfp4_weights_as_loaded() -> None:
    shape, stats = shape_of("gpt-oss-20b"), weight_stats("gpt-oss-20b")
    assert checkpoint_weights_bytes(weights=stats) == 10_152_345_600 + 2 * 1_804_459_584
    expanded = int(10_152_345_600 * MXFP4_LOADED_EXPANSION) + 2 * 1_804_459_584
    assert loaded_weights_bytes(weights=stats, shape=shape, dtype="bfloat16") == expanded
    # TP 2: each rank's expert intermediate 1440 is padded to 1472 (multiple of 64) by the triton backend
    per_gpu = weights_per_gpu_bytes(weights=stats, shape=shape, dtype="bfloat16", tensor_parallel_size=2)
    padded = expanded + int(10_152_345_600 * MXFP4_LOADED_EXPANSION * 32 / 1440)
    rope = (4096 * 32) * 64 * 2  # YaRN ×32 from the original 4096 positions, rotary dim 64, bf16
    assert per_gpu == -(-padded // 2) + rope
    assert abs(per_gpu / GIB - 7.01) / 7.01 < 0.02  # "Model loading took 7.01 GiB" (vLLM 0.19.0, H100 TP 2)


def test_gpt_oss_plan_on_one_h100_holds_the_full_context() -> None:
    p = _pinned_profile("gpt-oss-20b", gpus=1, max_model_len=131_072)
    # vLLM 0.33 groups: 12 full + 12 sliding layers, one group each; a block = 12 layers × 16 tokens × 2048 B
    assert [(g.kind, g.layers, g.groups) for g in p.kv_groups] == [("full", 12, 1), ("sliding", 12, 1)]
    blocks = p.kv_pool_bytes // (12 * 16 * 2048)
    # per request: all 8192 blocks of 131,072 tokens in the full group, the window (127 + 2 × 8192 in-flight
    # tokens, async scheduling) + 1 blocks in the sliding group
    per_request = 131_072 // 16 + (-(-(127 + 2 * 8192) // 16) + 1)
    assert p.num_blocks == blocks
    assert p.max_concurrency == pytest.approx(blocks / per_request)
    assert p.fits_one_request and p.max_concurrency > 5


def test_gemma_3_keeps_only_the_window_on_five_of_six_layers() -> None:
    shape = shape_of("Gemma-3-27B-it")
    assert shape.count("full") == 10 and shape.count("sliding") == 52  # layers 6, 12, …, 60 are global
    assert shape.kinds[5] == "full" and shape.kinds[0] == "sliding"
    # 2 × 16 KV heads × head_dim 128 × 2 B; the hybrid allocator stores only the 1024-token window locally
    assert kv_bytes_per_token_per_layer(shape=shape) == 8192
    assert kv_cache_bytes_per_token(shape=shape) == 62 * 8192
    assert kv_cache_bytes(shape=shape, tokens=131_072) == 8192 * (10 * 131_072 + 52 * (1024 + 8192))
    assert shape.vision is not None and shape.vision.num_layers == 27


def test_gemma_3_linear_rope_table_is_loaded_with_the_weights() -> None:
    """vLLM builds the global layers' linear-scaled RoPE table for 131,072 × 8 positions, plus the local one:
    (1,048,576 + 131,072) × rotary dim 128 × 2 B — part of "Model loading took 51.45 GiB"."""
    shape = shape_of("Gemma-3-27B-it")
    assert rope_cache_bytes(shape=shape, dtype_bytes=2) == (131_072 * 8 + 131_072) * 128 * 2
    per_gpu = weights_per_gpu_bytes(weights=weight_stats("Gemma-3-27B-it"), shape=shape, dtype="bfloat16")
    assert abs(per_gpu / GIB - 51.45) / 51.45 < 0.01


def test_gemma_3_plan_groups_follow_the_hybrid_allocator() -> None:
    p = _pinned_profile("Gemma-3-27B-it", gpus=1, max_model_len=131_072)
    # group size 10 (the global layers): 1 full group, 52 sliding layers in 6 groups (8 padding layers)
    assert [(g.kind, g.layers, g.groups) for g in p.kv_groups] == [("full", 10, 1), ("sliding", 10, 6)]
    sliding_blocks = -(-(1023 + 2 * 8192) // 16) + 1
    per_request = 6 * sliding_blocks + 131_072 // 16
    assert p.max_concurrency == pytest.approx(p.num_blocks / per_request)
    assert p.pool_tokens == int(p.num_blocks / per_request * 131_072)


def test_qwen3_next_linear_layers_hold_a_state_per_sequence() -> None:
    shape = shape_of("Qwen3-Next-80B-A3B-Instruct")
    assert shape.count("linear") == 36 and shape.count("full") == 12  # every 4th layer is full attention
    assert shape.kinds[:4] == ("linear", "linear", "linear", "full")
    # attention layers: 2 (K, V) × 2 KV heads × head_dim 256 × 2 B
    assert kv_cache_bytes_per_token(shape=shape) == 12 * (2 * 2 * 256 * 2) == 24_576
    # gated delta-net (vLLM qwen3_next.py): conv state (2·16·128 + 32·128) × (4 − 1) + recurrent 32 × 128 × 128
    per_layer = ((2 * 16 * 128 + 32 * 128) * 3 + 32 * 128 * 128) * 2
    assert state_bytes_per_layer(shape=shape, kind="linear") == per_layer == 1_097_728
    assert state_bytes_per_sequence(shape=shape) == 36 * per_layer
    # TP 2 halves both; 548,864 B / 1024 B per attention token → vLLM's 544-token attention block (the log)
    assert state_bytes_per_layer(shape=shape, kind="linear", tensor_parallel_size=2) == per_layer // 2
    assert kv_cache_bytes(shape=shape, tokens=1000) == 1000 * 24_576 + 36 * per_layer
    assert kv_cache_bytes(shape=shape, tokens=0) == 36 * per_layer  # the state is paid before the first token


def test_qwen3_next_plan_on_two_h200s() -> None:
    shape = shape_of("Qwen3-Next-80B-A3B-Instruct")
    per_gpu = weights_per_gpu_bytes(
        weights=weight_stats("Qwen3-Next-80B-A3B-Instruct"), shape=shape, dtype="bfloat16", tensor_parallel_size=2
    )
    assert abs(per_gpu / GIB - 74.2812) / 74.2812 < 0.02  # vLLM 0.10.2 log, TP 2
    p = vllm_memory_profile(
        shape=shape, weights_per_gpu_bytes=per_gpu, gpus=[H200] * 2, tensor_parallel_size=2, max_model_len=262_144
    )
    assert p.block_size == 544
    assert [(g.kind, g.groups) for g in p.kv_groups] == [("full", 1), ("linear", 3)]
    # each request: 262,144 / 544 → 482 attention blocks + 2 state blocks ("align" mode) in each linear group
    per_request = -(-262_144 // 544) + 3 * 2
    assert p.max_concurrency == pytest.approx(p.num_blocks / per_request)
    assert p.fits_one_request


def test_mamba2_hybrid_state_and_mlp_only_layers() -> None:
    shape = model_shape(config=load_config("Hybrid-Mamba2-8L"))
    assert shape.kinds == ("mamba", "none", "mamba", "full", "mamba", "none", "mamba", "none")
    assert kv_cache_bytes_per_token(shape=shape) == 2 * 8 * 128 * 2  # the one attention layer
    # Mamba-2: conv (128·64 + 2·8·128) × (4 − 1) + SSM 128 heads × 64 × 128 state, 2 B each
    per_layer = ((128 * 64 + 2 * 8 * 128) * 3 + 128 * 64 * 128) * 2
    assert state_bytes_per_layer(shape=shape, kind="mamba") == per_layer
    assert state_bytes_per_sequence(shape=shape) == 4 * per_layer
    pinned = model_shape(config=load_config("Hybrid-Mamba2-8L") | {"mamba_ssm_cache_dtype": "float32"})
    assert state_bytes_per_layer(shape=pinned, kind="mamba") == (128 * 64 + 2 * 8 * 128) * 3 * 2 + 128 * 64 * 128 * 4


def test_llama_4_chunked_attention_and_its_long_rope_table() -> None:
    shape = shape_of("Llama-4-Scout-17B-16E-Instruct")
    assert shape.count("chunked") == 36 and shape.count("full") == 12  # every 4th layer is NoPE global
    assert shape.attention_chunk_size == 8192
    assert kv_bytes_per_token_per_layer(shape=shape) == 2 * 8 * 128 * 2
    assert kv_cache_bytes(shape=shape, tokens=1_000_000) == 4096 * (12 * 1_000_000 + 36 * (8192 + 8192))
    assert shape.is_moe and shape.num_experts_per_token == 1 and shape.vision is not None
    # RoPE table for all 10,485,760 positions (llama3 scaling does not multiply them): 2.5 GiB on every GPU
    assert rope_cache_bytes(shape=shape, dtype_bytes=2) == 10_485_760 * 128 * 2
    per_gpu = weights_per_gpu_bytes(
        weights=weight_stats("Llama-4-Scout-17B-16E-Instruct"), shape=shape, dtype="bfloat16", tensor_parallel_size=4
    )
    assert abs(per_gpu / GIB - 53.12) / 53.12 < 0.01  # "Model loading took 53.12 GiB" (vLLM 0.19.0, TP 4)


def test_llama_4_plan_counts_chunks_not_the_context() -> None:
    p = _pinned_profile("Llama-4-Scout-17B-16E-Instruct", gpus=4, tp=4, max_model_len=131_072)
    assert [(g.kind, g.groups) for g in p.kv_groups] == [("full", 1), ("chunked", 3)]
    per_request = 3 * (-(-(8192 + 2 * 8192) // 16)) + 131_072 // 16
    assert p.max_concurrency == pytest.approx(p.num_blocks / per_request)


def test_deepseek_v3_mtp_layer_stays_on_disk() -> None:
    shape = shape_of("DeepSeek-V3")
    assert shape.mtp_layers == 1 and shape.is_mla
    stats = weight_stats("DeepSeek-V3")
    stored = checkpoint_weights_bytes(weights=stats)
    loaded = loaded_weights_bytes(weights=stats, shape=shape, dtype="bfloat16")
    mtp = mtp_weights_bytes(shape=shape, loaded_bytes=stored)
    assert loaded == stored - mtp
    # one of 62 decoder layers' share of the non-embedding bytes: ~11 GB (DeepSeek: 14 B MTP parameters,
    # shared embedding and head included)
    assert 10e9 < mtp < 12e9
    assert kv_cache_bytes_per_token(shape=shape, tensor_parallel_size=8) == 61 * 576 * 2  # MLA: not split


def test_deepseek_v3_plan_on_eight_h200s() -> None:
    shape = shape_of("DeepSeek-V3")
    per_gpu = weights_per_gpu_bytes(
        weights=weight_stats("DeepSeek-V3"), shape=shape, dtype="bfloat16", tensor_parallel_size=8
    )
    p = vllm_memory_profile(
        shape=shape, weights_per_gpu_bytes=per_gpu, gpus=[H200] * 8, tensor_parallel_size=8, max_model_len=163_840
    )
    blocks = p.kv_pool_bytes // (61 * 16 * 1152)  # one latent of 576 × 2 B per layer and token
    assert p.num_blocks == blocks and p.pool_tokens == int(blocks / (163_840 // 16) * 163_840)
    assert p.fits_one_request


def test_vision_tower_parameters_from_its_config() -> None:
    vision = shape_of("Gemma-3-12B-it").vision
    assert vision is not None
    # SigLIP-so400m: 27 × (4·1152² + 2·1152·4304) + patch and position embeddings (biases, norms left out)
    assert vision.parameters == 27 * (4 * 1152**2 + 2 * 1152 * 4304) + 3 * 14 * 14 * 1152 + 64 * 64 * 1152
    assert abs(vision.parameters - 416_866_032) / 416_866_032 < 0.01  # per-tensor sum of the header
    assert shape_of("Llama-3.1-8B-Instruct").vision is None


def test_vision_encoder_profiling_raises_the_activation_peak() -> None:
    text = model_shape(config={k: v for k, v in load_config("Gemma-3-12B-it").items() if k != "vision_config"})
    with_tower = shape_of("Gemma-3-12B-it")
    constants = constants_for("0.33.0")

    def peak(shape: Any) -> int:
        return activation_peak_bytes(
            shape=shape, constants=constants, max_num_batched_tokens=8192, max_num_seqs=1024, dtype_bytes=2,
            tensor_parallel_size=1,
        )

    assert peak(with_tower) - peak(text) == int(constants.encoder_profile_bytes.value)


def test_pipeline_stages_split_layers_and_embeddings_like_vllm() -> None:
    assert pipeline_stage_layers(num_layers=32, pipeline_parallel_size=4) == [8, 8, 8, 8]
    assert pipeline_stage_layers(num_layers=30, pipeline_parallel_size=4) == [7, 8, 8, 7]  # before the last
    shape, stats = shape_of("Llama-3.1-8B-Instruct"), weight_stats("Llama-3.1-8B-Instruct")
    pp2 = weights_per_gpu_bytes(weights=stats, shape=shape, dtype="bfloat16", pipeline_parallel_size=2)
    pp4 = weights_per_gpu_bytes(weights=stats, shape=shape, dtype="bfloat16", pipeline_parallel_size=4)
    assert abs(pp2 / GIB - 7.51) / 7.51 < 0.02  # llm-d-planner v0.19.0 PP 2 log
    assert abs(pp4 / GIB - 4.26) / 4.26 < 0.02  # PP 4: an end stage (embedding or head + 8 layers)
    assert rope_cache_bytes(shape=shape, dtype_bytes=2) == 131_072 * 128 * 2


# BAD INPUT


def test_layer_types_shorter_than_the_layers_is_refused() -> None:
    config = load_config("gpt-oss-20b") | {"layer_types": ["sliding_attention", "full_attention"] * 11}
    with pytest.raises(ModelConfigError, match="layer_types lists 22 layers but num_hidden_layers is 24") as error:
        model_shape(config=config)
    assert "original config.json" in str(error.value)
    assert isinstance(error.value, PlanError)


def test_hybrid_pattern_shorter_than_the_layers_is_refused() -> None:
    config = load_config("Hybrid-Mamba2-8L") | {"hybrid_override_pattern": "M-M*"}
    with pytest.raises(ModelConfigError, match="hybrid_override_pattern has 4 characters"):
        model_shape(config=config)
    with pytest.raises(ModelConfigError, match="'X'"):
        model_shape(config=load_config("Hybrid-Mamba2-8L") | {"hybrid_override_pattern": "M-M*M-MX"})


def test_unknown_layer_type_and_state_layers_without_dimensions_are_refused() -> None:
    with pytest.raises(ModelConfigError, match="'retention'"):
        model_shape(config=load_config("gpt-oss-20b") | {"layer_types": ["retention"] * 24})
    no_state = {k: v for k, v in load_config("Qwen3-Next-80B-A3B-Instruct").items() if k != "linear_num_value_heads"}
    with pytest.raises(ModelConfigError, match="linear_num_value_heads"):
        model_shape(config=no_state)


def test_unknown_quantization_method_is_named_with_its_fallback() -> None:
    config = load_config("Qwen2.5-7B-Instruct-AWQ") | {"quantization_config": {"quant_method": "superquant", "bits": 3}}
    shape = model_shape(config=config)
    assert shape.quantization is not None and not shape.quantization.known
    assert any("'superquant'" in note and "fallback" in note for note in shape.notes)
    stats = weight_stats("Qwen2.5-7B-Instruct-AWQ")
    # the fallback: stored bytes, no cast
    assert loaded_weights_bytes(weights=stats, shape=shape, dtype="bfloat16") == checkpoint_weights_bytes(weights=stats)
    assert shape_of("Qwen2.5-7B-Instruct-AWQ").notes == ()


def test_sliding_window_wider_than_the_context_counts_as_full_attention() -> None:
    config = load_config("Mixtral-8x7B-Instruct-v0.1") | {"sliding_window": 65_536}  # context 32,768
    shape = model_shape(config=config)
    assert shape.sliding_window_layers == 0 and shape.sliding_window is None
    assert any("sliding_window 65,536" in note for note in shape.notes)
    assert kv_cache_bytes(shape=shape, tokens=32_768) == 32_768 * 131_072
    narrow = model_shape(config=load_config("Mixtral-8x7B-Instruct-v0.1") | {"sliding_window": 4096})
    assert narrow.sliding_window_layers == 32 and narrow.notes == ()


def test_kv_pool_capacity_of_a_model_without_attention_layers() -> None:
    config = load_config("Hybrid-Mamba2-8L") | {"hybrid_override_pattern": "M-M-M-M-"}
    shape = model_shape(config=config)
    assert shape.attention_layers == 0 and tokens_that_fit(shape=shape, kv_bytes=1 * GIB) == 2**31
    capacity = kv_pool_capacity(
        shape=shape, pool_bytes=1 * GIB, constants=constants_for("0.33.0"), max_model_len=8192,
        max_num_batched_tokens=2048,
    )
    per_layer = state_bytes_per_layer(shape=shape, kind="mamba")
    assert capacity.num_blocks == GIB // (4 * per_layer)
    assert capacity.max_concurrency == pytest.approx(capacity.num_blocks / 2)  # 2 state blocks ("align")
