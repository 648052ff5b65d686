"""End to end in a real headless Chromium: upload, see neighbours and maps, click "similar", find the row.

Skips when Chromium or Playwright is missing, except under CHAIDERM_REQUIRE_BROWSER=1 (set by .ci/run),
where a missing browser is a failure.
"""

import os
import shutil
import socket
import sqlite3
import threading
import time

import pytest


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
REQUIRED = os.environ.get("CHAIDERM_REQUIRE_BROWSER") == "1"

try:
    from playwright.sync_api import sync_playwright
except ImportError:  # pragma: no cover
    sync_playwright = None

if not REQUIRED and (CHROMIUM is None or sync_playwright is None):
    pytest.skip("headless Chromium or Playwright not installed", allow_module_level=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def server(served, tmp_path):
    import uvicorn

    from chaiderm.web.app import create_app

    port = _free_port()
    app = create_app(served / "run", served / "ix", tmp_path / "fb.db")
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not srv.started:
        assert time.time() < deadline, "server did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}", tmp_path / "fb.db"
    srv.should_exit = True
    thread.join(timeout=10)


def test_upload_see_evidence_and_click_similar(server, synth_dir, tmp_path):
    assert CHROMIUM is not None and sync_playwright is not None, "CI must install chromium and playwright"
    url, db = server
    query = synth_dir / "test" / "images" / "SYN_test_00002.png"
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
            ],
        )
        page = browser.new_page()
        page.goto(url)
        page.set_input_files("#file", str(query))
        page.wait_for_selector("#neighbors .card", timeout=30_000)
        assert page.locator("#neighbors .card").count() == 10
        assert "melanoma probability" in page.inner_text("#prob")
        # the QAM and RAM of the selected neighbour actually load as images
        page.wait_for_function("document.getElementById('qam').naturalWidth > 0", timeout=30_000)
        page.wait_for_function("document.getElementById('ram').naturalWidth > 0", timeout=30_000)
        first = page.locator("#neighbors .card").first
        image_id = first.get_attribute("data-image-id")
        first.locator("button.sim[data-rel='1']").click()
        page.wait_for_function("document.querySelector('#neighbors .card').dataset.judged === '1'", timeout=10_000)
        # k changes without uploading again
        page.locator("#k").fill("5")
        page.locator("#k").dispatch_event("change")
        page.wait_for_function("document.querySelectorAll('#neighbors .card').length === 5", timeout=30_000)
        page.screenshot(path=str(tmp_path / "viewer.png"), full_page=True)
        browser.close()
    rows = sqlite3.connect(db).execute("SELECT image_id, relevant FROM feedback").fetchall()
    assert rows == [(image_id, 1)]
