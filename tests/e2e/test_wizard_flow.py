"""The whole wizard in a real browser: search the tiny model on the fake hub, pick it, detect this
(CPU-only) machine, plan with transformers on the offline base image, build, download the archive
through the page's link, and `docker load` what arrived."""

from __future__ import annotations

import hashlib
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest
import requests
from playwright.sync_api import Download, Page, expect
from playwright.sync_api import TimeoutError as PlaywrightTimeoutError

from core.docker import api as docker_api
from core.history import History, PackRecord
from ezrunner_ui.i18n import catalog
from ezrunner_ui.routes import artifact_url
from tests.e2e.browser import Screenshots, by_key, wait_for_app_loaded, wait_for_app_run
from tests.e2e.ui_server import UiServer
from tests.fixtures.hub_plugin import HF_SINGLE
from tests.fixtures.packs import record_again

pytestmark = [pytest.mark.e2e, pytest.mark.docker, pytest.mark.slow]
REPO_ID = HF_SINGLE  # the most downloaded of the hub's tiny-org/tiny-llama* models, so the first row
EN = catalog("en")
BUILD_TIMEOUT_MS = 15 * 60 * 1000
_SHA256 = re.compile(r"\b[0-9a-f]{64}\b")


@pytest.fixture
def packed_images(home: Path) -> Iterator[list[str]]:
    """Remove, when the test ends, the images the wizard built (the pack's tag and its helper tags such as
    ``<tag>-runtime``), the one `docker load` brought back, and any image id the test appended (the build
    that `docker load` untagged by loading its tag anew)."""
    untagged: list[str] = []
    yield untagged
    history_file = home / "history.sqlite"
    made = [r.image_tag for r in History(history_file).list() if r.image_tag] if history_file.exists() else []
    client = docker_api.connect()

    def remove(ref: str) -> None:
        # Builds are reproducible: another test running at the same time can have built the very same image
        # id and started a container from it; the engine then refuses (409) and that image is not ours to take.
        try:
            docker_api.remove_image(ref=ref, force=True, client=client)
        except docker.errors.APIError as error:
            if error.status_code != 409:
                raise

    try:
        for image in client.images.list():
            for tag in image.tags:
                if any(tag == ref or tag.startswith(ref + "-") for ref in made):
                    remove(tag)
        for image_id in untagged:
            remove(image_id)
    finally:
        client.close()


def click(page: Page, key: str) -> None:
    by_key(page, key).locator("button").first.click()
    wait_for_app_run(page)


def choose_option(page: Page, key: str, option: str) -> None:
    """Pick ``option`` in the selectbox ``key``; the drop-down can miss a click made during a rerun."""
    option_locator = page.get_by_role("option", name=option, exact=True)
    for _ in range(3):
        by_key(page, key).get_by_test_id("stSelectbox").click()
        try:
            option_locator.wait_for(state="visible", timeout=10_000)
        except PlaywrightTimeoutError:
            page.keyboard.press("Escape")
            wait_for_app_run(page)
            continue
        option_locator.click()
        wait_for_app_run(page)
        return
    raise AssertionError(f"the selectbox {key} never offered {option!r}")


def pick_first_row(page: Page, key: str) -> None:
    """Tick the selection box of the first row of a selectable st.dataframe (a canvas grid)."""
    grid = by_key(page, key).get_by_test_id("stDataFrameResizable")
    expect(grid).to_be_visible()
    box = grid.bounding_box()
    assert box is not None
    # The selection column is the first one; row 1 starts below the 35 px header row.
    page.mouse.click(box["x"] + 16, box["y"] + 35 + 17)
    wait_for_app_run(page)


def download_from_link(page: Page, href: str, dest: Path) -> Download:
    """Click the link button to ``href`` (it opens a new tab) and save the download, whichever tab has it."""
    arrived: list[Download] = []

    def keep(download: Download) -> None:  # Playwright needs a Python function here, not a bound builtin
        arrived.append(download)

    page.context.on("page", lambda tab: tab.on("download", keep))
    page.on("download", keep)
    page.locator(f'[data-testid="stLinkButton"] a[href$="{href}"]').click()
    page.wait_for_timeout(500)
    for _ in range(600):
        if arrived:
            break
        page.wait_for_timeout(100)
    assert arrived, f"clicking the link to {href} started no download"
    download = arrived[0]
    download.save_as(dest)
    return download


