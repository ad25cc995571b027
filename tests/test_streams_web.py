"""The web page's Streams view (/_web/streams.html) in the system's headless Chromium: start a
tracked stream from a file, watch its MJPEG and events, stop it."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("av", reason="the streams extra (av) is not installed")
pytest.importorskip("trackers", reason="the streams extra (trackers) is not installed")
sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is missing")

from cvserve.models.importers import import_model  # noqa: E402
from cvserve.models.store import ModelStore  # noqa: E402
from tests.support.live_server import LiveServer  # noqa: E402
from tests.support.streams_support import crossing_frames, two_colour_finder, write_clip  # noqa: E402

CHROMIUM = next(
    (c for c in (os.environ.get("CVSERVE_TEST_CHROMIUM"), "/usr/bin/chromium",
                 shutil.which("chromium")) if c and Path(c).is_file()),
    None,
)  # fmt: skip


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    if CHROMIUM is None:
        pytest.skip("no Chromium found (apt-get install chromium, or set CVSERVE_TEST_CHROMIUM)")
    root = tmp_path_factory.mktemp("streams-web")
    store = ModelStore(root / "models")
    import_model(two_colour_finder(root / "two.onnx", ("red", "green")), "two/1", store)
    videos = root / "videos"
    videos.mkdir()
    clip = write_clip(videos / "slow.mp4", crossing_frames(60, 320, 240), fps=10)
    with LiveServer(root / "models", stream_dirs=(str(videos),)) as live:
        yield live.url, clip


@pytest.fixture(scope="module")
def page(server: tuple[str, Path]) -> Iterator[Any]:
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--headless", "--no-sandbox"])
        try:
            page = browser.new_page()
            page.set_default_timeout(20_000)
            yield page
        finally:
            browser.close()


def test_streams_view_starts_watches_and_stops_a_stream(server, page):
    url, clip = server
    page.goto(f"{url}/")
    page.click("text=Streams")
    page.wait_for_selector("#model option[value='two/1']", state="attached")
    page.fill("#source", f"file://{clip}")
    page.select_option("#model", "two/1")
    page.select_option("#tracker", "bytetrack")
    page.check("#realtime")
    page.click("#start-btn")
    expect = sync_api.expect  # locator waits: the page's CSP forbids evaluated strings
    expect(page.locator("#last-event")).to_contain_text("tracker_id", timeout=20_000)
    width = 0
    for _ in range(100):  # the MJPEG <img> shows annotated frames at the clip's size
        width = page.locator("#live").evaluate("img => img.naturalWidth")
        if width:
            break
        page.wait_for_timeout(100)
    assert width == 320
    item = page.locator(".stream-item").first
    assert "file://" in item.text_content()
    page.click("#stop-btn")
    expect(page.locator("#stream-list")).to_contain_text("stopped", timeout=20_000)
    page.fill("#source", "ftp://example.com/a.mp4")
    page.click("#start-btn")
    page.wait_for_selector("#start-error:not([hidden])")
    assert "scheme 'ftp'" in page.text_content("#start-error")
