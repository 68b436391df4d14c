"""The wizard in a real browser (Debian's chromium) as a returning user meets it: a refresh on every page keeps
the model, target, plan and language; a model or engine change never carries a revision or base image along;
a fix button turns a plan that does not fit into one that does; Enter searches; the Build page offers the
locally built offline base image; and no request of the browser ever leaves 127.0.0.1.

Screenshots of each page in both languages land in tests/e2e/artifacts/<test>/ (git-ignored)."""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from playwright.sync_api import Page, expect

from core.hardware import Target, describe_target
from core.planning import Options
from core.wizard_state import SessionSnapshot, new_tab_id, options_to_dict, save_session, target_to_dict
from ezrunner_ui.i18n import catalog
from tests.e2e.browser import Screenshots, by_key, wait_for_app_loaded, wait_for_app_run
from tests.e2e.test_wizard_flow import choose_option, click
from tests.e2e.ui_server import UiServer
from tests.fixtures.hub_plugin import HF_SINGLE

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
EN, ZH = catalog("en"), catalog("zh")
PAGES = ("", "hardware", "plan", "build", "download")  # url paths; "" is the model page
_TAB = re.compile(r"[?&]tab=([0-9a-f]{16})")


def open_page(page: Page, server: UiServer, path: str = "", *, tab: str | None = None) -> None:
    page.goto(f"{server.url}/{path}" + (f"?tab={tab}" if tab else ""))
    wait_for_app_loaded(page)
    wait_for_app_run(page)


def reload(page: Page) -> None:
    page.reload()
    wait_for_app_loaded(page)
    wait_for_app_run(page)


def tab_of(page: Page) -> str:
    found = _TAB.search(page.url)
    assert found, f"the wizard did not put its tab in the URL: {page.url}"
    return found.group(1)


def expect_title(page: Page, text: str) -> None:
    expect(page.get_by_test_id("stHeading").filter(has_text=text).first).to_be_visible()


def seeded_tab(home: Path, *, model_dir: Path, target: Target, options: Options | None = None) -> str:
    """A tab whose session file already holds a model and a target (what steps 1 and 2 would leave)."""
    tab = new_tab_id()
    snapshot = SessionSnapshot(model_text=str(model_dir), target=target_to_dict(target),
                               options=options_to_dict(options or Options()), language="en")  # fmt: skip
    assert save_session(tab_id=tab, snapshot=snapshot, data_dir=home) is not None
    return tab


def assert_loopback_only(urls: list[str]) -> None:
    hosts = {urlsplit(url).hostname for url in urls if urlsplit(url).scheme in ("http", "https", "ws", "wss")}
    assert urls, "no request was recorded at all"
    assert hosts == {"127.0.0.1"}, f"the browser asked other hosts: {sorted(h or '?' for h in hosts)}"


@pytest.mark.docker  # the Build page looks for the offline base image in the local engine
def test_refresh_keeps_every_page_and_the_language(
    page: Page, server: UiServer, tiny_model_dir: Path, screenshots: Screenshots, browser_requests: list[str]
) -> None:
    open_page(page, server)
    choose_option(page, "lang", "简体中文")
    expect_title(page, ZH["model.title"])
    tab = tab_of(page)

    # 1. the model, looked up as a local folder
    page.get_by_role("tab", name=ZH["model.tab_direct"]).click()
    by_key(page, "model_ref").locator("input").fill(str(tiny_model_dir))
    click(page, "inspect_button")
    expect(by_key(page, "model_card")).to_be_visible(timeout=60_000)
    screenshots.take("zh-model")
    reload(page)
    assert tab_of(page) == tab
    expect_title(page, ZH["model.title"])  # the language survived
    expect(by_key(page, "model_card")).to_be_visible()  # and the model

    # 2. the target, described
    click(page, "to_hardware")
    by_key(page, "hw_mode").get_by_text(ZH["hardware.mode_describe"], exact=True).click()
    wait_for_app_run(page)
    by_key(page, "hw_cpu_only").get_by_text(ZH["hardware.cpu_only"]).click()
    wait_for_app_run(page)
    ram = by_key(page, "hw_ram").locator("input")
    ram.fill("16")
    ram.press("Enter")
    wait_for_app_run(page)
    click(page, "use_described")
    used = page.get_by_test_id("stAlertContentSuccess").filter(has_text="16.0 GiB")
    expect(used).to_be_visible()
    screenshots.take("zh-hardware")
    reload(page)
    expect(used).to_be_visible()
    assert "/hardware" in page.url

    # 3. the plan
    click(page, "to_plan")
    expect_title(page, ZH["plan.title"])
    dockerfile = page.get_by_test_id("stCode").first
    expect(dockerfile).to_contain_text("FROM ")
    before = dockerfile.inner_text()
    screenshots.take("zh-plan")
    reload(page)
    expect_title(page, ZH["plan.title"])
    expect(page.get_by_test_id("stCode").first).to_have_text(before)

    # 4. the build page: the pinned CPU image is not here, the locally built offline one is offered
    click(page, "to_build")
    expect_title(page, ZH["build.title"])
    offer = by_key(page, "use_offline_image")
    expect(offer).to_be_visible()
    screenshots.take("zh-build")
    reload(page)
    expect(by_key(page, "use_offline_image")).to_be_visible()
    click(page, "use_offline_image")
    expect(by_key(page, "use_offline_image")).to_have_count(0)
    expect(by_key(page, "start_build").locator("button")).to_be_enabled()

    # 5. every page once more in English, after a refresh each
    choose_option(page, "lang", "English")
    for path in PAGES:
        open_page(page, server, path, tab=tab)
        reload(page)
        assert tab_of(page) == tab
        screenshots.take(f"en-{path or 'model'}")
    expect_title(page, EN["download.title"])
    open_page(page, server, "plan", tab=tab)
    expect_title(page, EN["plan.title"])  # the language choice was kept in the tab's file too
    for path in ("hardware", "download"):
        open_page(page, server, path, tab=tab)
        choose_option(page, "lang", "简体中文")
        screenshots.take(f"zh-{path}")
        choose_option(page, "lang", "English")
    assert_loopback_only(browser_requests)


