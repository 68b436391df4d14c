"""The Try page without Docker: a pack's server (here a local OpenAI-style engine standing in for the container)
chatted with, answers and their figures kept in the conversation, two packs compared, Stop, the ways in from
Download and History, and what it says with no pack or no Docker."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from core import tryout
from core.errors import DockerUnavailableError
from core.run import RunningServer
from ezrunner_ui import ui_errors
from tests.fixtures.fake_engine import FakeEngine
from tests.ui.conftest import texts
from tests.ui.test_download_page import finished_record

TRY_PAGE = "views/try_drive.py"


@pytest.fixture
def engine() -> Iterator[FakeEngine]:
    server = FakeEngine(tokens=6, delay_s=0.01)
    yield server
    server.close()


@pytest.fixture
def no_docker_needed(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Docker answers, the stand-in servers' containers run, and removing one is recorded."""
    removed: list[str] = []
    monkeypatch.setattr(ui_errors, "docker_problem", lambda: None)
    monkeypatch.setattr(tryout.docker_containers, "container_running", lambda **kwargs: True)
    monkeypatch.setattr(tryout.docker_containers, "remove_container",
                        lambda *, container, client=None: removed.append(container))  # fmt: skip
    yield removed
    tryout.SERVERS._servers.clear()
    tryout.SERVERS._starts.clear()


def running(record_id: str, engine: FakeEngine, name: str = "c1") -> None:
    tryout.SERVERS._servers[record_id] = RunningServer(
        container_id=name, container_name=name, image="ezrunner/tiny-llama:0123456789ab-vllm",
        endpoint=engine.endpoint, served_model_name="tiny-org/tiny-llama", port=engine.port,
    )  # fmt: skip


def try_page(app: AppTest, record_id: str | None = None) -> AppTest:
    if record_id:
        app.query_params["record"] = record_id
    app.switch_page(TRY_PAGE).run()
    assert not app.exception, app.exception
    return app


def test_with_no_pack_it_says_to_build_one(app: AppTest, no_docker_needed: list[str]) -> None:
    try_page(app)
    assert "No finished pack yet" in texts(app)


def test_without_docker_it_says_so(app: AppTest, monkeypatch: pytest.MonkeyPatch) -> None:
    down = DockerUnavailableError("Docker is not running.", hint="Start it.")
    monkeypatch.setattr(ui_errors, "docker_problem", lambda: down)
    try_page(app)
    assert "Docker is not running." in texts(app)


def test_a_stopped_pack_offers_start_and_no_chat(app: AppTest, data_home: Path, no_docker_needed: list[str]) -> None:
    record_id = finished_record(data_home / "exports")
    try_page(app, record_id)
    assert app.button(key="try_start_a")
    assert "Not running" in texts(app)
    assert app.chat_input(key="try_input").disabled


def test_chat_with_a_running_pack_keeps_the_answer_and_its_figures(
    app: AppTest, data_home: Path, engine: FakeEngine, no_docker_needed: list[str]
) -> None:
    record_id = finished_record(data_home / "exports")
    running(record_id, engine)
    try_page(app, record_id)
    assert f"Running at {engine.endpoint}" in texts(app)
    app.chat_input(key="try_input").set_value("Hello there").run()
    assert not app.exception, app.exception
    conversation = app.session_state["wizard"].try_messages[record_id]
    assert [m["role"] for m in conversation] == ["user", "assistant"]
    assert conversation[1]["content"] == "t0 t1 t2 t3 t4 t5 "
    shown = texts(app)
    assert "Hello there" in shown and "t0 t1 t2 t3 t4 t5" in shown
    assert "First token" in shown and "12 tokens" in shown  # the usage chunk's count
    assert engine.bodies[0]["temperature"] == 0.7  # a chat samples by default
    # the next turn carries the conversation, at the temperature now set
    app.number_input(key="try_temperature").set_value(0.0).run()
    app.chat_input(key="try_input").set_value("And again").run()
    assert [m["content"] for m in engine.bodies[1]["messages"]] == ["Hello there", "t0 t1 t2 t3 t4 t5 ", "And again"]
    assert engine.bodies[1]["temperature"] == 0.0


def test_an_answer_without_visible_text_says_so(app: AppTest, data_home: Path, no_docker_needed: list[str]) -> None:
    silent = FakeEngine(tokens=3, delay_s=0.01, visible=False)
    try:
        record_id = finished_record(data_home / "exports")
        running(record_id, silent)
        try_page(app, record_id)
        app.chat_input(key="try_input").set_value("Hello there").run()
        assert not app.exception, app.exception
    finally:
        silent.close()
    conversation = app.session_state["wizard"].try_messages[record_id]
    assert conversation[1]["content"] == "" and conversation[1]["error"] is None
    assert "The answer was 6 tokens with no visible text" in texts(app)


def test_stop_removes_the_server(app: AppTest, data_home: Path, engine: FakeEngine,
                                 no_docker_needed: list[str]) -> None:  # fmt: skip
    record_id = finished_record(data_home / "exports")
    running(record_id, engine)
    try_page(app, record_id)
    app.button(key="try_stop_a").click().run()
    assert no_docker_needed == ["c1"]
    assert tryout.SERVERS.server(record_id) is None
    assert app.button(key="try_start_a")


def test_compare_sends_one_prompt_to_both_and_shows_each_answer(
    app: AppTest, data_home: Path, engine: FakeEngine, no_docker_needed: list[str]
) -> None:
    first = finished_record(data_home / "a")
    second = finished_record(data_home / "b")
    running(first, engine, "c1")
    running(second, engine, "c2")
    try_page(app, first)
    app.session_state["try_mode"] = "compare"
    app.run()
    assert not app.exception, app.exception
    verdict = texts(app)
    assert "they answer side by side" in verdict or "each answers in turn" in verdict
    app.text_area(key="try_prompt").set_value("Same question").run()
    app.button(key="try_send_both").click().run()
    assert not app.exception, app.exception
    comparison = app.session_state["wizard"].try_comparison
    final = comparison.wait(30)
    assert [s.state for s in final.sides] == ["done", "done"]
    assert {s.record_id for s in final.sides} == {first, second}
    assert [b["messages"] for b in engine.bodies] == [[{"role": "user", "content": "Same question"}]] * 2
    assert [b["temperature"] for b in engine.bodies] == [0.0, 0.0]  # greedy by default: a fair comparison
    app.run()
    shown = texts(app)
    assert shown.count("First token") >= 2


def test_history_and_download_lead_to_the_pack_on_the_try_page(
    app: AppTest, data_home: Path, no_docker_needed: list[str]
) -> None:
    record_id = finished_record(data_home / "exports")
    app.switch_page("views/history.py").run()
    app.button(key=f"try_{record_id}").click().run()
    assert not app.exception, app.exception
    assert app.title[0].value == "Try it"
    assert app.selectbox(key="try_record").value == record_id
    app.query_params["record"] = record_id
    app.switch_page("views/download.py").run()
    app.button(key="try_it").click().run()
    assert app.title[0].value == "Try it"


def test_the_page_reads_in_chinese(app: AppTest, data_home: Path, no_docker_needed: list[str]) -> None:
    finished_record(data_home / "exports")
    app.session_state["language"] = "zh"
    try_page(app)
    assert app.title[0].value == "试运行"
