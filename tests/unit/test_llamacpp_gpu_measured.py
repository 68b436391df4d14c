"""The llama.cpp plan held to llama-server on a real GPU (tests/unit/fixtures/gpu_measurements/llamacpp-h200.json).

Each case is llama-server b11312, built with CUDA on the H200 machine, started with the plan's own argv for
``--gpu-name H200`` (scripts/check-gpu-engines): the buffers it logged and the GPU memory NVML counted for it
while it answered a long prompt.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from core.engines.llamacpp import CUDA_RUNTIME_BYTES

MIB = 1 << 20
MEASURED = json.loads((Path(__file__).parent / "fixtures" / "gpu_measurements" / "llamacpp-h200.json").read_text())
REALISTIC = [c for c in MEASURED["cases"] if c["case"] != "tiny-f16"]


def test_two_realistic_shapes_in_f16_and_q4_k_m_were_measured() -> None:
    assert {c["case"] for c in REALISTIC} == {
        "qwen2.5-0.5b-f16", "qwen2.5-0.5b-q4_k_m", "llama-3.1-8b-f16", "llama-3.1-8b-q4_k_m"
    }  # fmt: skip
    assert all(c["ok"] for c in MEASURED["cases"])


@pytest.mark.parametrize("case", MEASURED["cases"], ids=lambda c: c["case"])
def test_weights_and_kv_cache_are_what_llama_server_allocated(case: dict) -> None:
    logged, predicted = case["logged_mib"], case["predicted"]
    # quantized rows are padded on CUDA (a few KiB per model)
    assert predicted["weights"] / MIB == pytest.approx(logged["CUDA0 model"], rel=1e-3, abs=0.01)
    assert predicted["kv"] / MIB == pytest.approx(logged["CUDA0 KV"], abs=0.01)


@pytest.mark.parametrize("case", REALISTIC, ids=lambda c: c["case"])
def test_compute_buffer_is_an_upper_bound_within_five_percent(case: dict) -> None:
    logged = case["logged_mib"]["CUDA0 compute"] * MIB
    assert logged <= case["predicted"]["compute"] <= 1.05 * logged


@pytest.mark.parametrize("case", REALISTIC, ids=lambda c: c["case"])
def test_plan_holds_the_measured_gpu_memory_within_ten_percent_never_two_percent_under(case: dict) -> None:
    p = case["predicted"]
    plan_total = p["weights"] + p["kv"] + p["compute"] + p["output"] + CUDA_RUNTIME_BYTES
    peak = case["measured"]["peak"]
    assert peak <= 1.02 * plan_total
    assert abs(plan_total - peak) <= 0.10 * peak


@pytest.mark.parametrize("case", MEASURED["cases"], ids=lambda c: c["case"])
def test_the_runtime_allowance_covers_what_nvml_counts_beyond_the_buffers(case: dict) -> None:
    assert case["measured"]["runtime_beyond_buffers"] <= CUDA_RUNTIME_BYTES
