"""Step 3 for llama.cpp plans: the GGUF quantization, GPU layers / offload, slots, the alternatives table, and
the engine options the CLI has (--engine llama.cpp, --quant, --kv-cache-type, --parallel) on both pages."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from streamlit.testing.v1 import AppTest

from core.hardware import Gpu, Target, describe_target
from core.sizing import GIB
from ezrunner_ui.state import WizardState
from tests.ui.conftest import choose, planned, texts
from tests.unit.test_llamacpp_engine import gguf_repo
from tests.unit.test_sizing import model_info

SMALL_GPU = Gpu(name="NVIDIA GeForce RTX 4060", memory_bytes=8 * GIB, compute_capability=(8, 9), index=0)


def with_model(app: AppTest, *, model_name: str, quants: tuple[str, ...], target: Target) -> WizardState:
    state: WizardState = app.session_state["wizard"]
    state.set_model(gguf_repo(model_name, quants), text=f"hf:org/{model_name}-GGUF")
    state.target = target
    return state


def plan_page(app: AppTest) -> AppTest:
    app.switch_page("views/plan.py").run()
    assert not app.exception, app.exception
    return app


def metrics(app: AppTest) -> dict[str, str]:
    return {m.label: str(m.value) for m in app.metric}


def test_a_partly_offloaded_gguf_plan_shows_quant_layers_and_slots(app: AppTest) -> None:
    target = Target(gpus=(SMALL_GPU,), driver_version="580.82.07", cuda_version="13.0", ram_bytes=64 * GIB,
                    cpu_cores=16)  # fmt: skip
    state = with_model(app, model_name="Llama-3.1-8B-Instruct", quants=("F16", "Q8_0"), target=target)
    plan_page(app)
    the_plan = planned(state)
    assert the_plan.engine == "llama.cpp" and the_plan.settings["offload"] == "partial"
    shown = metrics(app)
    assert shown["Engine"] == "llama.cpp"
    assert shown["GGUF quantization"] == the_plan.settings["quant"]
    layers = the_plan.settings["n_gpu_layers"]
    assert shown["Layers on the GPU"] == f"{layers} of 33"
    assert shown["Requests at once (slots)"] == str(the_plan.settings["n_parallel"])
    assert shown["KV cache type"] == the_plan.settings["cache_type_k"]
    assert "Partial offload" in texts(app)
    assert f"-ngl {layers}" in "\n".join(m.value for m in app.markdown)  # core's reason, as core wrote it
    assert "-ngl" in app.code[-1].value or "llama-server" in app.code[0].value


def test_a_cpu_gguf_plan_and_the_alternatives_table(app: AppTest) -> None:
    state = with_model(app, model_name="Llama-3.1-8B-Instruct", quants=("Q8_0", "Q4_K_M"),
                       target=describe_target(cpu_only=True, ram_gib=32, cpu_cores=8))  # fmt: skip
    plan_page(app)
    the_plan = planned(state)
    assert (the_plan.engine, the_plan.device) == ("llama.cpp", "cpu")
    assert metrics(app)["Layers on the GPU"] == "none (CPU)"
    assert "The model runs on the CPU from system RAM." in texts(app)
    assert "--gpus" not in app.code[-1].value  # the run command of a CPU pack


def test_a_safetensors_model_on_an_old_gpu_is_converted(app: AppTest, tiny_model: Path) -> None:
    choose(app, model_dir=tiny_model, target=describe_target(gpu_preset="v100-16gb", driver_version="580.65.06"))
    plan_page(app)
    the_plan = planned(app.session_state["wizard"])
    assert the_plan.engine == "llama.cpp" and "convert" in the_plan.settings
    assert any("converts the safetensors weights to GGUF" in i.value for i in app.info)
    assert metrics(app)["GGUF quantization"] == the_plan.settings["quant"]


def test_the_alternatives_table_and_switching_to_one(app: AppTest) -> None:
    state: WizardState = app.session_state["wizard"]
    state.set_model(model_info("Llama-3.1-8B-Instruct"), text="hf:meta-llama/Llama-3.1-8B-Instruct")
    state.target = describe_target(gpu_preset="t4", driver_version="580.65.06")
    plan_page(app)
    the_plan = planned(state)
    assert the_plan.alternatives and not the_plan.fits
    (table,) = [d for d in app.dataframe if "Fits" in d.value.columns]
    assert list(table.value["Details"]) == [a.summary for a in the_plan.alternatives]
    assert list(table.value["Fits"]) == ["yes" if a.fits else "no" for a in the_plan.alternatives]
    fitting = next(a for a in the_plan.alternatives if a.fits)
    app.button(key=f"use_engine_{fitting.engine}").click().run()
    assert not app.exception
    assert state.options.engine == fitting.engine and planned(state).fits


def test_quant_kv_cache_type_and_parallel_replan(app: AppTest) -> None:
    state = with_model(app, model_name="Qwen2.5-7B-Instruct", quants=("Q8_0", "Q5_K_M", "Q4_K_M"),
                       target=describe_target(gpu_preset="l4", driver_version="580.65.06"))  # fmt: skip
    plan_page(app)
    # the choices are the repo's variants, as core lists them
    assert app.selectbox(key="opt_quant").options == ["automatic", "Q8_0", "Q5_K_M", "Q4_K_M"]
    app.selectbox(key="opt_quant").set_value("Q4_K_M").run()
    app.selectbox(key="opt_kv_cache_type").set_value("q8_0").run()
    app.number_input(key="opt_parallel").set_value(2).run()
    assert not app.exception
    assert (state.options.quant, state.options.kv_cache_type, state.options.parallel) == ("Q4_K_M", "q8_0", 2)
    the_plan = planned(state)
    assert (the_plan.settings["quant"], the_plan.settings["cache_type_k"], the_plan.settings["n_parallel"]) == (
        "Q4_K_M", "q8_0", 2)  # fmt: skip
    shown = metrics(app)
    assert shown["GGUF quantization"] == "Q4_K_M" and shown["KV cache type"] == "q8_0"
    assert shown["Requests at once (slots)"] == "2"


def test_the_hardware_page_offers_the_engine_options(app: AppTest, tiny_model: Path) -> None:
    state = choose(app, model_dir=tiny_model, target=describe_target(gpu_preset="l4", driver_version="580.65.06"))
    app.switch_page("views/hardware.py").run()
    assert not app.exception
    assert "llama.cpp" in app.selectbox(key="hw_opt_engine").options
    # a safetensors model: the quantizations a conversion can make
    assert app.selectbox(key="hw_opt_quant").options == ["automatic", "F16", "Q8_0", "Q6_K", "Q5_K_M", "Q4_K_M"]
    assert app.selectbox(key="hw_opt_kv_cache_type").options == ["automatic", "f16", "bf16", "q8_0", "q4_0"]
    app.selectbox(key="hw_opt_engine").set_value("llama.cpp").run()
    app.selectbox(key="hw_opt_quant").set_value("Q8_0").run()
    app.number_input(key="hw_opt_parallel").set_value(3).run()
    assert (state.options.engine, state.options.quant, state.options.parallel) == ("llama.cpp", "Q8_0", 3)
    plan_page(app)
    assert app.selectbox(key="opt_engine").value == "llama.cpp"
    assert app.selectbox(key="opt_quant").value == "Q8_0"
    assert planned(state).settings["quant"] == "Q8_0"


def test_switching_engine_resets_llamacpp_options_and_the_base_image_with_a_notice(
    app: AppTest, tiny_model: Path
) -> None:
    state = choose(app, model_dir=tiny_model, target=describe_target(gpu_preset="l4", driver_version="580.65.06"))
    plan_page(app)
    app.selectbox(key="opt_engine").set_value("llama.cpp").run()
    app.selectbox(key="opt_quant").set_value("Q8_0").run()
    app.text_input(key="opt_base_image").set_value("ezrunner/llama.cpp-cpu:b11312").run()
    assert state.options.base_image == "ezrunner/llama.cpp-cpu:b11312"
    app.selectbox(key="opt_engine").set_value("vllm").run()
    assert not app.exception
    assert (state.options.engine, state.options.base_image, state.options.quant) == ("vllm", None, None)
    assert any("A new engine" in i.value and "base image" in i.value and "GGUF quantization" in i.value
               for i in app.info)  # fmt: skip
    assert app.text_input(key="opt_base_image").value == ""
    assert planned(state).base_image.startswith("vllm/vllm-openai:")
    app.run()  # the notice is shown once
    assert not any("A new engine" in i.value for i in app.info)


def test_a_new_model_resets_what_belonged_to_the_old_one(app: AppTest, tiny_model: Path) -> None:
    state = choose(app, model_dir=tiny_model, target=describe_target(gpu_preset="l4", driver_version="580.65.06"))
    state.options = dataclasses.replace(state.options, base_image="my.mirror/vllm:1", max_model_len=1024, port=9000)
    state.set_model(gguf_repo("Qwen2.5-7B-Instruct", ("Q8_0",)), text="hf:org/Qwen2.5-7B-Instruct-GGUF")
    assert (state.options.base_image, state.options.max_model_len, state.options.port) == (None, None, 9000)
    plan_page(app)
    assert any("A new model" in i.value and "base image" in i.value and "context length" in i.value
               for i in app.info)  # fmt: skip
