"""`cvserve predict`: in-process (the local store) and against a live server (--url)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest
from typer.testing import CliRunner

from cvserve.cli import app
from cvserve.predict import find_images, read_jsonl
from tests.support.live_server import LiveServer
from tests.support.synthetic_store import DET_BOXES, SEG_BOX, build_store, sample_image

KEY = "predict-key"
runner = CliRunner()


@pytest.fixture(scope="module")
def store_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("predict")
    build_store(d / "store", d / "work")
    return d / "store"


@pytest.fixture(scope="module")
def server(store_dir: Path) -> Iterator[LiveServer]:
    with LiveServer(store_dir, api_keys=(KEY,)) as srv:
        yield srv


def make_images(root: Path, n: int = 6, broken: bool = False) -> list[str]:
    """n images spread over root and root/sub/deeper (JPEG and PNG), plus noise files."""
    names = []
    for i in range(n):
        sub = ["", "sub", "sub/deeper"][i % 3]
        ext = ".png" if i % 2 else ".jpg"
        rel = f"{sub}/img{i}{ext}".lstrip("/")
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(root / rel), sample_image(seed=i)[:, :, ::-1])
        names.append(rel)
    (root / "notes.txt").write_text("not an image")
    (root / ".hidden").mkdir(exist_ok=True)
    cv2.imwrite(str(root / ".hidden" / "skip.jpg"), sample_image()[:, :, ::-1])
    if broken:
        (root / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
        names.append("broken.jpg")
    return sorted(names)


def predict(*args: str) -> object:
    return runner.invoke(app, ["predict", *args], catch_exceptions=False)


def test_find_images_folder_glob_file(tmp_path: Path) -> None:
    names = make_images(tmp_path / "src")
    found = find_images(str(tmp_path / "src"))
    assert [n for _, n in found] == names  # recursive, sorted, hidden and non-images skipped
    pngs = find_images(str(tmp_path / "src" / "**" / "*.png"))
    assert [n for _, n in pngs] == [n for n in names if n.endswith(".png")]
    one = find_images(str(tmp_path / "src" / "img0.jpg"))
    assert [n for _, n in one] == ["img0.jpg"]
    out = tmp_path / "src" / "out"
    out.mkdir()
    cv2.imwrite(str(out / "annotated.jpg"), sample_image()[:, :, ::-1])
    assert len(find_images(str(tmp_path / "src"), exclude=out)) == len(names)


def test_json_in_process_mirrors_the_tree_and_resumes(tmp_path: Path, store_dir: Path) -> None:
    src, out = tmp_path / "src", tmp_path / "out"
    names = make_images(src, n=6, broken=True)
    r = predict(str(src), "--model", "det/1", "--models-dir", str(store_dir), "--out", str(out))
    assert r.exit_code == 1, r.output  # one image failed
    assert "6 predicted" in r.output and "1 failed" in r.output and "broken.jpg" in r.output
    assert "person" in r.output and "time:" in r.output
    failures = [json.loads(line) for line in (out / "failures.jsonl").read_text().splitlines()]
    assert [f["file"] for f in failures] == ["broken.jpg"]
    for name in names:
        if name == "broken.jpg":
            assert not (out / "broken.jpg.json").exists()
            continue
        body = json.loads((out / f"{name}.json").read_text())
        assert body["image"] == {"width": 640, "height": 640}
        got = {p["class"]: p for p in body["predictions"]}
        assert set(got) == {"person", "car"}
        x1, y1, x2, y2, conf = DET_BOXES["person"]
        p = got["person"]
        assert (p["x"], p["y"], p["width"], p["height"]) == (
            (x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1,
        )  # fmt: skip
        assert p["confidence"] == pytest.approx(conf)

    # Resume: nothing left but the broken one; then a deleted result is redone alone.
    r = predict(str(src), "--model", "det/1", "--models-dir", str(store_dir), "--out", str(out))
    assert "resuming: 6 of 7" in r.output and "0 predicted" in r.output
    (out / "sub" / "img1.png.json").unlink()
    (src / "broken.jpg").unlink()
    r = predict(str(src), "--model", "det/1", "--models-dir", str(store_dir), "--out", str(out))
    assert r.exit_code == 0, r.output
    assert "1 predicted" in r.output and "5 already done" in r.output
    assert (out / "sub" / "img1.png.json").is_file()
    assert not (out / "failures.jsonl").exists()


def test_jsonl_repairs_a_torn_line_and_never_duplicates(tmp_path: Path, store_dir: Path) -> None:
    src, out = tmp_path / "src", tmp_path / "out"
    names = make_images(src, n=5)
    args = [str(src), "-m", "cls/1", "--models-dir", str(store_dir), "-o", str(out), "-f", "jsonl"]
    assert predict(*args).exit_code == 0
    path = out / "predictions.jsonl"
    rows = read_jsonl(path)
    assert sorted(r["file"] for r in rows) == names
    assert all(r["top"] == "cat" and r["image_path"] == r["file"] for r in rows)
    # Simulate a crash mid-write: drop the last two lines and leave half of one.
    lines = path.read_bytes().splitlines(keepends=True)
    path.write_bytes(b"".join(lines[:3]) + lines[3][: len(lines[3]) // 2])
    r = predict(*args)
    assert r.exit_code == 0 and "2 predicted" in r.output, r.output
    rows = read_jsonl(path)
    assert sorted(r["file"] for r in rows) == names  # each exactly once
    assert all(line.endswith(b"}") for line in path.read_bytes().splitlines())
    assert "cat" in r.output  # per-class summary (top class per image)


def test_coco_output_loads_in_pycocotools(tmp_path: Path, store_dir: Path) -> None:
    from pycocotools.coco import COCO

    src, out = tmp_path / "src", tmp_path / "out"
    make_images(src, n=4)
    r = predict(
        str(src / "**" / "*.*"), "-m", "seg/1", "--models-dir", str(store_dir), "-o", str(out),
        "--format", "coco", "--save-images",
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    coco = COCO(str(out / "coco.json"))
    assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == ["blob"]
    assert len(coco.getImgIds()) == 4 and len(coco.getAnnIds()) == 4
    x1, y1, x2, y2, score = SEG_BOX
    for ann in coco.loadAnns(coco.getAnnIds()):
        assert ann["bbox"] == [x1, y1, x2 - x1, y2 - y1]
        assert ann["score"] == pytest.approx(score)
        mask = coco.annToMask(ann)
        assert abs(int(mask.sum()) - (x2 - x1) * (y2 - y1)) < 0.03 * (x2 - x1) * (y2 - y1)
    # Annotated copies: the mask tint sits inside the box, the rest is the image.
    drawn = cv2.imread(str(out / "images" / "img0.jpg"))[:, :, ::-1]
    original = sample_image(seed=0)
    inside = (slice(y1 + 15, y2 - 15), slice(x1 + 15, x2 - 15))
    assert np.abs(drawn[inside].astype(int) - original[inside]).mean() > 20
    assert np.abs(drawn[420:, 420:].astype(int) - original[420:, 420:]).mean() < 6


def test_coco_keypoints_and_rle(tmp_path: Path, store_dir: Path) -> None:
    src = tmp_path / "src"
    make_images(src, n=2)
    r = predict(
        str(src), "-m", "pose/1", "--models-dir", str(store_dir), "-o", str(tmp_path / "pose"),
        "-f", "coco",
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    coco = json.loads((tmp_path / "pose" / "coco.json").read_text())
    assert coco["categories"][0]["keypoints"][0] == "nose"
    assert len(coco["categories"][0]["skeleton"]) == 19
    ann = coco["annotations"][0]
    assert len(ann["keypoints"]) == 51 and ann["num_keypoints"] == 17
    r = predict(
        str(src), "-m", "seg/1", "--models-dir", str(store_dir), "-o", str(tmp_path / "rle"),
        "-f", "coco", "--mask-format", "rle",
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    from pycocotools.coco import COCO

    c = COCO(str(tmp_path / "rle" / "coco.json"))
    ann = c.loadAnns(c.getAnnIds())[0]
    assert isinstance(ann["segmentation"], dict)
    assert ann["area"] == pytest.approx(200 * 160, rel=0.03)
    # RLE segmentations also load as detection results (pycocotools' evaluation path).
    res = c.loadRes(json.loads((tmp_path / "rle" / "coco.json").read_text())["annotations"])
    assert len(res.getAnnIds()) == 2


def test_usage_errors_exit_2(tmp_path: Path, store_dir: Path) -> None:
    src = tmp_path / "src"
    make_images(src, n=1)
    base = ["--models-dir", str(store_dir), "-o", str(tmp_path / "o")]
    r = predict(str(src), "-m", "nope/1", *base)
    assert r.exit_code == 2 and "not in the model store" in r.output
    r = predict(str(src), "-m", "cls/1", "-f", "coco", *base)
    assert r.exit_code == 2 and "COCO output is for detection" in r.output
    r = predict(str(tmp_path / "missing"), "-m", "det/1", *base)
    assert r.exit_code == 2 and "no such file" in r.output
    (tmp_path / "empty").mkdir()
    r = predict(str(tmp_path / "empty"), "-m", "det/1", *base)
    assert r.exit_code == 2 and "no images" in r.output
    r = predict(str(src), "-m", "det/1", "-f", "xml", *base)
    assert r.exit_code == 2
    r = predict(str(src), "-m", "det/1", "--confidence", "500", *base)
    assert r.exit_code == 2 and "confidence" in r.output


def test_url_mode_matches_in_process(tmp_path: Path, store_dir: Path, server: LiveServer) -> None:
    src = tmp_path / "src"
    names = make_images(src, n=6)
    common = ["-m", "det/1", "--confidence", "30", "--classes", "person,dog"]
    r = predict(str(src), *common, "--models-dir", str(store_dir), "-o", str(tmp_path / "local"))
    assert r.exit_code == 0, r.output
    r = predict(
        str(src), *common, "--url", server.url, "--api-key", KEY, "-o", str(tmp_path / "remote"),
        "--save-images", "-j", "3",
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    assert "6 predicted" in r.output

    def strip(body: dict) -> list:
        return [{k: v for k, v in p.items() if k != "detection_id"} for p in body["predictions"]]

    for name in names:
        local = json.loads((tmp_path / "local" / f"{name}.json").read_text())
        remote = json.loads((tmp_path / "remote" / f"{name}.json").read_text())
        assert strip(local) == strip(remote)
        assert [p["class"] for p in remote["predictions"]] == ["person", "dog"]
    drawn = cv2.imread(str(tmp_path / "remote" / "images" / names[1]))[:, :, ::-1]
    x1, y1, x2, y2, _ = DET_BOXES["person"]
    edge = drawn[y1 + 20 : y2 - 20, x1].astype(int)
    assert (np.abs(edge - [255, 56, 56]) <= 30).all(-1).mean() > 0.9

    r = predict(str(src), "-m", "det/1", "--url", server.url, "-o", str(tmp_path / "nokey"))
    assert r.exit_code == 2 and "not authorized" in r.output
    r = predict(
        str(src), "-m", "zzz/1", "--url", server.url, "--api-key", KEY, "-o", str(tmp_path / "z")
    )
    assert r.exit_code == 2 and "not served by" in r.output


def test_console_script_runs(tmp_path: Path, store_dir: Path) -> None:
    src = tmp_path / "src"
    make_images(src, n=2)
    env = dict(os.environ, CVSERVE_MODELS_DIR=str(store_dir))
    proc = subprocess.run(
        [sys.executable, "-m", "cvserve.cli", "predict", str(src), "-m", "sem/1", "-o", str(tmp_path / "o")],
        capture_output=True, text=True, env=env, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "2 predicted" in proc.stderr and "sky" in proc.stderr
    body = json.loads((tmp_path / "o" / "img0.jpg.json").read_text())
    assert body["class_map"] == {"0": "background", "1": "sky", "2": "ground"}
