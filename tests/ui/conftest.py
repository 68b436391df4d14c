"""AppTest fixtures: the wizard app, a fake hub on loopback, a tiny real model, an isolated data dir."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from core import hubs
from core.hardware import Target
from core.plan import Plan
from core.refs import parse_ref
from ezrunner_ui.state import WizardState
from tests.fixtures.fake_hub import FakeHub
from tests.fixtures.tiny_model import make_tiny_llama

APP = Path(__file__).resolve().parents[2] / "ezrunner_ui" / "app.py"
#: AppTest's default of 3 s is too short for the first import of pandas, altair and core on a busy CI box
TIMEOUT_S = 30


@pytest.fixture
def data_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private EZRUNNER_HOME: History, exports and builds of this test only."""
    home = tmp_path / "ezrunner-home"
    monkeypatch.setenv("EZRUNNER_HOME", str(home))
    return home


@pytest.fixture
def tiny_model(tmp_path: Path) -> Path:
    """A tiny Llama folder of this test's own (the local hub pins it by file mtimes)."""
    return make_tiny_llama(tmp_path / "tiny-llama")


@pytest.fixture
def ui_hub(tiny_model: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeHub]:
    """Both hub APIs on 127.0.0.1 serving the tiny model (public and gated copies)."""
    with FakeHub() as hub:
        hub.add_model(source="hf", repo_id="tiny-org/tiny-llama", folder=tiny_model, downloads=1234, likes=5)
        hub.add_model(source="hf", repo_id="tiny-org/tiny-llama-gated", folder=tiny_model, gated=True)
        hub.add_model(source="ms", repo_id="tiny-org/tiny-llama", folder=tiny_model)
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        monkeypatch.setenv("MODELSCOPE_ENDPOINT", hub.url)
        monkeypatch.delenv("HF_TOKEN", raising=False)
        monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
        yield hub


@pytest.fixture
def app(data_home: Path) -> AppTest:
    """The wizard, run once (so its pages are registered and can be switched to)."""
    at = AppTest.from_file(str(APP), default_timeout=TIMEOUT_S)
    at.run()
    assert not at.exception, at.exception
    return at


def texts(at: AppTest) -> str:
    """Everything the page shows as text (markdown, captions, alerts, metrics), for assertions."""
    parts: list[str] = []
    for kind in (
        "markdown",
        "caption",
        "title",
        "subheader",
        "header",
        "error",
        "warning",
        "info",
        "success",
    ):
        parts += [str(element.value) for element in getattr(at, kind)]
    parts += [f"{m.label} {m.value}" for m in at.metric]
    parts += [str(c.value) for c in at.code]
    return "\n".join(parts)


def choose(app: AppTest, *, model_dir: Path, target: Target) -> WizardState:
    """Put a model and a target into the wizard state, as steps 1 and 2 would."""
    state: WizardState = app.session_state["wizard"]
    state.set_model(hubs.inspect(ref=parse_ref(str(model_dir))), text=str(model_dir))
    state.target = target
    return state


def planned(state: WizardState) -> Plan:
    """The wizard's current plan, which the test has made possible (a model and a target are chosen)."""
    the_plan = state.current_plan()
    assert the_plan is not None, "no model or no target chosen"
    return the_plan
