"""The frame around every page: navigation, step indicator, language switch."""

from __future__ import annotations

from streamlit.testing.v1 import AppTest

from tests.ui.conftest import texts


def test_first_page_is_the_model_step(app: AppTest) -> None:
    assert app.title[0].value == "Choose a model"
    labels = [link.label for link in app.page_link]
    assert labels[:5] == ["**1. Model**", "2. Hardware", "3. Plan", "4. Build", "5. Download"]


def test_language_switch_translates_every_page(app: AppTest) -> None:
    app.selectbox(key="lang").set_value("zh").run()
    assert not app.exception
    assert app.title[0].value == "选择模型"
    assert app.button(key="search_button").label == "搜索"
    for page, title in [
        ("views/hardware.py", "目标硬件"),
        ("views/plan.py", "方案"),
        ("views/build.py", "构建归档"),
        ("views/download.py", "下载"),
        ("views/history.py", "历史记录"),
    ]:
        app.switch_page(page).run()
        assert not app.exception
        assert app.title[0].value == title
        assert app.selectbox(key="lang").value == "zh"  # the choice survives page switches
        assert app.session_state["language"] == "zh"
    assert "Choose" not in texts(app)
