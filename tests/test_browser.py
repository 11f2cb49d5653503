"""The demo page in a real browser: Debian's chromium, headless, driven by Playwright, uploads
through the page (tus-js-client's browser build) to the demo's native ASGI app under hypercorn.

Needs ``make test-deps`` (chromium at /usr/bin/chromium and demo/static/vendor/tus.min.js); a
missing piece fails the test, it never skips."""

from __future__ import annotations

import random
import re
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Browser, ConsoleMessage, Page, expect, sync_playwright
from servers import ROOT, Server, running

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
VENDOR_CLIENT = ROOT / "demo" / "static" / "vendor" / "tus.min.js"
TUS = {"Tus-Resumable": "1.0.0"}
MiB = 1024 * 1024
#: The chunk size demo/static/app.js gives tus-js-client.
PAGE_CHUNK = 5 * MiB
#: Milliseconds to wait for an upload's outcome on the page.
OUTCOME_TIMEOUT = 20_000


@pytest.fixture
def browser() -> Iterator[Browser]:
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} not found: run `make test-deps` (it installs Debian's chromium)")
    if not VENDOR_CLIENT.exists():
        pytest.fail(f"{VENDOR_CLIENT} not found: run `make test-deps` (it fetches tus-js-client)")
    with sync_playwright() as playwright:
        instance = playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True
        )
        try:
            yield instance
        finally:
            instance.close()


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    with running("hypercorn", tmp_path / "uploads") as srv:
        yield srv


def make_file(path: Path, size: int, seed: int) -> bytes:
    """Write ``size`` reproducible pseudo-random bytes to ``path`` and return them."""
    data = random.Random(seed).randbytes(size)
    path.write_bytes(data)
    return data


def data_files(directory: Path) -> list[Path]:
    """The stored upload bodies: ``<dir>/<id>``, not the ``.json`` records or lock files."""
    return sorted(
        p
        for p in directory.iterdir()
        if p.is_file() and not p.name.startswith(".") and p.suffix == ""
    )


def open_page(browser: Browser, server: Server) -> tuple[Page, list[str]]:
    """The demo page, ready to upload, with a log of the browser's console errors."""
    page = browser.new_page()
    errors: list[str] = []

    def on_console(message: ConsoleMessage) -> None:
        # The demo ships no favicon; the browser's own request for it is not the page's error.
        if message.type == "error" and not message.location["url"].endswith("/favicon.ico"):
            errors.append(f"{message.text} at {message.location['url']}")

    page.on("console", on_console)
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(server.url + "/")
    expect(page.locator("#upload")).to_be_enabled()
    return page, errors


def wait_for_outcome(page: Page, errors: list[str]) -> str:
    """Wait until the status says Finished or Failed; return it, failing on Failed."""
    page.wait_for_function(
        "() => /Finished|Failed/.test(document.getElementById('status').textContent)",
        timeout=OUTCOME_TIMEOUT,
    )
    status = page.locator("#status").inner_text()
    assert "Finished" in status, f"upload failed on the page: {status!r}; console: {errors}"
    return status


def finished_id(page: Page) -> str:
    """The upload id at the end of the URL the page links in its Finished status."""
    href = page.locator("#status a").get_attribute("href")
    assert href, "the Finished status carries no link to the upload"
    return href.rstrip("/").rsplit("/", 1)[-1]


def stable_offset(url: str, timeout: float = 10) -> int:
    """HEAD the upload until two readings agree: the server may still be saving a cut PATCH."""
    deadline = time.monotonic() + timeout
    previous = -1
    while time.monotonic() < deadline:
        response = httpx.head(url, headers=TUS)
        assert response.status_code == 200, response.status_code
        offset = int(response.headers["Upload-Offset"])
        if offset == previous:
            return offset
        previous = offset
        time.sleep(0.2)
    raise AssertionError(f"the offset of {url} kept changing (last {previous})")


