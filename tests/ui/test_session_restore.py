"""A browser refresh starts a new Streamlit session: the tab's session file (keyed by ``?tab=``) brings back the
model, revision, target, options, language, build choices and the running pack; a revision typed for one model
is not carried to another."""

from __future__ import annotations

import dataclasses
import threading
from pathlib import Path

from streamlit.testing.v1 import AppTest

from core.hardware import describe_target
from core.jobs import REGISTRY
from core.wizard_state import load_session, sessions_dir
from ezrunner_ui.state import WizardState
from tests.fixtures.fake_hub import FakeHub
from tests.ui.conftest import APP, TIMEOUT_S, choose, texts
from tests.ui.test_build_page import gate, held_pack  # gate: a fixture, re-exported below

__all__ = ["gate"]


def refreshed(tab: str, *, page: str | None = None) -> AppTest:
    """What a browser refresh of the tab gives: a new session whose URL still holds ``?tab=``."""
    at = AppTest.from_file(str(APP), default_timeout=TIMEOUT_S)
    at.query_params["tab"] = tab
    at.run()
    assert not at.exception, at.exception
    if page is not None:
        at.switch_page(page).run()
        assert not at.exception, at.exception
    return at


def test_every_run_keeps_the_tab_in_the_url_and_its_file(app: AppTest, data_home: Path) -> None:
    tab = app.query_params["tab"]
    assert isinstance(tab, str) and len(tab) == 16
    assert (sessions_dir(data_dir=data_home) / f"{tab}.json").is_file()
    app.switch_page("views/hardware.py").run()
    assert app.query_params["tab"] == tab  # a page switch drops query params; the frame puts it back


def test_refresh_keeps_model_target_options_and_language(app: AppTest, tiny_model: Path) -> None:
    app.selectbox(key="lang").set_value("zh").run()
    state = choose(app, model_dir=tiny_model, target=describe_target(gpu_preset="l4", driver_version="580.65.06"))
    state.options = dataclasses.replace(state.options, max_model_len=1024, port=9001)
    state.revision = ""
    app.switch_page("views/plan.py").run()
    tab = app.query_params["tab"]

    again = refreshed(tab, page="views/plan.py")
    restored: WizardState = again.session_state["wizard"]
    assert restored.model is not None and state.model is not None and restored.model.commit == state.model.commit
    assert restored.target == state.target
    assert (restored.options.max_model_len, restored.options.port) == (1024, 9001)
    assert again.session_state["language"] == "zh"
    assert again.title[0].value == "方案"  # the plan page, in Chinese, with the plan drawn
    assert "EXPOSE 9001" in again.code[0].value


def test_a_tab_without_a_file_or_a_bad_id_starts_fresh(data_home: Path) -> None:
    at = refreshed("0123456789abcdef")
    assert at.session_state["wizard"].model is None
    bad = AppTest.from_file(str(APP), default_timeout=TIMEOUT_S)
    bad.query_params["tab"] = "../../etc/passwd"
    bad.run()
    assert not bad.exception
    assert bad.query_params["tab"] != "../../etc/passwd"  # replaced by a fresh id; no file read or written there
    assert load_session(tab_id="../../etc/passwd") is None


def test_a_running_pack_is_found_again_after_refresh(app: AppTest, gate: threading.Event) -> None:
    job = REGISTRY.start(key="ui-test-refresh", work=held_pack(gate, None))
    app.session_state["wizard"].job_id = job.id
    app.run()
    tab = app.query_params["tab"]
    again = refreshed(tab)  # the URL had only ?tab= (the job param was lost, e.g. a bookmark)
    assert again.session_state["wizard"].job_id == job.id
    assert again.query_params["job"] == job.id
    again.switch_page("views/build.py").run()
    assert not again.exception
    assert f"job `{job.id[:8]}`" in texts(again)


def test_a_revision_typed_for_one_model_is_not_used_for_the_next(app: AppTest, ui_hub: FakeHub) -> None:
    app.text_input(key="model_ref").set_value("hf:tiny-org/tiny-llama")
    app.text_input(key="model_revision").set_value("main")
    app.button(key="inspect_button").click().run()
    state: WizardState = app.session_state["wizard"]
    assert state.model is not None and state.revision == "main"
    # another model, the revision field untouched
    app.text_input(key="model_ref").set_value("ms:tiny-org/tiny-llama")
    app.button(key="inspect_button").click().run()
    assert not app.exception
    assert state.model is not None and state.model.ref.source == "ms"
    assert state.revision == "" and app.text_input(key="model_revision").value == ""
    assert any("was typed for another model" in i.value for i in app.info)
