"""core.tryout without Docker: what a pack holds in memory (planned or measured), whether two fit side by side,
a chat streamed from a local engine (its text readable while it grows, its figures, stop, failure), a comparison
of two running servers answering at once, and the refusals of a record that cannot be tried."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from core.errors import TargetNotFoundError
from core.hardware import FreeMemory
from core.history import PackRecord
from core.run import RunningServer
from core.tryout import (
    GPU_SERVER_HOST_RAM_BYTES,
    RAM_HEADROOM_BYTES,
    ChatRun,
    Comparison,
    MemoryNeed,
    TryServers,
    fit_side_by_side,
    memory_need,
    target_of,
    turns_to_send,
)
from tests.fixtures.fake_engine import FakeEngine

GiB = 1 << 30


def record(*, record_id: str = "a" * 32, plan: dict | None = None, outcome: str = "succeeded",
           image_tag: str | None = None, archive: str | None = None) -> PackRecord:  # fmt: skip
    return PackRecord(
        id=record_id, started=0.0, finished=1.0, model_id="tiny-org/tiny-llama", source="hf", revision="main",
        model_commit="0" * 40, target={}, plan=plan or {}, dockerfile="", image_tag=image_tag, image_id=None,
        archive=archive, parts=(), size=None, sha256=None, run_command=None, outcome=outcome, error=None, log=None,
    )  # fmt: skip


def server_on(engine: FakeEngine, name: str = "c1") -> RunningServer:
    return RunningServer(container_id=name, container_name=name, image="img", endpoint=engine.endpoint,
                         served_model_name="tiny-org/tiny-llama", port=engine.port)  # fmt: skip


@pytest.fixture
def slow_engine() -> Iterator[FakeEngine]:
    engine = FakeEngine(tokens=12, delay_s=0.05)
    yield engine
    engine.close()


# MEMORY


def test_a_cpu_pack_needs_its_weights_and_one_full_context_of_cache() -> None:
    need = memory_need(record=record(plan={"device": "cpu", "engine": "transformers", "weights_bytes": 3 * GiB,
                                           "kv_cache_bytes_per_token": 1024, "max_model_len": 4096}))  # fmt: skip
    assert need == MemoryNeed(ram_bytes=3 * GiB + 4 * 1024 * 1024 + GPU_SERVER_HOST_RAM_BYTES // 2, gpu_bytes={},
                              measured=False)  # fmt: skip


def test_a_bench_peak_replaces_the_estimate() -> None:
    plan = {"device": "cpu", "weights_bytes": 3 * GiB, "kv_cache_bytes_per_token": 0, "max_model_len": 0}
    need = memory_need(record=record(plan=plan), bench_results=[{"peak_memory_bytes": 5 * GiB},
                                                                {"peak_memory_bytes": 4 * GiB}, {}])  # fmt: skip
    assert need.ram_bytes == 5 * GiB and need.measured


def test_vllm_holds_its_whole_pool_and_other_engines_what_they_use() -> None:
    per_gpu = [{"index": 0, "total_bytes": 20 * GiB, "capacity_bytes": 70 * GiB},
               {"index": 1, "total_bytes": 18 * GiB, "capacity_bytes": 70 * GiB}]  # fmt: skip
    vllm = memory_need(record=record(plan={"device": "cuda", "engine": "vllm", "per_gpu": per_gpu}))
    llama = memory_need(record=record(plan={"device": "cuda", "engine": "llama.cpp", "per_gpu": per_gpu}))
    assert vllm.gpu_bytes == {0: 70 * GiB, 1: 70 * GiB}
    assert llama.gpu_bytes == {0: 20 * GiB, 1: 18 * GiB} and llama.ram_bytes == GPU_SERVER_HOST_RAM_BYTES
    measured = memory_need(record=record(plan={"device": "cuda", "engine": "llama.cpp", "per_gpu": per_gpu[:1]}),
                           bench_results=[{"peak_gpu_memory_bytes": 9 * GiB}])  # fmt: skip
    assert measured.gpu_bytes == {0: 9 * GiB}


def test_two_fit_side_by_side_only_with_room_to_spare() -> None:
    two = [MemoryNeed(ram_bytes=4 * GiB, gpu_bytes={}, measured=True)] * 2
    roomy = FreeMemory(ram_bytes=8 * GiB + RAM_HEADROOM_BYTES, gpu_bytes={})
    assert fit_side_by_side(needs=two, free=roomy).side_by_side
    short = fit_side_by_side(needs=two, free=FreeMemory(ram_bytes=8 * GiB, gpu_bytes={}))
    assert not short.side_by_side and short.ram_needed == 8 * GiB and short.ram_free == 8 * GiB and short.measured
    unknown = fit_side_by_side(needs=two, free=FreeMemory(ram_bytes=None, gpu_bytes={}))
    assert not unknown.side_by_side  # not knowing is not room


def test_a_running_server_of_the_pair_already_holds_its_memory() -> None:
    one, other = MemoryNeed(6 * GiB, {}, False), MemoryNeed(3 * GiB, {}, False)
    free = FreeMemory(ram_bytes=4 * GiB + RAM_HEADROOM_BYTES, gpu_bytes={})  # ``one`` runs, taking 6 of them
    assert fit_side_by_side(needs=[one, other], free=free, running=[one]).side_by_side
    assert not fit_side_by_side(needs=[one, other], free=free).side_by_side


def test_gpu_memory_is_counted_per_card() -> None:
    a = MemoryNeed(GiB, {0: 40 * GiB}, False)
    b = MemoryNeed(GiB, {0: 40 * GiB}, False)
    c = MemoryNeed(GiB, {1: 40 * GiB}, False)
    free = FreeMemory(ram_bytes=64 * GiB, gpu_bytes={0: 79 * GiB, 1: 79 * GiB})
    assert not fit_side_by_side(needs=[a, b], free=free).side_by_side
    assert fit_side_by_side(needs=[a, c], free=free).side_by_side
    verdict = fit_side_by_side(needs=[a, c], free=FreeMemory(ram_bytes=64 * GiB, gpu_bytes={0: 79 * GiB}))
    assert not verdict.side_by_side and (1, 40 * GiB, None) in verdict.gpus  # a GPU this machine lacks


# WHAT CAN BE TRIED


@pytest.mark.parametrize("outcome", ["failed", "cancelled", "running"])
def test_a_pack_that_did_not_succeed_cannot_be_tried(outcome: str) -> None:
    with pytest.raises(TargetNotFoundError, match="no image to try") as caught:
        target_of(record=record(outcome=outcome))
    assert "Build page" in caught.value.hint


def test_a_pack_whose_image_and_archive_are_gone_says_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(TargetNotFoundError, match="gone") as caught:
        target_of(record=record(archive=str(tmp_path / "moved.tar")))
    assert "load.sh" in caught.value.hint


def test_an_archive_on_disk_is_what_starts_when_there_is_no_image(tmp_path: Path) -> None:
    archive = tmp_path / "m.tar"
    archive.write_bytes(b"x")
    target = target_of(record=record(archive=str(archive)))
    assert target.archive == archive and target.image is None


# ONE CHAT


def test_a_chat_is_readable_while_it_streams_and_ends_with_its_figures(slow_engine: FakeEngine) -> None:
    run = ChatRun(server=server_on(slow_engine), messages=[{"role": "user", "content": "hi"}], max_tokens=12).start()
    seen: list[str] = []
    while not (snapshot := run.snapshot()).finished:
        seen.append(snapshot.text)
        time.sleep(0.01)
    final = run.snapshot()
    assert final.state == "done" and final.text == "".join(f"t{i} " for i in range(12))
    partial = [text for text in seen if text and text != final.text]
    assert partial and all(final.text.startswith(text) for text in partial)  # it grew, in order
    assert final.figures is not None
    assert final.figures.output_tokens == 24  # the usage chunk's count (the fake engine doubles it)
    assert 0 < final.figures.ttft_s < final.figures.duration_s
    assert final.figures.tokens_per_s is not None and final.figures.tokens_per_s > 0
    assert slow_engine.bodies[0]["messages"] == [{"role": "user", "content": "hi"}]
    assert slow_engine.bodies[0]["stream"] is True and slow_engine.bodies[0]["max_tokens"] == 12


def test_the_whole_conversation_is_sent(slow_engine: FakeEngine) -> None:
    turns = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}, {"role": "user", "content": "c"}]
    ChatRun(server=server_on(slow_engine), messages=turns, max_tokens=4).start().wait(10)
    assert slow_engine.bodies[0]["messages"] == turns
    assert "temperature" not in slow_engine.bodies[0]  # no temperature asked: the engine's own default


def test_a_chat_sends_the_temperature_it_was_given(slow_engine: FakeEngine) -> None:
    ChatRun(server=server_on(slow_engine), messages=[{"role": "user", "content": "hi"}], max_tokens=4,
            temperature=1.3).start().wait(10)  # fmt: skip
    assert slow_engine.bodies[0]["temperature"] == 1.3


def test_a_stopped_chat_keeps_what_came_and_says_stopped(slow_engine: FakeEngine) -> None:
    run = ChatRun(server=server_on(slow_engine), messages=[{"role": "user", "content": "hi"}], max_tokens=12).start()
    while not run.snapshot().text:
        time.sleep(0.01)
    run.cancel()
    final = run.wait(10)
    assert final.state == "stopped" and final.text and final.figures is None


def test_a_failing_server_is_a_failed_answer_with_its_reason() -> None:
    engine = FakeEngine(status=500)
    try:
        run = ChatRun(server=server_on(engine), messages=[{"role": "user", "content": "hi"}], max_tokens=4)
        final = run.start().wait(10)
    finally:
        engine.close()
    assert final.state == "failed" and final.error is not None and "HTTP 500" in final.error


def test_a_server_that_is_gone_is_a_failed_answer() -> None:
    engine = FakeEngine()
    server = server_on(engine)
    engine.close()
    final = ChatRun(server=server, messages=[{"role": "user", "content": "hi"}], max_tokens=4).start().wait(20)
    assert final.state == "failed" and "ConnectionError" in (final.error or "")


# TWO AT ONCE


def test_two_running_servers_answer_the_same_prompt_at_once(slow_engine: FakeEngine) -> None:
    servers = TryServers()
    first, second = record(record_id="a" * 32), record(record_id="b" * 32)
    # both already started (the Start buttons): the comparison only sends the prompt
    servers._servers = {first.id: server_on(slow_engine, "c1"), second.id: server_on(slow_engine, "c2")}
    comparison = Comparison(records=[first, second], prompt="same", max_tokens=12, side_by_side=True,
                            servers=servers).start()  # fmt: skip
    final = comparison.wait(30)
    assert final.finished and [s.state for s in final.sides] == ["done", "done"]
    assert all(s.chat is not None and s.chat.figures is not None for s in final.sides)
    assert slow_engine.most_active == 2  # side by side, not one after the other
    assert [b["messages"] for b in slow_engine.bodies] == [[{"role": "user", "content": "same"}]] * 2
    assert [b["temperature"] for b in slow_engine.bodies] == [0.0, 0.0]  # greedy unless asked: a fair comparison


def test_only_answered_questions_go_with_the_next_one() -> None:
    conversation = [
        {"role": "user", "content": "a"}, {"role": "assistant", "content": "A", "figures": {}},
        {"role": "user", "content": "failed"}, {"role": "assistant", "content": "", "error": "HTTP 500"},
        {"role": "user", "content": "cut"},  # its answer never came
        {"role": "user", "content": "b"}, {"role": "assistant", "content": "B", "stopped": True},
        {"role": "user", "content": "empty"}, {"role": "assistant", "content": ""},
    ]  # fmt: skip
    sent = turns_to_send(conversation, "c")
    assert sent == [{"role": "user", "content": "a"}, {"role": "assistant", "content": "A"},
                    {"role": "user", "content": "b"}, {"role": "assistant", "content": "B"},
                    {"role": "user", "content": "c"}]  # fmt: skip
    assert [m["role"] for m in sent] == ["user", "assistant"] * 2 + ["user"]
