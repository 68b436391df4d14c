import threading

import pytest

from core.errors import CancelledError
from core.events import Event
from core.hubs import _token_for
from core.hubs.assemble import (
    ByteProgress,
    StopDownload,
    architecture_of,
    context_length_of,
    estimate_bytes,
    quantization_of,
    raise_if_cancelled,
)


def test_config_facts_at_top_level() -> None:
    config = {
        "architectures": ["LlamaForCausalLM"],
        "max_position_embeddings": 131072,
        "quantization_config": {"quant_method": "fp8"},
    }
    assert architecture_of(config) == "LlamaForCausalLM"
    assert context_length_of(config) == 131072
    assert quantization_of(config) == {"quant_method": "fp8"}


def test_config_facts_nested_under_text_config() -> None:
    config = {
        "architectures": ["Gemma3ForConditionalGeneration"],
        "text_config": {"max_position_embeddings": 32768, "quantization_config": {"quant_method": "awq"}},
        "vision_config": {"max_position_embeddings": 999},
    }
    assert context_length_of(config) == 32768
    assert quantization_of(config) == {"quant_method": "awq"}


def test_missing_config_facts_are_none() -> None:
    assert (architecture_of({}), context_length_of({}), quantization_of({})) == (None, None, None)
    assert context_length_of({"n_positions": 1024}) == 1024


def test_estimate_bytes_from_parameter_counts() -> None:
    assert estimate_bytes({"BF16": 1000, "F32": 10, "U8": 4}) == 2044
    assert estimate_bytes({"F4": 8}) == 4
    assert estimate_bytes({"NEWTYPE": 1}) is None
    assert estimate_bytes({}) is None


def test_progress_is_monotonic_capped_and_thread_safe() -> None:
    events: list[Event] = []
    progress = ByteProgress(on_event=events.append, total=1000, cancel=None)
    progress.add(300, file="a")
    progress.add(-300, file="a")  # a restarted file rolls back: not shown
    progress.add(200, file="a")  # still below what was shown
    progress.add(500, file="b")
    threads = [threading.Thread(target=progress.add, args=(100,)) for _ in range(10)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    progress.finish()
    dones = [e.done for e in events]
    assert dones == sorted(dones) and len(set(dones)) == len(dones)
    assert dones[0] == 300 and dones[-1] == 1000
    assert all(e.stage == "download" and e.unit == "B" and e.total == 1000 for e in events)


def test_progress_stops_the_client_when_cancelled() -> None:
    cancel = threading.Event()
    progress = ByteProgress(on_event=lambda e: None, total=10, cancel=cancel)
    progress.add(1)
    cancel.set()
    with pytest.raises(StopDownload):
        progress.add(1)
    with pytest.raises(CancelledError, match="again to resume"):
        raise_if_cancelled(cancel)


@pytest.mark.parametrize(
    ("source", "token", "explicit", "sent"),
    [
        ("hf", "hf_abc", True, "hf_abc"),
        ("ms", "anything", True, "anything"),  # the user named the hub
        ("ms", "hf_abc", False, None),  # a bare org/name never leaks an HF token to ModelScope
        ("hf", "hf_abc", False, "hf_abc"),
        ("ms", "ms-abc", False, "ms-abc"),
        ("hf", "ms-abc", False, None),
        ("local", "hf_abc", True, None),
        ("hf", None, True, None),
    ],
)
def test_tokens_only_go_to_their_hub(source: str, token: str | None, explicit: bool, sent: str | None) -> None:
    assert _token_for(source, token, explicit=explicit) == sent  # type: ignore[arg-type]
