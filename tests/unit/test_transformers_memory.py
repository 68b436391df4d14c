"""The transformers engine's peak-memory model held to GPU measurements (tests/unit/fixtures/gpu_measurements).

Each measured point is one fresh `transformers serve` (the image's argv) answering one prompt on an H200, with
random weights of a public config's exact shape (scripts/check-gpu-engines). The plan must never promise less
memory than the server took, and not more than 10 % above it.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from core.engines.transformers import predicted_peak_bytes
from core.engines.transformers_memory import CUDA_RUNTIME_BYTES, longest_prompt, prefill_activation_bytes
from core.hardware import describe_target
from core.hubs.base import ModelInfo, WeightStats
from core.plan import Options, plan
from core.refs import ModelRef
from core.sizing import model_shape
from tests.unit.test_sizing import model_info

FIXTURES = Path(__file__).parent / "fixtures" / "gpu_measurements"
CONFIGS = Path(__file__).parent / "configs"
MEASURED = json.loads((FIXTURES / "transformers-h200.json").read_text())
POINTS = [
    pytest.param(case, point, id=f"{case['case']}-{point['prompt_tokens']}")
    for case in MEASURED["cases"]
    for point in case["points"]
]


def _info(name: str) -> ModelInfo:
    """The measured model as inspect saw it on the GPU machine: its config and its bf16 weights' bytes."""
    case = next(c for c in MEASURED["cases"] if c["case"] == name)
    weights = case["plan"]["weights"]
    stats = WeightStats(parameters_by_dtype={"BF16": weights // 2}, bytes_by_dtype={"BF16": weights}, tensor_count=1)
    return dataclasses.replace(model_info("Llama-3.1-8B-Instruct"), ref=ModelRef(source="hf", repo_id=f"org/{name}"),
                               repo_id=f"org/{name}", config=json.loads((CONFIGS / f"{name}.json").read_text()),
                               weights=stats, architecture=None)  # fmt: skip


@pytest.mark.parametrize(("case", "point"), POINTS)
def test_predicted_peak_covers_the_measured_peak_within_ten_percent(case: dict, point: dict) -> None:
    chosen = plan(model=_info(case["case"]), target=describe_target(gpu_preset="H200"),
                  options=Options(engine="transformers"))  # fmt: skip
    predicted = predicted_peak_bytes(plan=chosen, tokens=point["prompt_tokens"])
    assert point["peak"] <= predicted <= 1.1 * point["peak"], (predicted, point["peak"])


@pytest.mark.parametrize("case", MEASURED["cases"], ids=lambda c: c["case"])
def test_weights_and_runtime_cover_what_the_server_holds_after_load(case: dict) -> None:
    chosen = plan(model=_info(case["case"]), target=describe_target(gpu_preset="H200"),
                  options=Options(engine="transformers"))  # fmt: skip
    assert chosen.weights_bytes == case["plan"]["weights"]
    predicted = chosen.weights_bytes + CUDA_RUNTIME_BYTES
    assert case["after_load"] <= predicted <= 1.1 * case["after_load"]


@pytest.mark.parametrize(
    ("model", "gpu"),
    [("Qwen2.5-7B-Instruct", "L4"), ("Llama-3.1-8B-Instruct", "RTX 4090"), ("Llama-3.1-8B-Instruct", "V100-32GB")],
)
def test_plans_promise_only_contexts_whose_peak_fits(model: str, gpu: str) -> None:
    """The issue's three over-promises: the predicted peak at max_model_len now fits the usable memory."""
    chosen = plan(model=model_info(model), target=describe_target(gpu_preset=gpu),
                  options=Options(engine="transformers"))  # fmt: skip
    assert chosen.engine == "transformers" and chosen.device == "cuda"
    budget = chosen.per_gpu[0]
    peak = predicted_peak_bytes(plan=chosen, tokens=chosen.max_model_len)
    assert budget.used_bytes == peak
    assert peak <= budget.capacity_bytes
    # and the plan is not needlessly short: one more 256-token step would no longer fit (or the model's own
    # context is reached)
    if chosen.max_model_len < chosen.context_length:
        assert predicted_peak_bytes(plan=chosen, tokens=chosen.max_model_len + 2048) > budget.capacity_bytes * 0.9


def test_eager_attention_grows_with_the_square_of_the_prompt() -> None:
    gemma = model_shape(config=json.loads((CONFIGS / "Gemma-2-9B-it.json").read_text()))
    llama = model_shape(config=json.loads((CONFIGS / "Llama-3.1-8B-Instruct.json").read_text()))
    for shape, quadratic in ((gemma, True), (llama, False)):
        one, two = (prefill_activation_bytes(shape=shape, tokens=t, dtype="bfloat16") for t in (4096, 8192))
        linear_growth = 2 * one
        assert (two > 1.5 * linear_growth) is quadratic


def test_longest_prompt_is_the_inverse_of_the_peak() -> None:
    shape = model_shape(config=json.loads((CONFIGS / "Qwen3-0.6B.json").read_text()))
    room = 8 << 30
    tokens = longest_prompt(shape=shape, room=room, dtype="bfloat16", limit=1 << 22)
    from core.sizing import kv_cache_bytes

    def need(t: int) -> int:
        return kv_cache_bytes(shape=shape, tokens=t) + prefill_activation_bytes(shape=shape, tokens=t,
                                                                                dtype="bfloat16")  # fmt: skip

    assert need(tokens) <= room < need(tokens + 1)
    assert longest_prompt(shape=shape, room=0, dtype="bfloat16", limit=1000) == 0
    assert longest_prompt(shape=shape, room=1 << 40, dtype="bfloat16", limit=1000) == 1000
