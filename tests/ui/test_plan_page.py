"""Step 3: the plan, its memory chart, warnings with fixes, the Dockerfile and the context zip."""

from __future__ import annotations

import io
import json
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from unittest import mock

from streamlit.runtime.memory_media_file_storage import MemoryMediaFileStorage
from streamlit.testing.v1 import AppTest

from core.hardware import describe_target
from tests.ui.conftest import choose, texts


@contextmanager
def kept_downloads() -> Iterator[list[bytes]]:
    """The bytes each st.download_button hands to Streamlit's media storage while the block runs."""
    stored: list[bytes] = []
    original = MemoryMediaFileStorage.load_and_get_id

    def keep(self: MemoryMediaFileStorage, path_or_data: bytes | str, *args: object, **kwargs: object) -> str:
        if isinstance(path_or_data, bytes):
            stored.append(path_or_data)
        return original(self, path_or_data, *args, **kwargs)  # type: ignore[arg-type]

    with mock.patch.object(MemoryMediaFileStorage, "load_and_get_id", keep):
        yield stored


def plan_page(app: AppTest) -> AppTest:
    app.switch_page("views/plan.py").run()
    assert not app.exception, app.exception
    return app


def test_needs_a_model_and_a_target(app: AppTest) -> None:
    plan_page(app)
    assert "The plan needs a model and a target." in texts(app)
    assert [link.label for link in app.page_link][-2:] == ["Choose a model first", "Choose the target hardware"]


def test_plan_for_a_gpu_server(app: AppTest, tiny_model: Path) -> None:
    choose(app, model_dir=tiny_model, target=describe_target(gpu_preset="a100-80gb", gpu_count=2))
    plan_page(app)
    shown = texts(app)
    assert "Engine vLLM" in shown
    assert "Engine vLLM" in "\n".join(m.value for m in app.markdown)  # a reason, in plain words
    dockerfile = app.code[0].value
    assert app.code[0].language == "dockerfile"
    assert "FROM vllm/vllm-openai:" in dockerfile
    assert "docker run" in app.code[-1].value and "--gpus all" in app.code[-1].value
    (chart,) = app.get("vega_lite_chart")
    layers = json.loads(chart.proto.spec)["layer"]
    assert [layer["mark"]["type"] for layer in layers] == ["bar", "tick"]  # stacked use, capacity mark
    assert layers[0]["encoding"]["color"]["sort"] == ["Weights", "KV cache", "Overhead"]
    assert app.download_button(key="download_context").label == "Download the build context (zip)"


def test_kv_pool_is_shown_as_tokens_and_concurrent_sequences(app: AppTest, tiny_model: Path) -> None:
    choose(app, model_dir=tiny_model, target=describe_target(gpu_preset="l4"))
    plan_page(app)
    the_plan = app.session_state["wizard"].current_plan()
    assert the_plan.engine == "vllm" and the_plan.max_concurrency is not None
    metrics = {m.label: m.value for m in app.metric}
    assert metrics["KV cache pool (tokens of context)"] == f"{the_plan.kv_cache_tokens:,}"
    length = f"{the_plan.max_model_len:,}"
    assert metrics[f"Sequences of {length} tokens at once"] == f"{the_plan.max_concurrency:.2f}×"
    # the caption quotes the line vLLM will log, and the reasons carry the same figures
    vllm_line = (
        f"GPU KV cache size: {the_plan.kv_cache_tokens:,} tokens, Maximum concurrency for {length} tokens per "
        f"request: {the_plan.max_concurrency:.2f}x"
    )
    assert any(vllm_line in c.value for c in app.caption)
    assert vllm_line in "\n".join(m.value for m in app.markdown)


def test_kv_pool_in_chinese(app: AppTest, tiny_model: Path) -> None:
    app.selectbox(key="lang").set_value("zh").run()
    choose(app, model_dir=tiny_model, target=describe_target(gpu_preset="l4"))
    plan_page(app)
    the_plan = app.session_state["wizard"].current_plan()
    metrics = {m.label: m.value for m in app.metric}
    assert metrics["KV 缓存池（可容纳的上下文 token 数）"] == f"{the_plan.kv_cache_tokens:,}"
    assert metrics[f"可同时处理的 {the_plan.max_model_len:,} token 序列数"] == f"{the_plan.max_concurrency:.2f}×"
    reasons = "\n".join(m.value for m in app.markdown)
    assert f"KV 缓存池：{the_plan.kv_cache_tokens:,} 个 token" in reasons
    assert "max_num_seqs 256" in reasons  # the batch limits vLLM picks on an L4


def test_no_kv_pool_for_an_engine_that_preallocates_none(app: AppTest, tiny_model: Path) -> None:
    choose(app, model_dir=tiny_model, target=describe_target(cpu_only=True, ram_gib=16))
    plan_page(app)
    assert app.session_state["wizard"].current_plan().max_concurrency is None
    assert not any(m.label.startswith("KV cache pool") for m in app.metric)


