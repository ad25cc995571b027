"""The web page at `/`, driven by the system's headless Chromium through Playwright.

`cvserve serve --no-pull` runs as a subprocess over a store of synthetic models whose boxes,
masks and SAM discs are known exactly, so the test can check the DOM (prediction list, raw
JSON) and the pixels of a screenshot (the box colour where the model put its box).
No browser is ever downloaded: without Chromium (or the playwright package) these skip.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import httpx
import numpy as np
import pytest
from PIL import Image

from cvserve.keypoint_sets import COCO_SKELETON
from cvserve.models.importers import import_model
from cvserve.models.store import ModelStore
from cvserve.render.annotate import PALETTE
from tests.support.live_server import LiveServer, serve_subprocess, stop
from tests.support.synthetic import constant_model, peer_layout, ultralytics_meta, yolo_head
from tests.support.synthetic_store import DET_BOXES, POSE_BOX, SEG_BOX, build_store, sample_image

sync_api = pytest.importorskip(
    "playwright.sync_api", reason="the playwright package is not installed (pip install playwright)"
)


def _chromium() -> str | None:
    for candidate in (
        os.environ.get("CVSERVE_TEST_CHROMIUM"),
        "/usr/bin/chromium",
        shutil.which("chromium"),
        shutil.which("chromium-browser"),
        shutil.which("google-chrome"),
    ):
        if candidate and Path(candidate).is_file():
            return candidate
    return None


CHROMIUM = _chromium()
pytestmark = pytest.mark.skipif(
    CHROMIUM is None,
    reason="no Chromium found (apt-get install chromium, or set CVSERVE_TEST_CHROMIUM)",
)
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
    # A synthetic camera, so the webcam path runs headless without a device or a prompt.
    "--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream",
]  # fmt: skip
PERSON_RGB = np.array([255, 56, 56])
KEY = "web-key"
# A 5-landmark face model laid out like the zoo's `faces` (RetinaFace): its own names and
# edges, which share indices 0..4 with COCO's nose/eyes/ears but not their meaning.
FACE_NAMES = ["right_eye", "left_eye", "nose", "right_mouth", "left_mouth"]
FACE_EDGES = [(0, 1), (0, 2), (1, 2), (2, 3), (2, 4), (3, 4)]
FACE_BOX = (100, 100, 540, 560, 0.95)
# Far apart, so each edge's midpoint lies off every other edge: (1, 3), the COCO edge
# left_eye -> left_ear that a COCO skeleton would draw (here an eye to a mouth corner),
# crosses the empty middle at (300, 325).
FACE_POINTS = [(150, 150), (450, 150), (450, 350), (150, 500), (450, 500)]


def photo(size: int = 640) -> np.ndarray:
    """A real photo when one is at hand (scikit-image, matplotlib), else a generated image;
    centre-cropped and resized to size x size (the synthetic models' input), RGB."""
    img = None
    try:
        from skimage import data  # type: ignore[import-not-found]

        img = data.astronaut()
    except Exception:
        try:
            from matplotlib import cbook  # type: ignore[import-not-found]

            with cbook.get_sample_data("grace_hopper.jpg") as f:
                img = np.asarray(Image.open(f).convert("RGB"))
        except Exception:
            img = None
    if img is None:
        return sample_image(size, size)
    h, w = img.shape[:2]
    s = min(h, w)
    crop = img[(h - s) // 2 : (h - s) // 2 + s, (w - s) // 2 : (w - s) // 2 + s]
    return cv2.resize(np.ascontiguousarray(crop), (size, size), interpolation=cv2.INTER_AREA)


def _face_models(store: ModelStore, work: Path) -> None:
    """faces/1: five named landmarks with their own edges (the peer's layout, as a Roboflow
    export carries them); marks/1: the same graph with no names or edges (no skeleton)."""
    x1, y1, x2, y2, conf = FACE_BOX
    extra = [v for x, y in FACE_POINTS for v in (x, y, 0.9)]
    head = yolo_head([((x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1)], [[conf]], [extra], 64)
    onnx_path = constant_model(
        work / "face.onnx", [head], metadata=ultralytics_meta("pose", ["face"], kpt_shape="[5, 3]")
    )
    folder = peer_layout(
        work / "faces-peer", onnx_path, task="keypoint-detection", class_names=["face"],
        keypoints=FACE_NAMES, edges=FACE_EDGES,
    )  # fmt: skip
    import_model(folder, "faces/1", store)
    import_model(onnx_path, "marks/1", store)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("web")
    store = build_store(d / "store", d / "work", sam=True)
    _face_models(store, d / "work")
    cv2.imwrite(str(d / "photo.jpg"), photo()[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, 92])
    # Flat grey: any red on it is the page's drawing.
    cv2.imwrite(str(d / "grey.png"), np.full((640, 640, 3), 128, np.uint8))
    return d


@pytest.fixture(scope="module")
def server_url(workdir: Path) -> Iterator[str]:
    proc, url = serve_subprocess(workdir / "store")
    try:
        yield url
    finally:
        stop(proc)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


class Page:
    """A fresh page on the server's `/`, collecting JavaScript errors."""

    def __init__(self, browser: Any, url: str, routes: dict[str, Any] | None = None) -> None:
        # bypass_csp lets Playwright's own helpers (wait_for_function) evaluate scripts;
        # the page's CSP itself is checked over plain HTTP below.
        self.context = browser.new_context(
            viewport={"width": 1440, "height": 900}, bypass_csp=True,
            permissions=["camera"],
        )  # fmt: skip
        for pattern, handler in (routes or {}).items():
            self.context.route(pattern, handler)
        self.page = self.context.new_page()
        self.errors: list[str] = []
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        self.page.goto(url + "/")
        self.page.wait_for_selector("body[data-ready=true]", timeout=15_000)

    def close(self) -> None:
        self.context.close()

    def pick(self, model_id: str, image: Path | None = None) -> None:
        self.page.select_option("#model-select", model_id)
        if image is not None:
            self.page.set_input_files("#file-input", str(image))

    def wait_items(self, n: int) -> list[str]:
        self.page.wait_for_function(
            f"document.querySelectorAll('#predictions .pred-item').length === {n}",
            timeout=15_000,
        )
        return self.page.locator("#predictions .pred-item .name").all_inner_texts()

    def set_range(self, selector: str, value: int) -> None:
        self.page.eval_on_selector(
            selector, "(el, v) => { el.value = v; el.dispatchEvent(new Event('input')); }", value
        )

    def canvas_pixels(self) -> tuple[np.ndarray, float]:
        """A screenshot of the canvas (RGB) and its scale from image pixels to screen."""
        canvas = self.page.locator("#canvas")
        png = canvas.screenshot()
        rgb = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))
        natural = self.page.eval_on_selector("#canvas", "c => c.width")
        return rgb, rgb.shape[1] / natural

    def click_image(self, x: float, y: float, **kw: Any) -> None:
        box = self.page.locator("#canvas").bounding_box()
        natural = self.page.eval_on_selector("#canvas", "c => [c.width, c.height]")
        sx, sy = box["width"] / natural[0], box["height"] / natural[1]
        self.page.locator("#canvas").click(position={"x": x * sx, "y": y * sy}, **kw)

    def json_text(self) -> str:
        return self.page.inner_text("#json-output")

    def drawn(self) -> dict[str, Any]:
        """What the page's last drawing put on the canvas (its test hook)."""
        return self.page.evaluate("window.cvserve.drawn()")


@pytest.fixture
def page(browser: Any, server_url: str) -> Iterator[Page]:
    p = Page(browser, server_url)
    yield p
    errors = list(p.errors)
    p.close()
    assert not errors, f"JavaScript errors on the page: {errors}"


def _edge_hits(rgb: np.ndarray, scale: float, box: tuple, colour: np.ndarray) -> float:
    """Fraction of rows along the box's left edge where a pixel near `colour` sits within
    2 screen pixels of where the edge should be."""
    x1, y1, x2, y2 = box[:4]
    cx = int(round(x1 * scale))
    rows = range(int((y1 + 30) * scale), int((y2 - 10) * scale))
    hits = 0
    for r in rows:
        strip = rgb[r, max(0, cx - 2) : cx + 3].astype(int)
        if (np.abs(strip - colour) <= 40).all(-1).any():
            hits += 1
    return hits / max(1, len(rows))


# -- plain HTTP --------------------------------------------------------------------------------
def test_page_and_assets_are_served(server_url: str) -> None:
    r = httpx.get(server_url + "/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert "default-src 'self'" in r.headers["content-security-policy"]
    assert "/_web/app.js" in r.text and "/_web/style.css" in r.text
    for name, ctype in (("app.js", "javascript"), ("style.css", "text/css")):
        a = httpx.get(f"{server_url}/_web/{name}")
        assert a.status_code == 200 and ctype in a.headers["content-type"]
        again = httpx.get(f"{server_url}/_web/{name}", headers={"If-None-Match": a.headers["etag"]})
        assert again.status_code == 304
    assert httpx.get(f"{server_url}/_web/nothing.js").status_code == 404
    assert httpx.get(f"{server_url}/_web/..%2Fhttp%2Fweb.py").status_code == 404
    assert httpx.get(f"{server_url}/_web/config.json").json()["keys_required"] is False
    # No CDN or remote asset anywhere in the page's files.
    for name in ("index.html", "app.js", "style.css"):
        text = httpx.get(f"{server_url}/_web/{name}").text
        assert "https://" not in text and "http://" not in text, name


def test_config_and_models_carry_what_the_page_draws_with(server_url: str) -> None:
    config = httpx.get(f"{server_url}/_web/config.json").json()
    assert config["palette"] == PALETTE.tolist()
    assert config["keypoint_color_offset"] == 3
    assert config["defaults"]["object-detection"] == {"confidence": 40, "overlap": 30}
    assert config["defaults"]["classification"]["confidence"] == 50
    models = {m["model_id"]: m for m in httpx.get(f"{server_url}/models").json()["models"]}
    assert models["faces/1"]["keypoint_names"] == FACE_NAMES
    assert models["faces/1"]["skeleton"] == [list(e) for e in FACE_EDGES]
    assert models["marks/1"]["keypoint_names"] == ["0", "1", "2", "3", "4"]
    assert models["marks/1"]["skeleton"] == []
    assert models["pose/1"]["skeleton"] == [list(e) for e in COCO_SKELETON]
    assert len(models["pose/1"]["keypoint_names"]) == 17
    assert models["det/1"]["keypoint_names"] == [] and models["det/1"]["skeleton"] == []


# -- detection -------------------------------------------------------------------------------
def test_detection_boxes_list_json_and_pixels(page: Page, workdir: Path) -> None:
    page.pick("det/1", workdir / "photo.jpg")
    assert page.wait_items(2) == ["person", "car"]
    text = page.json_text()
    assert '"class": "person"' in text and '"width": 640' in text
    assert page.page.inner_text("#pred-count") == "2"
    rgb, scale = page.canvas_pixels()
    assert abs(rgb.shape[1] - 640 * scale) < 2
    assert _edge_hits(rgb, scale, DET_BOXES["person"], PERSON_RGB) > 0.9
    # The car box is not where the person is: its left edge has no person-red.
    x1, y1, x2, y2, _ = DET_BOXES["car"]
    assert _edge_hits(rgb, scale, (x1 - 30, y1, x1 - 30, y2), PERSON_RGB) < 0.2

    page.set_range("#confidence", 30)  # the dog (0.35) appears
    assert page.wait_items(3) == ["person", "car", "dog"]
    assert page.page.inner_text("#confidence-out") == "30%"
    page.page.click("#classes-chips .chip:has-text('car')")
    assert page.wait_items(1) == ["car"]
    page.page.click("#classes-clear")
    page.wait_items(3)
    # Hiding the boxes removes the red edge from the drawing.
    page.page.uncheck("#show-boxes")
    rgb, scale = page.canvas_pixels()
    assert _edge_hits(rgb, scale, DET_BOXES["person"], PERSON_RGB) < 0.5


def test_masks_semantic_and_classes_are_drawn(page: Page, workdir: Path) -> None:
    x1, y1, x2, y2, _ = SEG_BOX
    page.pick("seg/1", workdir / "photo.jpg")
    assert page.wait_items(1) == ["blob"]
    assert '"points": [' in page.json_text()
    with_mask, s = page.canvas_pixels()
    page.page.uncheck("#show-masks")
    without, _ = page.canvas_pixels()
    inside = (
        slice(int((y1 + 20) * s), int((y2 - 20) * s)),
        slice(int((x1 + 20) * s), int((x2 - 20) * s)),
    )
    outside = (slice(int(400 * s), int(600 * s)), slice(int(400 * s), int(600 * s)))
    assert np.abs(with_mask[inside].astype(int) - without[inside]).mean() > 15
    assert np.abs(with_mask[outside].astype(int) - without[outside]).mean() < 2
    page.page.check("#show-masks")

    page.pick("sem/1")  # same image, new model
    assert page.wait_items(2) == ["sky", "ground"]
    assert '"segmentation_mask"' in page.json_text() and "chars)" in page.json_text()
    page.page.wait_for_timeout(100)
    tinted, s = page.canvas_pixels()
    page.page.uncheck("#show-masks")
    plain, _ = page.canvas_pixels()
    top = (slice(int(40 * s), int(280 * s)), slice(None))
    bottom = (slice(int(360 * s), int(600 * s)), slice(None))
    diff_top = np.abs(tinted[top].astype(int) - plain[top]).mean(axis=(0, 1))
    diff_bottom = np.abs(tinted[bottom].astype(int) - plain[bottom]).mean(axis=(0, 1))
    assert diff_top.sum() > 20 and diff_bottom.sum() > 20
    assert not np.allclose(diff_top, diff_bottom, atol=3)  # two classes, two colours

    page.pick("cls/1")
    assert page.wait_items(3) == ["cat", "dog", "bird"]
    assert '"top": "cat"' in page.json_text()


def test_classification_overlay_applies_the_confidence_threshold(page: Page, workdir: Path) -> None:
    """Issue 21, point 6: at 50 % the overlay drew `cup 0.4%`. cls/1 answers cat 0.7,
    dog 0.2, bird 0.1: only the classes at or above the slider are drawn; the list beside
    the image keeps all three."""

    def labels_become(want: list[str]) -> None:
        page.page.wait_for_function(
            "want => JSON.stringify(window.cvserve.drawn().labels) === want",
            arg=json.dumps(want, separators=(",", ":")),
            timeout=15_000,
        )

    page.pick("cls/1", workdir / "photo.jpg")
    assert page.wait_items(3) == ["cat", "dog", "bird"]
    labels_become(["cat"])  # the default 50 %
    page.set_range("#confidence", 15)
    labels_become(["cat", "dog"])
    page.set_range("#confidence", 80)
    labels_become([])


def test_docs_render_offline(browser: Any, server_url: str) -> None:
    """Issue 21, point 5: /docs (linked from the page) loaded Swagger UI from a CDN and was
    blank on an air-gapped machine. With every request off 127.0.0.1 refused, it renders
    the operations, and it never tried to reach anywhere else."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    outside: list[str] = []

    def only_local(route: Any) -> None:
        host = httpx.URL(route.request.url).host
        if host in ("127.0.0.1", "localhost"):
            route.continue_()
        else:
            outside.append(route.request.url)
            route.abort("internetdisconnected")

    context.route("**/*", only_local)
    errors: list[str] = []
    try:
        page = context.new_page()
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(server_url + "/")
        page.wait_for_selector("body[data-ready=true]", timeout=15_000)
        with context.expect_page() as opened:
            page.click("a[href='/docs']")  # the page's own link, as a user follows it
        docs = opened.value
        docs.wait_for_selector(".opblock", timeout=20_000)
        paths = docs.locator(".opblock .opblock-summary-path").all_inner_texts()
        assert "/infer/{task_route}" in paths and "/model/registry" in paths, paths
        assert "/{dataset}/{version}" in paths, paths
        # An operation opens and shows its parameters: the UI runs, not just its markup.
        docs.locator(".opblock-summary-path", has_text="/{dataset}/{version}").first.click()
        docs.wait_for_selector(".opblock.is-open .parameters", timeout=10_000)
        assert "confidence" in docs.locator(".opblock.is-open .parameters").inner_text()
    finally:
        context.close()
    assert not outside, f"/docs reached beyond the server: {outside}"
    assert not errors, errors


def test_docs_assets_come_from_the_server(server_url: str) -> None:
    html = httpx.get(server_url + "/docs").text
    assert "cdn" not in html.lower() and "https://" not in html
    for asset in ("swagger-ui-bundle.js", "swagger-ui.css", "favicon.png"):
        assert f"/_docs/{asset}" in html
        r = httpx.get(f"{server_url}/_docs/{asset}")
        assert r.status_code == 200 and len(r.content) > 1000, asset
        assert (
            httpx.get(
                f"{server_url}/_docs/{asset}", headers={"If-None-Match": r.headers["etag"]}
            ).status_code
            == 304
        )
    assert httpx.get(server_url + "/_docs/../pyproject.toml").status_code == 404
    assert httpx.get(server_url + "/_docs/index.html").status_code == 404


def test_webcam_streams_frames_to_the_model(page: Page) -> None:
    page.pick("det/1")
    page.page.click("#camera-btn")
    page.page.wait_for_function(
        "document.querySelector('#status').textContent.includes('live') && "
        "document.querySelectorAll('#predictions .pred-item').length >= 1",
        timeout=15_000,
    )
    assert page.page.inner_text("#camera-label") == "Stop webcam"
    page.page.click("#camera-btn")
    assert page.page.inner_text("#camera-label") == "Use webcam"


# -- keypoints -------------------------------------------------------------------------------
def _has_colour(rgb: np.ndarray, scale: float, xy: tuple[float, float], colour: np.ndarray) -> bool:
    x, y = int(round(xy[0] * scale)), int(round(xy[1] * scale))
    patch = rgb[y - 3 : y + 4, x - 3 : x + 4].astype(int)
    return bool((np.abs(patch - colour) <= 40).all(-1).any())


def _mid(a: int, b: int) -> tuple[float, float]:
    (xa, ya), (xb, yb) = FACE_POINTS[a], FACE_POINTS[b]
    return (xa + xb) / 2, (ya + yb) / 2


def test_faces_draw_their_own_five_points_and_edges(page: Page, workdir: Path) -> None:
    page.pick("faces/1", workdir / "grey.png")
    assert page.wait_items(1) == ["face"]
    drawn = page.drawn()
    points = {p["id"]: (p["name"], p["x"], p["y"]) for p in drawn["points"]}
    assert points == {k: (FACE_NAMES[k], *FACE_POINTS[k]) for k in range(5)}
    edges = [(e["from"], e["to"]) for e in drawn["edges"]]
    assert edges == FACE_EDGES
    assert (1, 3) not in edges  # COCO's left_eye-left_ear: here an eye to a mouth corner
    assert "5 keypoints" in page.page.inner_text("#model-meta")
    # The pixels agree: red (the face class's colour) along its own edges, none on (1, 3).
    rgb, scale = page.canvas_pixels()
    for a, b in FACE_EDGES:
        assert _has_colour(rgb, scale, _mid(a, b), PERSON_RGB), (a, b)
    assert not _has_colour(rgb, scale, _mid(1, 3), PERSON_RGB)
    assert not _has_colour(rgb, scale, _mid(0, 3), PERSON_RGB)

    page.pick("marks/1")  # the same landmarks, no skeleton: points only
    page.page.wait_for_function("window.cvserve.drawn().points.length === 5", timeout=15_000)
    drawn = page.drawn()
    assert drawn["edges"] == []
    assert [p["name"] for p in drawn["points"]] == ["0", "1", "2", "3", "4"]
    rgb, scale = page.canvas_pixels()
    for a, b in FACE_EDGES + [(1, 3)]:
        assert not _has_colour(rgb, scale, _mid(a, b), PERSON_RGB), (a, b)


def test_pose_skeleton_and_palette_come_from_the_server(
    browser: Any, server_url: str, workdir: Path
) -> None:
    p = Page(browser, server_url)
    try:
        p.pick("pose/1", workdir / "grey.png")
        assert p.wait_items(1) == ["person"]
        drawn = p.drawn()
        assert [(e["from"], e["to"]) for e in drawn["edges"]] == COCO_SKELETON
        assert len(drawn["points"]) == 17 and drawn["points"][0]["name"] == "nose"
        assert not p.errors, p.errors
    finally:
        p.close()

    # The same page, told another skeleton and palette, draws those: nothing is built in.
    def models(route: Any) -> None:
        body = route.fetch().json()
        for m in body["models"]:
            if m["model_id"] == "pose/1":
                m["skeleton"] = [[0, 16]]
        route.fulfill(json=body)

    def config(route: Any) -> None:
        body = route.fetch().json()
        body["palette"] = [[0, 255, 0]]
        route.fulfill(json=body)

    p = Page(browser, server_url, routes={"**/models": models, "**/_web/config.json": config})
    try:
        p.pick("pose/1", workdir / "grey.png")
        assert p.wait_items(1) == ["person"]
        assert [(e["from"], e["to"]) for e in p.drawn()["edges"]] == [(0, 16)]
        rgb, scale = p.canvas_pixels()
        x1, y1, x2, y2, _ = POSE_BOX
        box = (x1, y1, x2, y2)
        assert _edge_hits(rgb, scale, box, np.array([0, 255, 0])) > 0.9
        assert _edge_hits(rgb, scale, box, PERSON_RGB) < 0.1
        assert not p.errors, p.errors
    finally:
        p.close()


# -- SAM -------------------------------------------------------------------------------------
def test_sam_clicks_segment_the_image(page: Page, workdir: Path) -> None:
    page.pick("sam/1", workdir / "photo.jpg")
    page.page.wait_for_selector("#sam-group:not([hidden])")
    assert page.page.is_hidden("#params-group")
    before, s = page.canvas_pixels()
    page.click_image(320, 300)
    assert page.wait_items(1) == ["segment 1"]
    text = page.json_text()
    score = re.search(r'"score": ([0-9.]+)', text)
    assert '"segments"' in text and score and abs(float(score.group(1)) - 0.9) < 1e-3
    after, _ = page.canvas_pixels()
    # Inside the disc (radius 20 around the click) but off the point marker: tinted.
    ring = after[int(300 * s) - 2 : int(300 * s) + 3, int(332 * s) - 2 : int(332 * s) + 3]
    orig = before[int(300 * s) - 2 : int(300 * s) + 3, int(332 * s) - 2 : int(332 * s) + 3]
    assert np.abs(ring.astype(int) - orig).mean() > 15
    far = (slice(int(500 * s), int(600 * s)), slice(int(40 * s), int(140 * s)))
    assert np.abs(after[far].astype(int) - before[far]).mean() < 2

    page.click_image(100, 550, modifiers=["Shift"])  # background point
    page.page.wait_for_function(
        "document.querySelector('#predictions .geo').textContent.includes('2 points')"
    )
    page.click_image(500, 100, button="right")  # background too
    page.page.wait_for_function(
        "document.querySelector('#predictions .geo').textContent.includes('3 points')"
    )
    page.page.click("#sam-undo")
    page.page.wait_for_function(
        "document.querySelector('#predictions .geo').textContent.includes('2 points')"
    )
    page.page.click("#sam-clear")
    page.wait_items(0)


# -- API keys --------------------------------------------------------------------------------
def test_api_key_is_asked_for_and_remembered(browser: Any, workdir: Path) -> None:
    with LiveServer(workdir / "store", api_keys=(KEY,)) as srv:
        p = Page(browser, srv.url)
        try:
            assert p.page.is_visible("#key-box")
            assert "key needed" in p.page.inner_text("#server-status")
            assert "not authorized" in p.page.inner_text("#error")
            p.page.fill("#api-key", KEY)
            p.page.click("#api-key-save")
            p.page.wait_for_function(
                "document.querySelectorAll('#model-select option').length >= 6"
            )
            assert p.page.is_hidden("#error")
            p.page.reload()
            p.page.wait_for_selector("body[data-ready=true]")
            p.pick("det/1", workdir / "photo.jpg")
            assert p.wait_items(2) == ["person", "car"]
            stored = p.page.evaluate("localStorage.getItem('cvserve.apiKey')")
            assert stored == KEY
            p.errors = [e for e in p.errors if "401" not in e]  # the first, key-less load
            assert not p.errors, p.errors
        finally:
            p.close()
