"""core.bench without Docker: prompts files, the streamed-chat client against a local event-stream server (TTFT
to the first content chunk, tokens from the usage chunk or counted), the load's concurrency, percentiles, the
Prometheus counters, Docker's memory figures, bench results kept with a pack's history record (an older history
file gains the table), and the CLI's refusals before anything starts."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from core import errors
from core.bench import (
    load_prompts,
    memory_in_use,
    parse_token_counter,
    percentile,
    send_load,
    stream_chat,
    validate_load,
)
from core.errors import InvalidOptionsError
from core.history import History
from tests.fixtures.fake_engine import FakeEngine

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def engine() -> Iterator[FakeEngine]:
    server = FakeEngine()
    yield server
    server.close()


def _session():
    import requests

    session = requests.Session()
    session.trust_env = False
    return session


# PROMPTS AND FLAGS


def test_the_shipped_prompts_are_packaged_and_not_empty() -> None:
    prompts = load_prompts()
    assert len(prompts) >= 8 and all(p.strip() == p and p for p in prompts)


def test_a_prompts_file_gives_one_prompt_a_line(tmp_path: Path) -> None:
    path = tmp_path / "p.txt"
    path.write_text("first prompt\n\n  second prompt  \r\nthird\n", encoding="utf-8")
    assert load_prompts(path=path) == ("first prompt", "second prompt", "third")


@pytest.mark.parametrize(
    ("data", "why"),
    [(b"", "holds no prompt"), (b"\n  \n\t\n", "holds no prompt"), (b"\x89PNG\r\n\x1a\n\x00\x00", "not text"),
     (b"caf\xe9 au lait\n", "not UTF-8 text")],
)  # fmt: skip
def test_an_empty_or_binary_prompts_file_is_refused_naming_the_flag(tmp_path: Path, data: bytes, why: str) -> None:
    path = tmp_path / "p.txt"
    path.write_bytes(data)
    with pytest.raises(InvalidOptionsError) as raised:
        load_prompts(path=path)
    assert why in str(raised.value) and raised.value.field == errors.PROMPTS


def test_a_missing_prompts_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(InvalidOptionsError) as raised:
        load_prompts(path=tmp_path / "absent.txt")
    assert raised.value.field == errors.PROMPTS and "absent.txt" in str(raised.value)
    with pytest.raises(InvalidOptionsError):
        load_prompts(path=tmp_path)  # a folder


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [({"requests_count": 0}, errors.REQUESTS), ({"concurrency": 0}, errors.CONCURRENCY),
     ({"max_tokens": 0}, errors.MAX_TOKENS), ({"port": 70000}, errors.PORT)],
)  # fmt: skip
def test_a_load_that_cannot_be_sent_names_its_flag(kwargs: dict, field: str) -> None:
    settings = {"requests_count": 4, "concurrency": 1, "max_tokens": 8, "port": None, **kwargs}
    with pytest.raises(InvalidOptionsError) as raised:
        validate_load(**settings)
    assert raised.value.field == field


# THE CLIENT


def test_ttft_is_the_first_content_chunk_and_tokens_come_from_usage(engine: FakeEngine) -> None:
    engine.delay_s = 0.1
    sample = stream_chat(session=_session(), endpoint=engine.endpoint, model="m", prompt="hi", max_tokens=7)
    assert sample.ok, sample.error
    assert sample.ttft_s is not None and 0.1 <= sample.ttft_s < sample.duration_s
    assert sample.output_tokens == 10 and sample.token_source == "usage"  # usage says 2 × 5, not the 5 chunks
    assert sample.text == "t0 t1 t2 t3 t4 "
    assert sample.decode_s >= 0.3
    body = engine.bodies[0]
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
    assert body["max_tokens"] == 7 and body["model"] == "m" and body["messages"][0]["content"] == "hi"


def test_without_usage_the_content_chunks_are_counted() -> None:
    engine = FakeEngine(tokens=4, usage=False)
    try:
        sample = stream_chat(session=_session(), endpoint=engine.endpoint, model="m", prompt="hi", max_tokens=4)
    finally:
        engine.close()
    assert sample.ok and sample.output_tokens == 4 and sample.token_source == "chunks"


def test_an_http_error_or_a_dead_port_is_a_failed_sample() -> None:
    engine = FakeEngine(status=503)
    try:
        sample = stream_chat(session=_session(), endpoint=engine.endpoint, model="m", prompt="hi", max_tokens=4)
    finally:
        engine.close()
    assert not sample.ok and sample.error is not None and "HTTP 503" in sample.error
    dead = stream_chat(session=_session(), endpoint=engine.endpoint, model="m", prompt="hi", max_tokens=4)
    assert not dead.ok and dead.error and "ConnectionError" in dead.error


def test_the_load_keeps_to_its_concurrency_and_cycles_the_prompts(engine: FakeEngine) -> None:
    engine.delay_s = 0.05
    seen: list[int] = []
    samples, wall = send_load(endpoint=engine.endpoint, model="m", prompts=("a", "b", "c"), requests_count=7,
                              concurrency=2, max_tokens=3, on_sample=lambda done, s: seen.append(done))  # fmt: skip
    assert len(samples) == 7 and all(s.ok for s in samples)
    assert engine.most_active == 2
    assert sorted(b["messages"][0]["content"] for b in engine.bodies) == sorted("abcabca")
    assert {b["temperature"] for b in engine.bodies} == {0.0}  # greedy: the same prompts, comparable answers
    assert seen == [1, 2, 3, 4, 5, 6, 7]
    assert wall >= max(s.duration_s for s in samples)


def test_a_cancel_stops_the_load() -> None:
    from core.errors import CancelledError
    from core.events import Cancel

    engine = FakeEngine(tokens=50, delay_s=0.05)
    cancel = Cancel()
    threading.Timer(0.5, cancel.set).start()
    started = time.monotonic()
    try:
        with pytest.raises(CancelledError):
            send_load(endpoint=engine.endpoint, model="m", prompts=("a",), requests_count=10, concurrency=1,
                      max_tokens=50, cancel=cancel)  # fmt: skip
    finally:
        engine.close()
    assert time.monotonic() - started < 2.5  # one request takes 2.5 s: the stream was left at the next chunk


# FIGURES


def test_percentiles_interpolate_between_ranks() -> None:
    values = [0.4, 0.1, 0.3, 0.2]
    assert percentile(values, 50) == pytest.approx(0.25)
    assert percentile(values, 95) == pytest.approx(0.385)
    assert percentile([2.0], 95) == 2.0 and percentile([], 50) is None


def test_the_engine_token_counters_are_read_from_prometheus_text() -> None:
    llama = "# HELP llamacpp:tokens_predicted_total Number of generation tokens processed.\n" \
            "# TYPE llamacpp:tokens_predicted_total counter\nllamacpp:tokens_predicted_total 42\n" \
            "llamacpp:tokens_predicted_seconds_total 1.5\n"  # fmt: skip
    assert parse_token_counter(llama) == (42.0, "llamacpp:tokens_predicted_total")
    vllm = 'vllm:generation_tokens_total{engine="0",model_name="m"} 10.0\n' \
           'vllm:generation_tokens_total{engine="1",model_name="m"} 5.0\n'  # fmt: skip
    assert parse_token_counter(vllm) == (15.0, "vllm:generation_tokens_total")
    assert parse_token_counter("other_metric 3\n") == (None, None)


def test_memory_in_use_leaves_out_the_inactive_page_cache() -> None:
    assert memory_in_use({"usage": 1000, "stats": {"inactive_file": 300}}) == 700  # cgroup v2
    assert memory_in_use({"usage": 1000, "stats": {"total_inactive_file": 100}}) == 900  # cgroup v1
    assert memory_in_use({"usage": 1000, "stats": {}}) == 1000
    assert memory_in_use({}) is None


def test_gpu_memory_is_the_sum_over_gpus_of_the_container_processes(monkeypatch: pytest.MonkeyPatch) -> None:
    import types

    from core.bench import gpu_memory_of

    class NVMLError(Exception):
        pass

    process = types.SimpleNamespace
    devices = {0: [process(pid=11, usedGpuMemory=100), process(pid=99, usedGpuMemory=5000)],
               1: [process(pid=12, usedGpuMemory=250), process(pid=11, usedGpuMemory=None)]}  # fmt: skip
    fake = types.SimpleNamespace(
        NVMLError=NVMLError, nvmlInit=lambda: None, nvmlShutdown=lambda: None,
        nvmlDeviceGetCount=lambda: len(devices), nvmlDeviceGetHandleByIndex=lambda index: index,
        nvmlDeviceGetComputeRunningProcesses=lambda handle: devices[handle],
    )  # fmt: skip
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    assert gpu_memory_of(pids=[11, 12]) == (350, None)  # pid 99 is another container's

    def no_driver() -> None:
        raise NVMLError("Driver Not Loaded")

    monkeypatch.setattr(fake, "nvmlInit", no_driver)
    used, note = gpu_memory_of(pids=[11])
    assert used is None and note is not None and "Driver Not Loaded" in note
    monkeypatch.setitem(sys.modules, "pynvml", None)  # not installed
    used, note = gpu_memory_of(pids=[11])
    assert used is None and note is not None and "nvidia-ml-py" in note


# HISTORY


def test_bench_results_are_kept_with_the_pack_and_an_old_history_gains_the_table(tmp_path: Path) -> None:
    path = tmp_path / "history.sqlite"
    history = History(path)
    record = history.start(model_id="org/m", source="hf", revision="main", model_commit="abc", target={},
                           plan={}, dockerfile="FROM x", image_tag="ezrunner/m:1")  # fmt: skip
    archive = tmp_path / "m.tar"
    history.finish(record, outcome="succeeded", archive=archive)
    with sqlite3.connect(path) as db:  # a history file from before bench results
        db.execute("DROP TABLE bench_results")
    history = History(path)
    assert history.find_pack(archive=archive).id == record  # type: ignore[union-attr]
    assert history.find_pack(image_tag="ezrunner/m:1").id == record  # type: ignore[union-attr]
    assert history.find_pack(archive=tmp_path / "other.tar") is None
    history.add_bench_result(record, result={"target": "m.tar", "output_tokens_per_s": 12.5})
    kept = history.bench_results(record)
    assert len(kept) == 1 and kept[0]["output_tokens_per_s"] == 12.5 and kept[0]["recorded"] > 0
    history.delete(record, files=False)
    assert history.bench_results(record) == []


# THE CLI, BEFORE ANYTHING STARTS


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ezrunner_ui.cli", "bench", *args], capture_output=True, text=True,
                          timeout=120, cwd=REPO)  # fmt: skip


def test_the_cli_refuses_bad_flags_with_the_flag_named(tmp_path: Path) -> None:
    result = _cli("x.tar", "--requests", "0", "--json")
    assert result.returncode == 2
    answer = json.loads(result.stdout)
    assert answer["field"] == errors.REQUESTS and answer["flag"] == "--requests"
    empty = tmp_path / "empty.txt"
    empty.write_text("\n")
    result = _cli("x.tar", "--prompts", str(empty))
    assert result.returncode == 2 and "Error (--prompts)" in result.stderr and "no prompt" in result.stderr
    assert "Traceback" not in result.stderr


def test_the_smoke_check_fails_with_the_container_logs_when_the_chat_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from core import bench as core_bench
    from core.errors import ServerCheckError
    from core.run import RunningServer

    monkeypatch.setattr(core_bench.docker_containers, "container_logs",
                        lambda **kwargs: "loading model\nout of memory: killed")  # fmt: skip
    refusing = FakeEngine(status=500)
    answering = FakeEngine(tokens=3)
    try:
        for engine, ok in ((refusing, False), (answering, True)):
            port = int(engine.endpoint.split(":")[2].split("/")[0])
            server = RunningServer(container_id="c1", container_name="n", image="i", endpoint=engine.endpoint,
                                   served_model_name="m", port=port)  # fmt: skip
            if ok:
                answer = core_bench.check_server(server=server)
                assert answer.text == "t0 t1 t2 " and answer.ttft_s > 0 and answer.output_tokens == 6
                assert engine.bodies[-1]["temperature"] == 0.0  # greedy: a sampled end-of-text cannot fail it
                continue
            with pytest.raises(ServerCheckError) as raised:
                core_bench.check_server(server=server)
            assert "HTTP 500" in str(raised.value) and "out of memory: killed" in raised.value.details
    finally:
        refusing.close()
        answering.close()
