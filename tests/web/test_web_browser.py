"""Smoke test in headless Chromium: the served pages load and show the numbers from the database."""
from __future__ import annotations

import shutil
import socket
import threading
import time

import pytest
import uvicorn

from evo.web import create_app

playwright = pytest.importorskip("playwright.sync_api")
CHROMIUM = shutil.which("chromium")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (.ci/run installs it)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(sqlite_factory):
    """uvicorn serving the app in a thread, on a free port; stopped at the end."""
    port = free_port()
    config = uvicorn.Config(create_app(sqlite_factory, api_token="browser-token"), host="127.0.0.1", port=port,
                            log_level="warning")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "uvicorn did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=10)


@pytest.fixture(scope="module")
def page():
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM,
                                    args=["--no-sandbox", "--disable-background-networking", "--disable-gpu"])
        yield browser.new_page()
        browser.close()


def test_leaderboard_and_job_page_in_chromium(server, page):
    page.goto(server + "/")
    assert page.title() == "leaderboard · evo"
    top = page.locator('table[data-task="softmax"] tbody tr').first
    assert top.locator("td.speedup-eager").inner_text() == "2.00×"
    top.locator("a.job").click()  # the job that found the best softmax kernel
    page.wait_for_url("**/jobs/*")
    assert page.locator("#best-speedup").inner_text() == "2.00×"
    assert page.locator("#valid-rate").inner_text() == "75% (3 valid)"
    assert page.locator("svg.plot polyline.best-speedup").count() == 1
    # Filter by task through the form, as a user would.
    page.goto(server + "/")
    page.select_option('select[name="task"]', "rmsnorm")
    page.click('form.filters button[type="submit"]')
    page.wait_for_url("**task=rmsnorm**")
    assert page.locator("table.leaderboard").count() == 2  # rmsnorm on the H200 and on the CPU interpreter


def test_cancel_a_live_job_in_chromium(server, page):
    page.goto(server + "/jobs")
    page.locator("tr", has=page.locator("span.state-running")).locator("td a").first.click()
    page.wait_for_url("**/jobs/*")
    assert page.locator("#job-state").inner_text() == "running"
    page.click("a.cancel")
    page.fill('input[name="token"]', "browser-token")
    page.click('form.cancel button[type="submit"]')
    page.wait_for_url("**message=cancelled")
    assert page.locator("#job-state").inner_text() == "cancelled"