def test_advanced_options_replan(app: AppTest, tiny_model: Path) -> None:
    choose(app, model_dir=tiny_model, target=describe_target(gpu_preset="l4"))
    plan_page(app)
    assert app.number_input(key="opt_max_len").value is None
    app.number_input(key="opt_max_len").set_value(1024).run()
    assert not app.exception
    assert app.session_state["wizard"].options.max_model_len == 1024
    assert "1,024" in texts(app)
    app.selectbox(key="opt_engine").set_value("transformers").run()
    assert "FROM vllm" not in app.code[0].value
    assert app.session_state["wizard"].current_plan().engine == "transformers"


def test_too_long_context_is_an_error_not_a_crash(app: AppTest, tiny_model: Path) -> None:
    choose(app, model_dir=tiny_model, target=describe_target(gpu_preset="l4"))
    plan_page(app)
    app.number_input(key="opt_max_len").set_value(100_000).run()
    assert not app.exception
    assert "Invalid option" in app.error[0].value
    assert "100,000" in app.error[0].value


def test_warning_fix_button_changes_the_options(app: AppTest, tiny_model: Path) -> None:
    choose(app, model_dir=tiny_model, target=describe_target(gpu_preset="t4", driver_version="580.65.06"))
    plan_page(app)
    app.selectbox(key="opt_dtype").set_value("bfloat16").run()
    assert any("bfloat16 needs compute capability 8.0" in w.value for w in app.warning)
    fixes = [b for b in app.button if b.key and b.key.startswith("fix_")]
    assert [b.label for b in fixes] == ["Apply: data type float16"]  # the field in words, not its name
    fixes[0].click().run()
    assert not app.exception
    assert app.session_state["wizard"].options.dtype == "float16"
    assert app.selectbox(key="opt_dtype").value == "float16"
    assert not any("bfloat16 needs compute capability" in w.value for w in app.warning)


def test_reasons_are_translated(app: AppTest, tiny_model: Path) -> None:
    app.selectbox(key="lang").set_value("zh").run()
    choose(app, model_dir=tiny_model, target=describe_target(cpu_only=True, ram_gib=32))
    plan_page(app)
    shown = texts(app)
    assert "推理引擎 transformers serve：目标没有 GPU" in shown
    assert "仅 CPU" in shown  # the target line too, not only the notes
    assert "在 CPU 上，7B 模型每秒只能生成几个 token" in shown
    assert app.title[0].value == "方案"


def test_context_zip_holds_the_dockerfile_and_a_readme(app: AppTest, tiny_model: Path) -> None:
    choose(app, model_dir=tiny_model, target=describe_target(gpu_preset="a100-80gb"))
    with kept_downloads() as stored:
        plan_page(app)
    archives = [data for data in stored if data.startswith(b"PK")]
    assert len(archives) == 1
    with zipfile.ZipFile(io.BytesIO(archives[0])) as archive:
        assert sorted(archive.namelist()) == ["Dockerfile", "README.md"]
        readme = archive.read("README.md").decode()
        assert archive.read("Dockerfile").decode().strip() == app.code[0].value.strip()
    assert "layers/00-meta/config.json" in readme
    assert "model.safetensors" in readme
    assert len(archives[0]) < 64 * 1024  # the weights are not in it


def test_hand_edited_dockerfile_is_kept_for_this_plan_only(app: AppTest, tiny_model: Path) -> None:
    choose(app, model_dir=tiny_model, target=describe_target(cpu_only=True, ram_gib=16))
    plan_page(app)
    generated = app.code[0].value
    app.text_area(key="dockerfile_edit").set_value(generated + 'LABEL com.example.team="platform"\n')
    with kept_downloads() as stored:
        app.button(key="dockerfile_use").click().run()
    assert not app.exception
    state = app.session_state["wizard"]
    assert state.edited_dockerfile.endswith('LABEL com.example.team="platform"\n')
    assert "edited this Dockerfile by hand" in texts(app)
    assert app.code[0].value.strip() == state.edited_dockerfile.strip()  # what the build uses is what is shown
    # the zip for building elsewhere carries the edit too
    (archive,) = [data for data in stored if data.startswith(b"PK")]
    with zipfile.ZipFile(io.BytesIO(archive)) as zipped:
        assert zipped.read("Dockerfile").decode().endswith('"platform"\n')
    # a changed plan renders another Dockerfile: the edit was made for the old one and is dropped
    app.number_input(key="opt_port").set_value(9001).run()
    assert app.session_state["wizard"].edited_dockerfile is None
    assert "edited this Dockerfile by hand" not in texts(app)
    assert "EXPOSE 9001" in app.code[0].value



def test_replicas_are_an_option_and_shown_as_tp_times_dp(app: AppTest, tiny_model: Path) -> None:
    choose(app, model_dir=tiny_model, target=describe_target(gpu_preset="l4", gpu_count=4))
    plan_page(app)
    the_plan = app.session_state["wizard"].current_plan()
    assert (the_plan.tensor_parallel_size, the_plan.data_parallel_size) == (1, 4)  # every GPU serves
    assert any(m.value == "1 × 4" for m in app.metric)
    app.number_input(key="opt_dp").set_value(2).run()
    assert not app.exception
    assert app.session_state["wizard"].options.data_parallel_size == 2
    the_plan = app.session_state["wizard"].current_plan()
    assert the_plan.data_parallel_size == 2 and "--data-parallel-size" in app.code[-1].value + app.code[0].value
    assert app.number_input(key="opt_nodes").value == 1
