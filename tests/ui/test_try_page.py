"""The Try page without Docker: a pack's server (here a local OpenAI-style engine standing in for the container)
chatted with, answers and their figures kept in the conversation, two packs compared, Stop, the ways in from
Download and History, and what it says with no pack or no Docker."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from core import tryout
from core.errors import DockerUnavailableError
from core.run import RunningServer
from core.wizard_state import SessionSnapshot, load_session
from ezrunner_ui import ui_errors
from ezrunner_ui.state import WizardState, restore_try_page
from tests.fixtures.fake_engine import FakeEngine
from tests.ui.conftest import texts
from tests.ui.test_download_page import finished_record
from tests.ui.test_session_restore import refreshed

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


def on_try_page(app: AppTest, data_home: Path, engine: FakeEngine) -> str:
    """A finished pack whose server (``engine``) runs, shown on the Try page; its record id."""
    record_id = finished_record(data_home / "exports")
    running(record_id, engine)
    try_page(app, record_id)
    return record_id


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
    record_id = on_try_page(app, data_home, engine)
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
        record_id = on_try_page(app, data_home, silent)
        app.chat_input(key="try_input").set_value("Hello there").run()
        assert not app.exception, app.exception
    finally:
        silent.close()
    conversation = app.session_state["wizard"].try_messages[record_id]
    assert conversation[1]["content"] == "" and conversation[1]["error"] is None
    assert "The answer was 6 tokens with no visible text" in texts(app)


def test_stop_removes_the_server(app: AppTest, data_home: Path, engine: FakeEngine,
                                 no_docker_needed: list[str]) -> None:  # fmt: skip
    record_id = on_try_page(app, data_home, engine)
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


# ACROSS A REFRESH


def test_the_conversation_and_settings_survive_a_refresh(
    app: AppTest, data_home: Path, engine: FakeEngine, no_docker_needed: list[str]
) -> None:
    record_id = on_try_page(app, data_home, engine)
    app.number_input(key="try_temperature").set_value(1.2).run()
    app.number_input(key="try_max_tokens").set_value(48).run()
    app.chat_input(key="try_input").set_value("Hello there").run()
    assert not app.exception, app.exception

    again = refreshed(app.query_params["tab"], page=TRY_PAGE)  # the URL keeps only ?tab=
    state = again.session_state["wizard"]
    assert [m["content"] for m in state.try_messages[record_id]] == ["Hello there", "t0 t1 t2 t3 t4 t5 "]
    assert (state.try_temperature, state.try_max_tokens) == (1.2, 48)
    assert again.number_input(key="try_temperature").value == 1.2
    shown = texts(again)
    assert "Hello there" in shown and "t0 t1 t2 t3 t4 t5" in shown and "First token" in shown
    again.chat_input(key="try_input").set_value("And again").run()  # the conversation goes on where it was
    assert [m["content"] for m in engine.bodies[-1]["messages"]] == ["Hello there", "t0 t1 t2 t3 t4 t5 ", "And again"]


def test_an_answer_streaming_at_the_refresh_is_followed_to_its_end(
    app: AppTest, data_home: Path, no_docker_needed: list[str]
) -> None:
    held = threading.Event()
    slow = FakeEngine(tokens=4, delay_s=0.01, gate=held)
    try:
        record_id = on_try_page(app, data_home, slow)
        tab = app.query_params["tab"]
        # the tab goes away while its answer streams (held by the engine): Streamlit stops that session's run,
        # as it does when a browser drops the page
        with pytest.raises(RuntimeError, match="timed out"):
            app.chat_input(key="try_input").set_value("Hello there").run(timeout=3)
        chat_id = (load_session(tab_id=tab, data_dir=data_home) or SessionSnapshot()).try_page.get("chat_id")
        assert chat_id and tryout.LIVE.chats.get(chat_id) is not None
        threading.Timer(1.0, held.set).start()  # the answer comes while the refreshed tab follows it
        again = refreshed(tab, page=TRY_PAGE)
    finally:
        held.set()
        slow.close()
    state = again.session_state["wizard"]
    assert state.try_chat is None  # ended, and kept
    assert [m["content"] for m in state.try_messages[record_id]] == ["Hello there", "t0 t1 t2 t3 "]
    assert len(slow.bodies) == 1  # followed, not asked again
    assert "t0 t1 t2 t3" in texts(again)


@pytest.mark.parametrize("junk", [
    None, "text", [], {"mode": "dance", "pair": ["a"], "max_tokens": -3, "temperature": "hot",
                       "compare_temperature": True, "prompt": 7, "bench": [0, 1, 2], "chat_id": 5,
                       "messages": {"r1": [{"role": "system", "content": "x"}, {"role": "user"}, "hello",
                                           {"role": "user", "content": "kept", "figures": "no"},
                                           {"role": "assistant", "content": "ok", "extra": 1,
                                            "figures": {"ttft_s": "x", "output_tokens": 3, "duration_s": 1.0}}],
                                    "r2": "not a list"}},
])  # fmt: skip
def test_a_broken_try_page_memory_keeps_the_defaults(junk: object) -> None:
    state = WizardState()
    restore_try_page(state, junk)
    fresh = WizardState()
    assert (state.try_mode, state.try_pair, state.try_max_tokens, state.try_temperature, state.try_prompt) == (
        fresh.try_mode, fresh.try_pair, fresh.try_max_tokens, fresh.try_temperature, fresh.try_prompt)
    assert state.try_compare_temperature == 0.0 and state.try_chat is None
    assert state.try_bench_requests == fresh.try_bench_requests and state.try_bench_job is None
    expected = {"r1": [{"role": "user", "content": "kept", "figures": None},
                       {"role": "assistant", "content": "ok", "figures": None}]} if isinstance(junk, dict) else {}
    assert state.try_messages == expected  # well-formed messages only, their own keys only, broken figures dropped


def test_a_question_whose_answer_was_lost_is_marked_and_not_sent_again() -> None:
    """The wizard restarted while an answer streamed: the restored question shows as stopped, and the next
    question goes without it (roles must alternate for strict chat templates)."""
    state = WizardState()
    restore_try_page(state, {"messages": {"r1": [{"role": "user", "content": "lost"}]}, "chat_id": "gone",
                                          "chat_record": "r1"})  # fmt: skip
    assert state.try_chat is None
    assert state.try_messages["r1"][-1] == {"role": "assistant", "content": "", "stopped": True}
    assert tryout.turns_to_send(state.try_messages["r1"], "again") == [{"role": "user", "content": "again"}]


def test_a_server_on_a_one_off_key_says_so(app: AppTest, data_home: Path, engine: FakeEngine,
                                          no_docker_needed: list[str]) -> None:  # fmt: skip
    record_id = finished_record(data_home / "exports")
    tryout.SERVERS._servers[record_id] = RunningServer(
        container_id="c1", container_name="c1", image="ezrunner/tiny-llama:0123456789ab-vllm", endpoint=engine.endpoint,
        served_model_name="tiny-org/tiny-llama", port=engine.port, api_key_env="MY_KEY", api_key="one-off-9d2",
        api_key_one_off=True,
    )  # fmt: skip
    try_page(app, record_id)
    shown = texts(app)
    assert "MY_KEY is not set where the wizard runs" in shown.replace("`", "")
    assert "one-off-9d2" not in shown
    app.chat_input(key="try_input").set_value("Hello there").run()
    assert engine.authorizations == ["Bearer one-off-9d2"]  # the chat goes with the key the container got
