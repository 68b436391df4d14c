"""Fixtures for browser tests: one Debian chromium per session, a fresh page per test, and the wizard served
at the fake hub with this test's own data folder."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, sync_playwright

from tests.e2e.browser import Screenshots, launch_chromium
from tests.e2e.ui_server import UiServer, running_ui_server
from tests.fixtures.fake_hub import FakeHub


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "ezrunner-home"


@pytest.fixture
def server(fake_hub: FakeHub, home: Path, tmp_path: Path) -> Iterator[UiServer]:
    """`ezrunner ui` on loopback. fake_hub has pointed HF_ENDPOINT / MODELSCOPE_ENDPOINT at itself in this
    process's environment, which the server process inherits; its caches go to this test's folder."""
    env = {
        "EZRUNNER_HOME": str(home),
        "HF_HOME": str(tmp_path / "hf-home"),
        "MODELSCOPE_CACHE": str(tmp_path / "modelscope"),
        "HF_HUB_DISABLE_TELEMETRY": "1",
    }
    with running_ui_server(env=env) as running:
        yield running


@pytest.fixture(scope="session")
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        chromium = launch_chromium(playwright)
        yield chromium
        chromium.close()


@pytest.fixture
def browser_requests() -> list[str]:
    """Every URL the test's browser context asked for, in order (filled by the ``page`` fixture)."""
    return []


@pytest.fixture
def page(browser: Browser, browser_requests: list[str]) -> Iterator[Page]:
    context = browser.new_context(accept_downloads=True, viewport={"width": 1400, "height": 1000})
    # every request of every tab of the context, so a test can prove that nothing left loopback
    context.on("request", lambda request: browser_requests.append(request.url))
    tab = context.new_page()
    tab.set_default_timeout(30_000)
    yield tab
    context.close()


@pytest.fixture
def screenshots(page: Page, request: pytest.FixtureRequest) -> Screenshots:
    return Screenshots(page, request.node.name)
