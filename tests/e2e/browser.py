"""Playwright helpers for driving the Streamlit wizard: waiting for runs, finding keyed widgets, screenshots.

The test ids and attributes are Streamlit's own (checked against the 1.67 frontend bundle):
``stApp[data-test-script-state]``, ``stApp[data-test-connection-state]``, ``stSkeleton``,
``stException``, ``stAlertContentError``; a widget with ``key="k"`` carries the CSS class ``st-key-k``.
"""

from __future__ import annotations

import re
from pathlib import Path

from playwright.sync_api import Browser, Locator, Page, Playwright, expect

#: Debian's chromium (`apt-get install chromium`); Playwright's own browser download is never used.
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",  # CI runs as root in a container
    "--disable-gpu",
    "--disable-background-networking",  # no calls home: the machines may be offline
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]
ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
ERROR_SELECTOR = '[data-testid="stException"], [data-testid="stAlertContentError"]'


def launch_chromium(playwright: Playwright) -> Browser:
    return playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)


def by_key(page: Page, key: str) -> Locator:
    """The element Streamlit drew for ``key=...`` (its container carries ``st-key-<key>``)."""
    return page.locator(f".st-key-{key}")


def wait_for_app_loaded(page: Page, *, timeout_ms: float = 30_000) -> None:
    page.wait_for_selector('[data-testid="stAppViewContainer"]', state="attached", timeout=timeout_ms)


def wait_for_app_run(page: Page, *, timeout_ms: float = 30_000) -> None:
    """Until the script run triggered by the last action has finished and its elements are drawn."""
    page.wait_for_timeout(250)  # let the click reach the server and the state flip to "running"
    app = page.locator('[data-testid="stApp"]')
    expect(app).to_have_attribute("data-test-connection-state", "CONNECTED", timeout=timeout_ms)
    expect(app).to_have_attribute("data-test-script-state", "notRunning", timeout=timeout_ms)
    expect(page.get_by_test_id("stSkeleton")).to_have_count(0, timeout=timeout_ms)


def error_texts(page: Page) -> list[str]:
    return [text.strip() for text in page.locator(ERROR_SELECTOR).all_inner_texts()]


class Screenshots:
    """Numbered full-page screenshots in tests/e2e/artifacts/<test>/, each checked for error elements."""

    def __init__(self, page: Page, test_name: str) -> None:
        self.page = page
        self.folder = ARTIFACTS / re.sub(r"[^A-Za-z0-9_.-]+", "_", test_name)
        self.folder.mkdir(parents=True, exist_ok=True)
        for old in self.folder.glob("*.png"):
            old.unlink()
        self.count = 0

    def take(self, name: str, *, errors_expected: bool = False) -> Path:
        self.count += 1
        path = self.folder / f"{self.count:02d}-{name}.png"
        # Streamlit scrolls inside its main container, so a "full page" shot is only the window: make the
        # window as tall as the content for the shot, then put it back.
        viewport = self.page.viewport_size or {"width": 1400, "height": 1000}
        height = self.page.evaluate(
            "() => (document.querySelector('[data-testid=\"stMain\"]') || document.body).scrollHeight"
        )
        self.page.set_viewport_size({"width": viewport["width"], "height": max(viewport["height"], int(height))})
        try:
            self.page.screenshot(path=str(path), full_page=True)
        finally:
            self.page.set_viewport_size(viewport)
        if not errors_expected:
            found = error_texts(self.page)
            assert not found, f"error shown at step {name!r} (see {path}):\n" + "\n---\n".join(found)
        return path