def test_changing_model_or_engine_never_leaks_a_revision_or_base_image(
    page: Page, server: UiServer, home: Path, tiny_model_dir: Path, tmp_path: Path, screenshots: Screenshots,
    browser_requests: list[str],
) -> None:
    other = tmp_path / "other-tiny"
    shutil.copytree(tiny_model_dir, other)
    tab = seeded_tab(home, model_dir=tiny_model_dir, target=describe_target(cpu_only=True, ram_gib=16))

    # an engine's base image does not follow the plan to another engine
    open_page(page, server, "plan", tab=tab)
    page.get_by_test_id("stExpander").filter(has_text=EN["plan.advanced"]).locator("summary").click()
    choose_option(page, "opt_engine", EN["engine.transformers"])
    base_image = by_key(page, "opt_base_image").locator("input")
    base_image.fill("my.mirror/transformers-cpu:1")
    base_image.press("Enter")
    wait_for_app_run(page)
    expect(page.get_by_test_id("stCode").first).to_contain_text("FROM my.mirror/transformers-cpu:1")
    choose_option(page, "opt_engine", EN["engine.llama.cpp"])
    expect(page.get_by_test_id("stAlertContentInfo").filter(has_text="A new engine")).to_be_visible()
    screenshots.take("engine-changed")
    expect(by_key(page, "opt_base_image").locator("input")).to_have_value("")
    expect(page.get_by_test_id("stCode").first).not_to_contain_text("my.mirror")
    reload(page)
    expect(page.get_by_test_id("stCode").first).not_to_contain_text("my.mirror")

    # a revision typed for one model is not used for the next
    open_page(page, server, "", tab=tab)
    page.get_by_role("tab", name=EN["model.tab_direct"]).click()
    revision = by_key(page, "model_revision").locator("input")
    revision.fill("v-one")
    revision.press("Enter")
    wait_for_app_run(page)
    click(page, "inspect_button")
    expect(by_key(page, "model_card")).to_be_visible()
    by_key(page, "model_ref").locator("input").fill(str(other))
    click(page, "inspect_button")
    expect(page.get_by_test_id("stAlertContentInfo").filter(has_text="was typed for another model")).to_be_visible()
    expect(by_key(page, "model_revision").locator("input")).to_have_value("")
    expect(by_key(page, "model_card")).to_contain_text("other-tiny")
    screenshots.take("model-changed")
    open_page(page, server, "plan", tab=tab)
    expect(page.get_by_test_id("stCode").first).not_to_contain_text("my.mirror")
    assert_loopback_only(browser_requests)


def test_a_fix_button_gives_a_fitting_plan(
    page: Page, server: UiServer, home: Path, tiny_model_dir: Path, screenshots: Screenshots,
    browser_requests: list[str],
) -> None:
    target = describe_target(gpu_preset="l4", driver_version="580.65.06")
    tab = seeded_tab(home, model_dir=tiny_model_dir, target=target, options=Options(gpu_memory_utilization=0.99))
    open_page(page, server, "plan", tab=tab)
    expect(page.get_by_test_id("stAlertContentError").filter(has_text=EN["plan.does_not_fit"].split(".")[0]))\
        .to_be_visible()  # fmt: skip
    screenshots.take("does-not-fit", errors_expected=True)
    fix = page.locator('[class*="st-key-fix_"] button').first
    expect(fix).to_contain_text("GPU memory to use")
    fix.click()
    wait_for_app_run(page)
    expect(page.get_by_test_id("stAlertContentSuccess").filter(has_text="It fits")).to_be_visible()
    expect(page.locator('[class*="st-key-fix_"]')).to_have_count(0)
    screenshots.take("fixed")
    assert_loopback_only(browser_requests)


def test_enter_runs_the_search(page: Page, server: UiServer, browser_requests: list[str]) -> None:
    open_page(page, server)
    query = by_key(page, "search_query").locator("input")
    query.fill(HF_SINGLE)
    query.press("Enter")  # no click on the Search button
    wait_for_app_run(page)
    expect(by_key(page, "search_table")).to_be_visible(timeout=60_000)
    assert_loopback_only(browser_requests)
