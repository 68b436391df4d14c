"""The memory chart: every GPU (idle ones marked), sensible units, KV as tokens, CPU plans against RAM."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pyarrow as pa
from streamlit.testing.v1 import AppTest

from core.hardware import describe_target
from ezrunner_ui.state import WizardState
from tests.ui.conftest import choose, planned, texts
from tests.unit.test_sizing import model_info


def chart(app: AppTest) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The chart's Vega-Lite spec and the rows of its data sets (sent beside the spec, as Arrow)."""
    (element,) = app.get("vega_lite_chart")
    spec: dict[str, Any] = json.loads(element.proto.spec)
    data = [row for d in element.proto.datasets for row in pa.ipc.open_stream(d.data.data).read_all().to_pylist()]
    return spec, data


def test_an_idle_second_gpu_is_drawn_and_marked(app: AppTest) -> None:
    state: WizardState = app.session_state["wizard"]
    state.set_model(model_info("Llama-3.1-8B-Instruct"), text="hf:meta-llama/Llama-3.1-8B-Instruct")
    state.target = describe_target(gpu_preset="a100-80gb", gpu_count=2, driver_version="580.65.06")
    # transformers serve runs one copy on one GPU: the second card is idle
    state.options = dataclasses.replace(state.options, engine="transformers")
    app.switch_page("views/plan.py").run()
    assert [b.index for b in planned(state).per_gpu] == [0]
    spec, data = chart(app)
    devices = {row["device"] for row in data}
    assert {"GPU 0", "GPU 1 (idle)"} <= devices
    assert spec["layer"][0]["encoding"]["x"]["title"] == "GiB"
    idle_mark = [r for r in data if r.get("device") == "GPU 1 (idle)" and "what" in r]
    assert idle_mark and round(idle_mark[0]["GiB"]) == 80  # the idle card's whole memory
    the_plan = planned(state)
    assert f"for one request of {the_plan.max_model_len:,} tokens" in texts(app)  # no pool: per request


def test_a_pool_engine_shows_its_kv_cache_as_tokens(app: AppTest) -> None:
    state: WizardState = app.session_state["wizard"]
    state.set_model(model_info("Llama-3.1-8B-Instruct"), text="hf:meta-llama/Llama-3.1-8B-Instruct")
    state.target = describe_target(gpu_preset="l4", driver_version="580.65.06")
    app.switch_page("views/plan.py").run()
    the_plan = planned(state)
    assert the_plan.engine == "vllm" and the_plan.kv_cache_tokens > 0
    assert f"room for {the_plan.kv_cache_tokens:,} tokens of context" in texts(app)


def test_a_tiny_model_is_drawn_in_mib_and_a_cpu_plan_against_ram(app: AppTest, tiny_model: Path) -> None:
    state = choose(app, model_dir=tiny_model, target=describe_target(cpu_only=True, ram_gib=0.5))
    state.options = dataclasses.replace(state.options, engine="llama.cpp")  # little runtime next to the weights
    app.switch_page("views/plan.py").run()
    spec, data = chart(app)
    # the unit follows the largest figure drawn (here the usable RAM, under 1 GiB): no "0.0 GiB" bars
    (budget,) = planned(state).per_gpu
    assert max(budget.capacity_bytes, budget.used_bytes) < 1 << 30
    assert spec["layer"][0]["encoding"]["x"]["title"] == "MiB"
    assert {row["device"] for row in data} == {"RAM"}
    weights = next(r["MiB"] for r in data if r.get("part") == "Weights")
    assert weights == budget.weights_bytes / (1 << 20) > 0
    assert [layer["mark"]["type"] for layer in spec["layer"]] == ["bar", "tick"]


def test_unknown_ram_has_no_capacity_mark_at_zero(app: AppTest, tiny_model: Path) -> None:
    choose(app, model_dir=tiny_model, target=describe_target(cpu_only=True))
    app.switch_page("views/plan.py").run()
    spec, _ = chart(app)
    assert [layer["mark"]["type"] for layer in spec.get("layer", [spec])] == ["bar"]
    assert "The target's RAM is not known" in texts(app)
