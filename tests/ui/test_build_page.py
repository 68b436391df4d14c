"""Step 4: Docker down, live progress of a real core.jobs Job, cancel, re-attach from the URL."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from streamlit.testing.v1 import AppTest

from core.errors import CancelledError
from core.events import Event, EventSink
from core.hardware import describe_target
from core.jobs import REGISTRY, Job
from ezrunner_ui.state import plan_key
from tests.ui.conftest import APP, TIMEOUT_S, choose, texts


@dataclass(frozen=True)
class FakeArtifact:
    """The fields of core.pack.Artifact that the Build page reads."""

    sha256: str
    record_id: str | None = None


@pytest.fixture
def gate() -> Iterator[threading.Event]:
    """Holds fake jobs in their build stage until the test opens it."""
    opened = threading.Event()
    yield opened
    opened.set()  # let every job of the test end


def held_pack(gate: threading.Event, result: Any) -> Callable[[EventSink, threading.Event], Any]:
    """A pack-shaped job: a download half done, build step 2 of 5 with log lines, then wait."""

    def work(on_event: EventSink, cancel: threading.Event) -> Any:
        on_event(Event(stage="check", message="Checking Docker"))
        on_event(Event(stage="download", done=512 << 20, total=2 << 30, unit="B", file="model.safetensors"))
        on_event(Event(stage="build", done=2, total=5, unit="step", message="COPY layers/00-meta"))
        for line in ("Step 1/5 : FROM python:3.11-slim", "Step 2/5 : COPY layers/00-meta /models/tiny"):
            on_event(Event(stage="build", log=line))
        while not gate.wait(0.02):
            if cancel.is_set():
                raise CancelledError("The pack was cancelled; no partial files were kept.")
        return result

    return work


def build_page(app: AppTest, *, job: Job | None = None) -> AppTest:
    if job is not None:
        app.query_params["job"] = job.id
    app.switch_page("views/build.py").run()
    assert not app.exception, app.exception
    return app


def test_nothing_to_build_without_a_plan(app: AppTest) -> None:
    build_page(app)
    assert "Nothing to build yet" in texts(app)


def test_docker_down_is_explained_and_earlier_steps_still_work(
    app: AppTest, tiny_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent.sock")
    choose(app, model_dir=tiny_model, target=describe_target(cpu_only=True, ram_gib=16))
    build_page(app)
    assert "Docker is not running" in app.error[0].value
    assert "sudo systemctl start docker" in texts(app)
    assert app.button(key="start_build").disabled
    app.switch_page("views/plan.py").run()
    assert not app.exception and not app.error
    assert "FROM " in app.code[0].value


def test_progress_of_a_running_job_and_cancel(app: AppTest, gate: threading.Event) -> None:
    job = REGISTRY.start(key="ui-test-cancel", work=held_pack(gate, FakeArtifact(sha256="0" * 64)))
    build_page(app, job=job)
    assert app.session_state["wizard"].job_id == job.id
    shown = texts(app)
    assert "Running" in shown
    bars = {bar.proto.text for bar in app.get("progress")}
    assert any("Download" in text and "512.0 MiB of 2.0 GiB" in text and "model.safetensors" in text for text in bars)
    assert any("Build image" in text and "step 2 of 5" in text for text in bars)
    assert "Step 2/5 : COPY layers/00-meta /models/tiny" in app.code[-1].value
    cancel = app.button(key="cancel_button")
    assert not cancel.disabled
    cancel.click().run()
    assert job.wait(timeout=10).state == "cancelled"
    app.run()
    assert "Cancelled. No partial archive was kept." in texts(app)
    assert app.button(key="cancel_button").disabled


def test_finished_job_shows_its_checksum(app: AppTest, gate: threading.Event) -> None:
    job = REGISTRY.start(key="ui-test-success", work=held_pack(gate, FakeArtifact(sha256="ab" * 32)))
    build_page(app, job=job)
    gate.set()
    assert job.wait(timeout=10).state == "succeeded"
    app.run()
    assert not app.exception
    assert "Done in" in texts(app)
    assert "ab" * 32 in [code.value for code in app.code]


def test_a_second_tab_attaches_to_the_same_job(app: AppTest, gate: threading.Event, data_home: Path) -> None:
    job = REGISTRY.start(key="ui-test-second-tab", work=held_pack(gate, None))
    build_page(app, job=job)
    other_tab = AppTest.from_file(str(APP), default_timeout=TIMEOUT_S)
    other_tab.query_params["job"] = job.id
    other_tab.run()
    other_tab.switch_page("views/build.py").run()
    assert not other_tab.exception
    assert other_tab.session_state["wizard"].job_id == job.id
    assert "step 2 of 5" in "\n".join(bar.proto.text for bar in other_tab.get("progress"))


def test_start_is_disabled_while_the_same_pack_runs(app: AppTest, tiny_model: Path, gate: threading.Event) -> None:
    state = choose(app, model_dir=tiny_model, target=describe_target(cpu_only=True, ram_gib=16))
    the_plan = state.current_plan()
    assert the_plan is not None
    job = REGISTRY.start(key=plan_key(the_plan), work=held_pack(gate, None))
    build_page(app)
    start = app.button(key="start_build")
    assert start.disabled
    assert start.label == "Building …"
    assert app.session_state["wizard"].job_id == job.id  # attached without a second start
    assert app.query_params["job"] == job.id
