"""History: every pack, re-download, re-open the plan, delete with its files."""

from __future__ import annotations

from pathlib import Path

from streamlit.testing.v1 import AppTest

from core import hubs
from core.hardware import describe_target, target_summary
from core.history import History
from core.plan import Options, plan, plan_to_dict
from core.refs import parse_ref
from tests.fixtures.fake_hub import FakeHub
from tests.ui.conftest import texts
from tests.ui.test_download_page import finished_record


def history_page(app: AppTest) -> AppTest:
    app.switch_page("views/history.py").run()
    assert not app.exception, app.exception
    return app


def test_empty_history(app: AppTest) -> None:
    history_page(app)
    assert "No packs yet." in texts(app)


def test_record_details_and_download_again(app: AppTest, data_home: Path) -> None:
    record_id = finished_record(data_home / "exports")
    history_page(app)
    shown = texts(app)
    assert "tiny-org/tiny-llama" in shown
    assert "2 × NVIDIA A100 80GB" in shown
    assert "FROM vllm/vllm-openai:v0.0.0" in [code.value.strip() for code in app.code]
    assert [e.label for e in app.expander] == ["Dockerfile", "Log"]
    app.button(key=f"download_{record_id}").click().run()
    assert not app.exception
    assert app.title[0].value == "Download"
    assert app.session_state["wizard"].record_id == record_id


def test_delete_asks_first_then_removes_the_files(app: AppTest, data_home: Path) -> None:
    record_id = finished_record(data_home / "exports")
    record = History().get(record_id)
    assert record is not None and record.archive
    archive = Path(record.archive)
    history_page(app)
    app.button(key=f"delete_{record_id}").click().run()
    assert "Delete this record and its files" in texts(app)
    assert archive.exists()
    app.button(key=f"cancel_delete_{record_id}").click().run()
    assert History().get(record_id) is not None
    app.button(key=f"delete_{record_id}").click().run()
    app.button(key=f"confirm_delete_{record_id}").click().run()
    assert not app.exception
    assert History().get(record_id) is None
    assert not archive.exists()
    assert "No packs yet." in texts(app)


def test_open_the_plan_again(app: AppTest, ui_hub: FakeHub, data_home: Path) -> None:
    model = hubs.inspect(ref=parse_ref("hf:tiny-org/tiny-llama"))
    target = describe_target(gpu_preset="l4", gpu_count=2, driver_version="580.65.06")
    the_plan = plan(model=model, target=target, options=Options(max_model_len=1024))
    record_id = History().start(
        model_id=model.repo_id, source="hf", revision="main", model_commit=model.commit,
        target=target_summary(target), plan=plan_to_dict(the_plan), dockerfile="FROM x\n", image_tag="t:1",
    )  # fmt: skip
    history_page(app)
    app.button(key=f"replan_{record_id}").click().run()
    assert not app.exception, app.exception
    assert app.title[0].value == "Plan"
    state = app.session_state["wizard"]
    assert state.model.commit == model.commit
    assert state.target.gpu_count == 2 and state.target.gpus[0].name == "NVIDIA L4"
    assert state.options.max_model_len == 1024
    assert state.current_plan().max_model_len == 1024


def test_bench_figures_appear_with_their_pack(app: AppTest, data_home: Path) -> None:
    from core.history import History

    record_id = finished_record(data_home / "exports")
    History().add_bench_result(record_id, result={
        "requests": 4, "max_tokens": 8, "concurrency": 1, "ttft_s_p50": 0.05, "ttft_s_p95": 0.09,
        "output_tokens_per_s": 123.4, "requests_ok": 4, "requests_failed": 0, "peak_memory_bytes": 50 << 20,
    })  # fmt: skip
    history_page(app)
    assert "Bench runs (1)" in [e.label for e in app.expander]
    table = app.dataframe[0].value
    assert table["Output tokens/s"][0] == "123.4" and table["TTFT p50 / p95"][0] == "0.05 / 0.09 s"
    assert table["OK / failed"][0] == "4 / 0"
