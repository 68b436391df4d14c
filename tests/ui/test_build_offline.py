"""Step 4 offline: a missing pinned engine image offers the locally built offline image; a plan that does not
fit builds only after confirmation; a failed pack says what to do; the live log shows the last lines."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from core.docker import api as docker_api
from core.engines.versions import LLAMA_CPP_OFFLINE_IMAGE, TRANSFORMERS_OFFLINE_IMAGE
from core.errors import BaseImageMissingError
from core.events import Event, EventSink
from core.hardware import describe_target
from core.jobs import REGISTRY
from tests.ui.conftest import choose, planned, texts


@dataclass
class FakeImage:
    tags: list[str]


@dataclass
class FakeImages:
    present: set[str]

    def list(self, *, name: str) -> list[FakeImage]:
        return [FakeImage(tags=[ref]) for ref in sorted(self.present) if ref.rsplit(":", 1)[0] == name]


@dataclass
class FakeDocker:
    """The few calls the Build page makes: connect, list images by repository, look one up."""

    present: set[str] = field(default_factory=set)

    @property
    def images(self) -> FakeImages:
        return FakeImages(self.present)

    def close(self) -> None:
        pass


@pytest.fixture
def fake_docker(monkeypatch: pytest.MonkeyPatch) -> FakeDocker:
    engine = FakeDocker(present={TRANSFORMERS_OFFLINE_IMAGE, LLAMA_CPP_OFFLINE_IMAGE, "ezrunner/llama.cpp-cpu:b1"})
    monkeypatch.setattr(docker_api, "connect", lambda **_: engine)
    monkeypatch.setattr(docker_api, "image_exists", lambda *, ref, client=None: ref in engine.present)
    return engine


def build_page(app: AppTest) -> AppTest:
    app.switch_page("views/build.py").run()
    assert not app.exception, app.exception
    return app


def test_a_missing_pinned_image_offers_the_offline_one(app: AppTest, tiny_model: Path, fake_docker: FakeDocker) -> None:
    state = choose(app, model_dir=tiny_model, target=describe_target(cpu_only=True, ram_gib=16))
    pinned = planned(state).base_image
    assert pinned not in fake_docker.present
    build_page(app)
    assert any(pinned in w.value and "not on this machine" in w.value for w in app.warning)
    assert app.button(key="start_build").disabled
    offer = app.button(key="use_offline_image")
    assert offer.label == f"Build from the local offline image {TRANSFORMERS_OFFLINE_IMAGE}"
    offer.click().run()
    assert not app.exception
    assert state.options.base_image == TRANSFORMERS_OFFLINE_IMAGE
    assert planned(state).base_image == TRANSFORMERS_OFFLINE_IMAGE
    assert not app.button(key="start_build").disabled
    assert not any("not on this machine" in w.value for w in app.warning)
    # the Plan page shows the image the build will use
    app.switch_page("views/plan.py").run()
    assert app.text_input(key="opt_base_image").value == TRANSFORMERS_OFFLINE_IMAGE
    assert f"FROM {TRANSFORMERS_OFFLINE_IMAGE}" in app.code[0].value


def test_no_offline_image_for_a_gpu_plan_says_how_to_get_the_image(
    app: AppTest, tiny_model: Path, fake_docker: FakeDocker
) -> None:
    choose(app, model_dir=tiny_model, target=describe_target(gpu_preset="l4", driver_version="580.65.06"))
    build_page(app)
    assert app.get("button") and not [b for b in app.button if b.key == "use_offline_image"]
    assert any("docker load -i base.tar" in i.value for i in app.info)
    assert app.button(key="start_build").disabled


def test_a_plan_that_does_not_fit_builds_only_after_confirmation(
    app: AppTest, tiny_model: Path, fake_docker: FakeDocker
) -> None:
    state = choose(app, model_dir=tiny_model, target=describe_target(cpu_only=True, ram_gib=16))
    fake_docker.present.add(planned(state).base_image)
    state.target = describe_target(cpu_only=True, ram_gib=0.01)
    assert not planned(state).fits
    build_page(app)
    assert any("does not fit" in e.value for e in app.error)
    assert app.button(key="start_build").disabled
    app.checkbox(key="confirm_unfit").check().run()
    assert not app.button(key="start_build").disabled


def test_a_failed_pack_says_what_to_do_and_the_log_shows_its_last_lines(app: AppTest) -> None:
    lines = [f"Step {n}/40 : RUN something {n}" for n in range(1, 41)]

    def work(on_event: EventSink, cancel: threading.Event) -> None:
        for line in lines:
            on_event(Event(stage="build", log=line))
        raise BaseImageMissingError("Docker could not pull the base image x: 500 Server Error.", hint="docker load")

    job = REGISTRY.start(key="ui-test-failed-pull", work=work)
    while job.snapshot().active:
        threading.Event().wait(0.02)
    app.query_params["job"] = job.id
    build_page(app)
    assert any("Base image missing" in e.value for e in app.error)  # the translated headline first
    assert any("Use the local offline image" in i.value for i in app.info)
    live = app.code[0].value.splitlines()
    # the newest lines (the job adds the error's own line after the build's), not the oldest
    assert len(live) == 12 and lines[-1] in live and lines[0] not in live
    assert app.expander[-1].label == f"Whole log ({len(job.snapshot().log_tail)} lines)"
    assert "Step 1/40" in texts(app)  # in full on demand


def test_export_progress_never_goes_back(app: AppTest) -> None:
    gate = threading.Event()
    total = {"value": 100 << 20}

    def work(on_event: EventSink, cancel: threading.Event) -> None:
        on_event(Event(stage="export", done=80 << 20, total=total["value"], unit="B"))
        gate.wait(5)
        # the estimate of the archive's size grows: 80 of 200 would draw the bar backwards
        on_event(Event(stage="export", done=90 << 20, total=200 << 20, unit="B"))
        gate.clear()
        gate.wait(5)

    job = REGISTRY.start(key="ui-test-monotonic", work=work)
    try:
        app.query_params["job"] = job.id
        build_page(app)
        first = app.get("progress")[0].proto.value
        assert first == 80
        gate.set()
        while job.snapshot().stages[0].total != 200 << 20:
            threading.Event().wait(0.02)
        app.run()
        assert app.get("progress")[0].proto.value >= first
        assert "90.0 MiB of 200.0 MiB" in app.get("progress")[0].proto.text  # the bytes stay true
    finally:
        gate.set()