def test_search_plan_build_download_and_load(
    page: Page, screenshots: Screenshots, server: UiServer, home: Path, offline_base_image: str,
    tmp_path: Path, packed_images: list[str],
) -> None:
    page.goto(server.url)
    wait_for_app_loaded(page)
    wait_for_app_run(page)
    screenshots.take("model-page")

    # 1. search the fake hub and pick the tiny model from the results
    by_key(page, "search_query").locator("input").fill(REPO_ID)
    by_key(page, "search_query").locator("input").press("Enter")
    wait_for_app_run(page)
    by_key(page, "search_source").get_by_text(EN["source.hf"], exact=True).click()
    wait_for_app_run(page)
    click(page, "search_button")
    expect(by_key(page, "search_table")).to_be_visible()
    screenshots.take("search-results")
    pick_first_row(page, "search_table")
    expect(by_key(page, "model_card").get_by_role("heading", level=3).first).to_have_text(REPO_ID, timeout=60_000)
    screenshots.take("model-picked")
    click(page, "to_hardware")

    # 2. detect this machine (CPU only here) and use it
    click(page, "detect_button")
    click(page, "use_detected")
    screenshots.take("hardware-detected")
    click(page, "to_plan")

    # 3. plan: transformers on the offline base image (no registry to pull the pinned one from)
    expect(page.get_by_test_id("stHeading").filter(has_text=EN["plan.title"]).first).to_be_visible()
    page.get_by_test_id("stExpander").filter(has_text=EN["plan.advanced"]).locator("summary").click()
    choose_option(page, "opt_engine", EN["engine.transformers"])
    base_image = by_key(page, "opt_base_image").locator("input")
    base_image.fill(offline_base_image)
    base_image.press("Enter")
    wait_for_app_run(page)
    expect(page.get_by_test_id("stCode").first).to_contain_text(offline_base_image)
    screenshots.take("plan")
    click(page, "to_build")

    # 4. build and wait for the pack to finish
    screenshots.take("build-page")
    click(page, "start_build")
    expect(by_key(page, "job_panel")).to_be_visible()
    screenshots.take("build-running")
    job_id = re.search(r"[?&]job=([0-9a-f]{32})", page.url)
    assert job_id, f"the build page did not put the job in its URL: {page.url}"
    expect(by_key(page, "to_download")).to_be_visible(timeout=BUILD_TIMEOUT_MS)
    wait_for_app_run(page)
    screenshots.take("build-done")
    job = requests.get(f"{server.url}/api/jobs/{job_id.group(1)}", timeout=30).json()
    assert job["state"] == "succeeded", job
    # the panel's last code block is the archive's sha256 (the build log above it may hold other digests)
    shown = _SHA256.findall(by_key(page, "job_panel").get_by_test_id("stCode").last.inner_text())
    assert len(shown) == 1, f"the build page shows no single sha256: {shown}"
    click(page, "to_download")

    # 5. download the archive through the page's link and load it
    summary = by_key(page, "download_summary")
    expect(summary).to_be_visible()
    sha256_on_page = _SHA256.findall(summary.inner_text())
    assert sha256_on_page == shown, (sha256_on_page, shown)
    screenshots.take("download-page")
    record = History(home / "history.sqlite").get(job["record_id"])
    assert record is not None and record.archive is not None
    assert job["downloads"]["archive"] == artifact_url(record_id=record.id)
    dest = tmp_path / "downloaded.tar"
    download = download_from_link(page, job["downloads"]["archive"], dest)
    assert download.suggested_filename == Path(record.archive).name
    assert hashlib.sha256(dest.read_bytes()).hexdigest() == sha256_on_page[0]
    assert record.image_tag
    client = docker_api.connect()
    try:
        if docker_api.image_exists(ref=record.image_tag, client=client):
            packed_images.append(client.images.get(record.image_tag).id)
    finally:
        client.close()
    loaded = subprocess.run(["docker", "load", "-i", str(dest)], capture_output=True, text=True, timeout=600)
    assert loaded.returncode == 0, loaded.stderr
    assert record.image_tag in loaded.stdout
    screenshots.take("downloaded")

    # 6. try it before it travels: start the pack on this machine and chat with it, tokens streaming in
    click(page, "try_it")
    expect(page.get_by_test_id("stHeading").filter(has_text=EN["try.title"]).first).to_be_visible()
    try_it_in_the_browser(page, screenshots)
    # the page stops what it started: nothing of the test drive outlives the Stop button
    click(page, "try_stop_a")
    expect(by_key(page, "try_start_a")).to_be_visible()
    compare_two_in_the_browser(page, screenshots, history=History(home / "history.sqlite"), record=record)
    assert [c.name for c in docker.from_env().containers.list(all=True, filters={"label": "io.ezrunner.role=try"})
            ] == []  # fmt: skip


