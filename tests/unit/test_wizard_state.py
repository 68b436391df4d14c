"""core/wizard_state.py: what a model or engine change resets, revisions per model, the tab's session file."""

from __future__ import annotations

import json
from pathlib import Path

from core.hardware import describe_target
from core.planning import Options
from core.wizard_state import (
    SessionSnapshot,
    change_options,
    load_session,
    new_tab_id,
    options_for_model,
    options_from_dict,
    options_to_dict,
    revision_for_lookup,
    save_session,
    sessions_dir,
    target_from_dict,
    target_to_dict,
)


def test_an_engine_change_drops_the_old_engines_base_image_and_llamacpp_options() -> None:
    old = Options(engine="llama.cpp", base_image="ezrunner/llama.cpp-cpu:b1", quant="Q8_0", parallel=2, port=9000)
    change = change_options(old=old, new=Options(**{**options_to_dict(old), "engine": "vllm"}))
    assert change.options == Options(engine="vllm", port=9000)
    assert set(change.reset) == {"base_image", "quant", "parallel"}
    # to llama.cpp or automatic: the llama.cpp options stay, the image does not
    auto = change_options(old=old, new=Options(**{**options_to_dict(old), "engine": "auto"}))
    assert (auto.options.quant, auto.options.base_image, auto.reset) == ("Q8_0", None, ("base_image",))
    # a base image set in the same change is the user's choice for the new engine
    both = change_options(old=old, new=Options(engine="vllm", base_image="mirror/vllm:1"))
    assert both.options.base_image == "mirror/vllm:1" and "base_image" not in both.reset
    # no engine change: nothing is reset
    same = Options(**{**options_to_dict(old), "port": 9001})
    assert change_options(old=old, new=same) == change_options(old=same, new=same)
    assert change_options(old=old, new=same).reset == ()


def test_a_new_model_keeps_port_engine_and_cache_settings_only() -> None:
    old = Options(engine="llama.cpp", base_image="x", quant="Q4_K_M", max_model_len=1024, kv_cache_type="q8_0",
                  tensor_parallel_size=None, port=9000)  # fmt: skip
    change = options_for_model(options=old)
    assert change.options == Options(engine="llama.cpp", kv_cache_type="q8_0", port=9000)
    assert set(change.reset) == {"base_image", "quant", "max_model_len"}


def test_a_revision_typed_for_another_model_is_dropped() -> None:
    assert revision_for_lookup(text="hf:b/c", typed="v1", previous_text="hf:a/b", previous_revision="v1") == ("", True)
    # a revision typed now for the new model is kept
    assert revision_for_lookup(text="hf:b/c", typed="v2", previous_text="hf:a/b", previous_revision="v1") == (
        "v2", False)  # fmt: skip
    # the same model looked up again keeps it; the first lookup has no previous model
    assert revision_for_lookup(text="hf:a/b", typed="v1", previous_text="hf:a/b", previous_revision="v1") == (
        "v1", False)  # fmt: skip
    assert revision_for_lookup(text="hf:a/b", typed="v1", previous_text="", previous_revision="") == ("v1", False)


def test_the_session_file_round_trips(tmp_path: Path) -> None:
    target = describe_target(gpu_preset="a100-80gb", gpu_count=2, driver_version="580.65.06", ram_gib=64)
    snapshot = SessionSnapshot(
        model_text="hf:org/m", model_commit="a" * 40, revision="main", target=target_to_dict(target),
        options=options_to_dict(Options(engine="llama.cpp", quant="Q8_0")), language="zh", job_id="j" * 32,
        build={"compress": True},
    )  # fmt: skip
    tab = new_tab_id()
    path = save_session(tab_id=tab, snapshot=snapshot, data_dir=tmp_path)
    assert path == sessions_dir(data_dir=tmp_path) / f"{tab}.json"
    assert "token" not in json.loads(path.read_text())
    loaded = load_session(tab_id=tab, data_dir=tmp_path)
    assert loaded is not None
    assert loaded.model_text == "hf:org/m" and loaded.language == "zh" and loaded.build == {"compress": True}
    assert target_from_dict(loaded.target or {}) == target
    assert options_from_dict(loaded.options) == Options(engine="llama.cpp", quant="Q8_0")


def test_an_older_session_of_a_tab_never_writes_over_a_newer_ones_file(tmp_path: Path) -> None:
    """A refresh starts a new session (generation + 1) while the old one may still run in the server (its
    browser gone): the old one's later saves are dropped, the new one's land."""
    tab = new_tab_id()
    assert save_session(tab_id=tab, snapshot=SessionSnapshot(model_text="old", generation=1), data_dir=tmp_path)
    assert save_session(tab_id=tab, snapshot=SessionSnapshot(model_text="new", generation=2), data_dir=tmp_path)
    assert save_session(tab_id=tab, snapshot=SessionSnapshot(model_text="stale", generation=1),
                        data_dir=tmp_path) is None  # fmt: skip
    loaded = load_session(tab_id=tab, data_dir=tmp_path)
    assert loaded is not None and (loaded.model_text, loaded.generation) == ("new", 2)


def test_bad_tab_ids_and_broken_files_are_ignored(tmp_path: Path) -> None:
    assert save_session(tab_id="../x", snapshot=SessionSnapshot(), data_dir=tmp_path) is None
    assert load_session(tab_id="../x", data_dir=tmp_path) is None
    assert load_session(tab_id=None, data_dir=tmp_path) is None
    tab = new_tab_id()
    folder = sessions_dir(data_dir=tmp_path)
    folder.mkdir(parents=True)
    (folder / f"{tab}.json").write_text("{not json")
    assert load_session(tab_id=tab, data_dir=tmp_path) is None
    (folder / f"{tab}.json").write_text(json.dumps({"version": 999}))
    assert load_session(tab_id=tab, data_dir=tmp_path) is None