def test_page_uploads_a_file_byte_identical(
    browser: Browser, server: Server, tmp_path: Path
) -> None:
    """Choosing a file and pressing Upload stores it byte-identical; the finished list links it
    under its file name and the link downloads the same bytes."""
    source = tmp_path / "holiday photo.bin"
    data = make_file(source, 3 * MiB + 4321, seed=6)
    page, errors = open_page(browser, server)

    page.set_input_files("#file", source)
    expect(page.locator("#status")).to_contain_text("Ready")
    page.click("#upload")
    wait_for_outcome(page, errors)
    page.screenshot(path=tmp_path / "browser-upload.png")

    upload_id = finished_id(page)
    stored = data_files(server.upload_dir)
    assert [p.name for p in stored] == [upload_id]
    assert stored[0].read_bytes() == data
    assert page.locator("#progress").evaluate("el => el.value") == 100

    link = page.locator("#uploads a", has_text=source.name)
    expect(link).to_have_count(1)
    expect(link).to_have_attribute("href", re.compile(re.escape(upload_id) + "$"))
    download = page.request.get(server.url + (link.get_attribute("href") or ""))
    assert download.ok
    assert download.body() == data
    assert not errors, errors


def test_page_pauses_and_resumes_the_same_upload(
    browser: Browser, server: Server, tmp_path: Path
) -> None:
    """Pause mid-upload stops the transfer (server offset and progress bar stand still), and
    Resume continues the same upload from the server's offset (no new POST) to identical bytes."""
    source = tmp_path / "big.bin"
    size = 24 * MiB
    data = make_file(source, size, seed=7)
    page, errors = open_page(browser, server)
    requests: list[tuple[str, str]] = []
    page.on("request", lambda request: requests.append((request.method, request.url)))

    # Throttle the browser's uploads so that the Pause click lands while bytes are moving.
    cdp = page.context.new_cdp_session(page)
    cdp.send("Network.enable")
    throttled = {"offline": False, "latency": 0, "downloadThroughput": -1}
    cdp.send("Network.emulateNetworkConditions", {**throttled, "uploadThroughput": 6 * MiB})

    page.set_input_files("#file", source)
    page.click("#upload")
    # Past the first chunk, so the server has acknowledged bytes before the pause.
    past_first_chunk = 100 * PAGE_CHUNK / size + 2
    page.wait_for_function(
        f"() => document.getElementById('progress').value > {past_first_chunk}",
        timeout=OUTCOME_TIMEOUT,
    )
    page.click("#pause")
    progress_at_pause = page.locator("#progress").evaluate("el => el.value")
    expect(page.locator("#status")).to_contain_text("Paused")
    expect(page.locator("#pause")).to_be_disabled()
    expect(page.locator("#resume")).to_be_enabled()

    stored = data_files(server.upload_dir)
    assert len(stored) == 1, stored
    upload_id = stored[0].name
    offset = stable_offset(f"{server.url}/files/{upload_id}")
    assert PAGE_CHUNK <= offset < size
    assert page.locator("#progress").evaluate("el => el.value") == progress_at_pause
    expect(page.locator("#status")).to_contain_text("Paused")
    page.screenshot(path=tmp_path / "browser-paused.png")

    requests_before_resume = len(requests)
    cdp.send("Network.emulateNetworkConditions", {**throttled, "uploadThroughput": -1})
    page.click("#resume")
    wait_for_outcome(page, errors)
    page.screenshot(path=tmp_path / "browser-resumed.png")

    assert finished_id(page) == upload_id
    assert [p.name for p in data_files(server.upload_dir)] == [upload_id]
    assert stored[0].read_bytes() == data
    methods_after_resume = [m for m, _ in requests[requests_before_resume:]]
    assert "POST" not in methods_after_resume
    assert methods_after_resume[0] == "HEAD"
    assert [m for m, _ in requests].count("POST") == 1
    expect(page.locator("#uploads a", has_text=source.name)).to_have_count(1)