def compare_two_in_the_browser(page: Page, screenshots: Screenshots, *, history: History, record: PackRecord) -> None:
    """A second record of the same archive (as a second pack of another quantization would be), then one prompt
    to both: each side shows its answer and its figures, and Stop all leaves no server."""
    second = record_again(history, record)
    answered = by_key(page, "try_message_1").inner_text().strip()
    page.reload()
    wait_for_app_loaded(page)
    wait_for_app_run(page)
    # the refresh kept the conversation (the tab's session file), answer and figures
    expect(by_key(page, "try_message_1")).to_have_text(answered)
    expect(page.get_by_text("First token").first).to_be_visible()
    by_key(page, "try_mode").get_by_text(EN["try.mode_compare"], exact=True).click()
    wait_for_app_run(page)
    prompt = by_key(page, "try_prompt").locator("textarea")
    prompt.fill("Name three colours.")
    prompt.press("Control+Enter")
    wait_for_app_run(page)
    by_key(page, "try_send_both").locator("button").first.click()
    for side in ("try_side_0", "try_side_1"):
        expect(by_key(page, side).get_by_text("First token")).to_be_visible(timeout=5 * 60 * 1000)
    wait_for_app_run(page)
    screenshots.take("try-compared")
    for side in ("try_side_0", "try_side_1"):
        assert by_key(page, side).get_by_text(EN["try.side_done"], exact=True).is_visible()
    click(page, "try_stop_all")
    assert docker.from_env().containers.list(all=True, filters={"label": "io.ezrunner.role=try"}) == []

    # a short bench of both, one after the other: a progress bar, then the table and the charts, kept on History
    for key, value in (("try_bench_requests", "2"), ("try_bench_max_tokens", "8")):
        field = by_key(page, key).locator("input")
        field.fill(value)
        field.press("Enter")
        wait_for_app_run(page)
    by_key(page, "try_bench_run").locator("button").first.click()
    expect(by_key(page, "try_bench").get_by_test_id("stProgress")).to_be_visible(timeout=60_000)
    results = by_key(page, "try_bench_results")
    expect(results).to_be_visible(timeout=10 * 60 * 1000)
    wait_for_app_run(page)
    expect(results.get_by_test_id("stDataFrame")).to_have_count(1)
    expect(results.get_by_test_id("stVegaLiteChart")).to_have_count(2)
    screenshots.take("try-benched")
    for record_id in (record.id, second):
        (result,) = history.bench_results(record_id)
        assert result["requests_ok"] == 2 and result["requests_failed"] == 0 and result["output_tokens_per_s"] > 0
    page.get_by_role("link", name=EN["try.to_history"]).click()
    wait_for_app_run(page)
    expect(page.get_by_text(EN["history.bench"].format(count=1)).first).to_be_visible()
    assert docker.from_env().containers.list(all=True, filters={"label": "io.ezrunner.role=try"}) == []


#: Every text the streaming answer showed, in order, recorded in the page by a MutationObserver.
_RECORD_ANSWER = """() => {
  window.__answers = [];
  new MutationObserver(() => {
    const answer = document.querySelector('.st-key-try_answer');
    if (answer) window.__answers.push(answer.innerText);
  }).observe(document.body, {subtree: true, childList: true, characterData: true});
}"""


def try_it_in_the_browser(page: Page, screenshots: Screenshots) -> None:
    click(page, "try_start_a")
    expect(by_key(page, "try_server_a").get_by_text("Running at")).to_be_visible(timeout=5 * 60 * 1000)
    screenshots.take("try-running")
    tokens = by_key(page, "try_max_tokens").locator("input")
    tokens.fill("256")
    tokens.press("Enter")
    wait_for_app_run(page)
    # a random-weight model may end an answer after a few tokens: ask again (up to three times) for one that runs
    # long enough to be seen arriving
    seen_partial: list[str] = []
    for turn in range(3):
        page.evaluate(_RECORD_ANSWER)
        chat = page.get_by_test_id("stChatInput").locator("textarea")
        chat.fill("Tell me a long story about a lighthouse.")
        chat.press("Enter")
        answer = by_key(page, f"try_message_{2 * turn + 1}")  # the answer, kept in the conversation with its figures
        expect(answer).to_be_visible(timeout=5 * 60 * 1000)
        expect(page.get_by_text("First token").nth(turn)).to_be_visible()
        wait_for_app_run(page)
        final = answer.inner_text().strip()
        seen = [text.strip() for text in page.evaluate("window.__answers") if text.strip() not in ("", "…")]
        assert final and seen, (final, seen)
        # the first tokens were on the page before the answer was complete: the text grew while it was generated
        seen_partial = [text for text in seen if len(text) < len(final)]
        if seen_partial:
            break
    screenshots.take("try-answered")
    assert seen_partial, f"three answers appeared only whole (the last: {len(final)} characters, {len(seen)} states)"
