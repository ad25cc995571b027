"""format=image / image_and_json: annotated JPEGs of the input's size, stroke and labels."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator

import numpy as np
import pytest
import simplejpeg
from fastapi.testclient import TestClient

from cvserve.render.annotate import color
from tests.conftest import add_model, build_client, make_store
from tests.support.synthetic import (
    constant_model,
    disc_proto,
    jpeg_bytes,
    one_hot,
    png_bytes,
    seg_protos,
    ultralytics_meta,
    yolo_head,
)

W, H = 640, 480  # letterbox 640: r = 1, top = 80
BOX = (100, 100, 300, 250)
IMG = png_bytes(np.full((H, W, 3), 40, np.uint8))


@pytest.fixture(scope="module")
def client(tmp_path_factory) -> Iterator[TestClient]:
    tmp = tmp_path_factory.mktemp("render")
    store = make_store(tmp)
    x1, y1, x2, y2 = BOX
    det_head = yolo_head(
        [((x1 + x2) / 2, (y1 + y2) / 2 + 80, x2 - x1, y2 - y1)], [[0.9, 0.0]], candidates=8
    )
    names = ["cat", "dog"]
    add_model(
        store,
        "det/1",
        constant_model(tmp / "d.onnx", [det_head], metadata=ultralytics_meta("detect", names)),
    )
    seg_head = yolo_head(
        [((x1 + x2) / 2, (y1 + y2) / 2 + 80, x2 - x1, y2 - y1)],
        [[0.0, 0.9]],
        [one_hot(0)],
        candidates=8,
    )
    protos = seg_protos([disc_proto((160, 160), (50, 64), 20)])
    add_model(
        store,
        "seg/1",
        constant_model(
            tmp / "s.onnx", [seg_head, protos], metadata=ultralytics_meta("segment", names)
        ),
    )
    extra = [v for k in range(17) for v in (120 + 10 * k, 190 + 5 * k, 0.9)]
    pose_head = yolo_head([(200, 255, 200, 150)], [[0.9]], [extra], candidates=8)
    add_model(
        store,
        "pose/1",
        constant_model(
            tmp / "p.onnx",
            [pose_head],
            metadata=ultralytics_meta("pose", ["person"], kpt_shape="[17, 3]"),
        ),
    )
    add_model(
        store,
        "cls/1",
        constant_model(
            tmp / "c.onnx",
            [np.array([[0.3, 0.7]], np.float32)],
            input_shape=(1, 3, 224, 224),
            metadata=ultralytics_meta("classify", names, imgsz=224),
        ),
    )
    sem = np.zeros((1, 2, 32, 32), np.float32)
    sem[0, 1, 8:24, 8:24] = 5.0
    (tmp / "sem.json").write_text(
        json.dumps(
            {
                "task": "semantic-segmentation",
                "family": "semantic",
                "class_names": ["background", "thing"],
                "preprocess": {"resize": "stretch", "size": [64, 64]},
            }
        )
    )
    add_model(
        store,
        "sem/1",
        constant_model(tmp / "model.onnx", [sem], input_shape=(1, 3, 64, 64)),
        config=tmp / "sem.json",
    )
    with build_client(store) as c:
        yield c


def _get(client, model, expect=200, **params):
    r = client.post(
        f"/{model}",
        params={k: str(v) for k, v in params.items()},
        content=base64.b64encode(IMG),
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert r.status_code == expect, r.text
    return r


def _jpeg(data: bytes) -> np.ndarray:
    assert data[:3] == b"\xff\xd8\xff"
    return simplejpeg.decode_jpeg(data, colorspace="RGB")


def test_format_image_is_a_jpeg_of_the_input_size(client):
    r = _get(client, "det/1", format="image")
    assert r.headers["content-type"] == "image/jpeg"
    img = _jpeg(r.content)
    assert img.shape == (H, W, 3)


@pytest.mark.parametrize("stroke", [1, 5])
def test_stroke_draws_the_box_outline(client, stroke):
    img = _jpeg(_get(client, "det/1", format="image", stroke=stroke).content).astype(int)
    x1, y1, x2, y2 = BOX
    red = np.array(color(0))
    mid = (x1 + x2) // 2
    # the top edge, inside the stroke band
    band = (
        img[y1 : y1 + stroke, mid - 20 : mid + 20] if stroke > 1 else img[y1, mid - 20 : mid + 20]
    )
    assert np.abs(band.reshape(-1, 3) - red).max(axis=1).mean() < 60
    # just outside the band: still the grey background
    outside = img[y1 + stroke + 3, mid - 20 : mid + 20]
    assert np.abs(outside - 40).max() < 25
    # far away from the box nothing is drawn
    assert np.abs(img[400:470, 500:630] - 40).max() < 12


def test_labels_parameter(client):
    off = _get(client, "det/1", format="image", labels="false").content
    default = _get(client, "det/1", format="image").content
    on = _get(client, "det/1", format="image", labels="true").content
    assert off == default  # deterministic encoding: same picture, same bytes
    assert on != off
    assert _get(client, "det/1", format="image", labels="True").content == on
    assert _get(client, "det/1", format="image", labels="False").content == off
    a, b = _jpeg(on).astype(int), _jpeg(off).astype(int)
    x1, y1 = BOX[:2]
    # the label is drawn just above the box's top-left corner
    assert np.abs(a[y1 - 12 : y1, x1 : x1 + 40] - b[y1 - 12 : y1, x1 : x1 + 40]).max() > 100
    assert np.abs(a[400:, 400:] - b[400:, 400:]).max() < 12


def test_image_and_json(client):
    plain = _get(client, "det/1").json()
    both = _get(client, "det/1", format="image_and_json", stroke=3, labels="true").json()
    assert "visualization" not in plain
    strip = lambda preds: [{k: v for k, v in p.items() if k != "detection_id"} for p in preds]  # noqa: E731
    assert strip(both["predictions"]) == strip(plain["predictions"])
    assert both["image"] == {"width": W, "height": H}
    vis = base64.b64decode(both["visualization"])
    assert _jpeg(vis).shape == (H, W, 3)
    image_only = _get(client, "det/1", format="image", stroke=3, labels="true").content
    assert vis == image_only


@pytest.mark.parametrize("model", ["det/1", "seg/1", "pose/1", "cls/1", "sem/1"])
@pytest.mark.parametrize("fmt", ["image", "image_and_json"])
def test_every_task_renders(client, model, fmt):
    r = _get(client, model, format=fmt, labels="true", stroke=2)
    data = r.content if fmt == "image" else base64.b64decode(r.json()["visualization"])
    img = _jpeg(data)
    assert img.shape == (H, W, 3)
    assert np.abs(img.astype(int) - 40).max() > 50  # something was drawn


def test_segment_mask_is_tinted(client):
    img = _jpeg(_get(client, "seg/1", format="image").content).astype(int)
    # disc centre in proto cells (50, 64) -> input (200, 256) -> image (200, 176)
    assert np.abs(img[170:182, 194:206] - 40).max() > 40
    assert np.abs(img[400:470, 500:630] - 40).max() < 12


def test_jpeg_input_renders_jpeg(client):
    data = jpeg_bytes(np.full((H, W, 3), 40, np.uint8))
    r = client.post(
        "/det/1", params={"format": "image"}, content=data, headers={"Content-Type": "image/jpeg"}
    )
    assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"
    assert _jpeg(r.content).shape == (H, W, 3)
