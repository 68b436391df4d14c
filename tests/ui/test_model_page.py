"""Step 1: search, inspect a hub model or a local folder, errors, and the access token."""

from __future__ import annotations

from pathlib import Path

from streamlit.testing.v1 import AppTest

from tests.fixtures.fake_hub import FakeHub
from tests.ui.conftest import texts


def inspect(app: AppTest, ref: str) -> AppTest:
    app.text_input(key="model_ref").set_value(ref)
    app.button(key="inspect_button").click().run()
    assert not app.exception, app.exception
    return app


def test_widgets_are_there(app: AppTest) -> None:
    for key in ("search_query", "model_ref", "model_revision"):
        assert app.text_input(key=key) is not None
    assert app.button(key="search_button").label == "Search"
    assert app.checkbox(key="search_safetensors").value is True
    assert app.session_state["wizard"].model is None


def test_local_folder_shows_its_card(app: AppTest, tiny_model: Path) -> None:
    inspect(app, str(tiny_model))
    model = app.session_state["wizard"].model
    assert model is not None and model.ref.source == "local"
    shown = texts(app)
    assert "tiny-llama" in shown
    assert model.commit in shown  # the pinned commit is shown
    assert "LlamaForCausalLM" in shown
    files = app.dataframe[-1].value
    assert "model.safetensors" in set(files.iloc[:, 0])
    assert "config.json" in set(files.iloc[:, 0])
    assert app.button(key="to_hardware") is not None


def test_model_carries_over_to_the_next_page(app: AppTest, tiny_model: Path) -> None:
    inspect(app, str(tiny_model))
    app.switch_page("views/hardware.py").run()
    assert not app.exception
    assert "No model chosen yet" not in texts(app)
    app.switch_page("views/model.py").run()
    assert app.text_input(key="model_ref").value == str(tiny_model)  # re-seeded from the wizard state
    assert app.session_state["wizard"].model.repo_id == "tiny-llama"


def test_bad_reference_is_explained(app: AppTest) -> None:
    inspect(app, "hf:not a model")
    assert app.error, "an error must be shown"
    assert "Not a model reference" in app.error[0].value
    assert app.session_state["wizard"].model is None


def test_unknown_hub_model_is_reported(app: AppTest, ui_hub: FakeHub) -> None:
    inspect(app, "hf:tiny-org/no-such-model")
    assert app.error
    assert "Model not found" in app.error[0].value
    assert "tiny-org/no-such-model" in app.error[0].value


def test_hub_model_is_pinned_to_its_commit(app: AppTest, ui_hub: FakeHub) -> None:
    inspect(app, "hf:tiny-org/tiny-llama")
    model = app.session_state["wizard"].model
    assert model.repo_id == "tiny-org/tiny-llama"
    assert model.commit == ui_hub.repos[("hf", "tiny-org/tiny-llama")].commit
    assert "Answered by Hugging Face" in texts(app)


def test_search_lists_hub_models(app: AppTest, ui_hub: FakeHub) -> None:
    app.text_input(key="search_query").set_value("tiny")
    app.segmented_control(key="search_source").set_value("hf")
    app.checkbox(key="search_safetensors").uncheck()
    app.selectbox(key="search_task").set_value("")
    app.button(key="search_button").click().run()
    assert not app.exception, app.exception
    table = app.dataframe[0].value
    assert "tiny-org/tiny-llama" in set(table["Model"])
    gated = table.set_index("Model").loc["tiny-org/tiny-llama-gated", "Gated"]
    assert bool(gated) is True


def test_gated_model_asks_for_a_token_and_keeps_it_in_memory_only(
    app: AppTest, ui_hub: FakeHub, data_home: Path
) -> None:
    inspect(app, "hf:tiny-org/tiny-llama-gated")
    assert "Gated model" in app.error[0].value
    assert app.session_state["wizard"].model is None
    token_box = app.text_input(key="hf_token")
    assert token_box.proto.type == token_box.proto.PASSWORD
    token_box.set_value("test-token").run()
    assert not app.exception
    state = app.session_state["wizard"]
    assert state.model is not None and state.model.gated  # looked up again with the token
    assert state.token == "test-token"
    assert "test-token" not in repr(state)
    assert app.session_state["hf_token"] == ""  # the field was emptied at once
    assert "test-token" not in texts(app)
    assert all("test-token" not in value for value in app.query_params.values())
    stored = [p for p in data_home.rglob("*") if p.is_file()] if data_home.exists() else []
    assert all(b"test-token" not in p.read_bytes() for p in stored)
    assert app.button(key="forget_token").click().run().session_state["wizard"].token is None


def test_search_results_get_a_fit_badge_from_the_planner_and_a_fits_only_filter(app: AppTest, ui_hub: FakeHub) -> None:
    from core.hardware import describe_target

    app.session_state["wizard"].target = describe_target(cpu_only=True, ram_gib=0.0001)  # nothing fits 100 KiB
    app.text_input(key="search_query").set_value("tiny")
    app.segmented_control(key="search_source").set_value("hf")
    app.checkbox(key="search_safetensors").uncheck()
    app.selectbox(key="search_task").set_value("")
    app.button(key="search_button").click().run()
    assert not app.exception, app.exception
    assert "Fits?" in app.dataframe[0].value.columns
    app.button(key="fit_check").click().run()
    assert not app.exception, app.exception
    table = app.dataframe[0].value.set_index("Model")
    assert table.loc["tiny-org/tiny-llama", "Fits?"] == "❌ too big"  # planned from its real headers
    assert table.loc["tiny-org/tiny-llama-gated", "Fits?"] == "❔ unknown"  # gated: no token, not read
    app.checkbox(key="search_fits_only").check().run()
    assert "None of these models fits the target" in texts(app)
    # a target it fits: the badge says so, and the filter keeps it
    app.session_state["wizard"].target = describe_target(cpu_only=True, ram_gib=16)
    app.run()
    app.button(key="fit_check").click().run()
    table = app.dataframe[0].value.set_index("Model")
    assert table.loc["tiny-org/tiny-llama", "Fits?"].startswith(("✅", "⚠️"))
    assert "tiny-org/tiny-llama-gated" not in table.index  # fits-only still on
