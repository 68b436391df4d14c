"""Every warning with a way out (``PlanWarning.change``) is a button that applies it and re-plans."""

from __future__ import annotations

from pathlib import Path

from streamlit.testing.v1 import AppTest
from streamlit.testing.v1.element_tree import Button

from core.hardware import describe_target
from ezrunner_ui.state import WizardState
from tests.ui.conftest import choose, planned
from tests.unit.test_llamacpp_engine import gguf_repo
from tests.unit.test_sizing import model_info


def fix_buttons(app: AppTest) -> list[Button]:
    return [b for b in app.button if b.key and b.key.startswith("fix_")]


def test_a_too_long_context_is_fixed_by_one_click(app: AppTest) -> None:
    state: WizardState = app.session_state["wizard"]
    state.set_model(model_info("Llama-3.1-8B-Instruct"), text="hf:meta-llama/Llama-3.1-8B-Instruct")
    state.target = describe_target(gpu_preset="l4", driver_version="580.65.06")
    app.switch_page("views/plan.py").run()
    app.number_input(key="opt_max_len").set_value(131_072).run()
    the_plan = planned(state)
    assert not the_plan.fits
    with_change = [w for w in the_plan.warnings if w.change]
    buttons = fix_buttons(app)
    assert len(buttons) == len(with_change) >= 1  # one button per warning with a way out
    fitting = with_change[0].change["max_model_len"]
    assert buttons[0].label == f"Apply: context length {fitting}"
    buttons[0].click().run()
    assert not app.exception
    assert state.options.max_model_len == fitting
    assert app.number_input(key="opt_max_len").value == fitting  # the field shows the applied value
    assert planned(state).fits
    assert any("It fits" in s.value for s in app.success)


def test_a_llamacpp_fix_changes_the_quantization(app: AppTest) -> None:
    state: WizardState = app.session_state["wizard"]
    state.set_model(gguf_repo("Llama-3.1-8B-Instruct"), text="hf:org/Llama-3.1-8B-Instruct-GGUF")
    state.target = describe_target(cpu_only=True, ram_gib=8)
    app.switch_page("views/plan.py").run()
    (button,) = fix_buttons(app)
    assert button.label == "Apply: GGUF quantization Q4_K_M"
    button.click().run()
    assert state.options.quant == "Q4_K_M" and app.selectbox(key="opt_quant").value == "Q4_K_M"
    assert planned(state).settings["quant"] == "Q4_K_M"


def test_fix_buttons_in_chinese(app: AppTest, tiny_model: Path) -> None:
    app.selectbox(key="lang").set_value("zh").run()
    state = choose(app, model_dir=tiny_model, target=describe_target(gpu_preset="l4", driver_version="580.65.06"))
    app.switch_page("views/plan.py").run()
    app.number_input(key="opt_gpu_util").set_value(0.99).run()
    assert not planned(state).fits
    (button,) = fix_buttons(app)
    assert button.label.startswith("应用：使用的显存比例 ")
    button.click().run()
    assert planned(state).fits
