"""Ultralytics' own export and predict, run inside the tooling venv (.cache/ultralytics-venv).

Used by tests/test_ultralytics_parity.py; imports nothing from cvserve or pytest.
stdin: {"out": DIR, "export": [{"name", "yaml", "imgsz", "seed"}],
        "predict": [{"name", "model", "image", "conf", "iou", "imgsz"}]}
Writes DIR/<name>.onnx for exports and prints one JSON line: {"exports": {name: path},
"predict": {name: {...}}, "versions": {...}}. Masks go to DIR/<name>-masks.npz.

torchvision from PyPI is a CUDA build whose C++ ops do not load beside the CPU torch
wheel, and `import torchvision` then fails registering fakes for torchvision::nms/qnms.
Ultralytics imports torchvision for NMS and for its classification transforms (pure
Python), so those two operator schemas are defined here first, and torchvision.ops.nms
is Ultralytics' own TorchNMS ("matches torchvision behavior exactly").
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time

_connect = socket.socket.connect


def _local_only(sock: socket.socket, address: object) -> None:
    """No model hub, font or telemetry download: refuse any non-loopback connection."""
    host = address[0] if isinstance(address, tuple) else address
    if isinstance(host, str) and host not in ("127.0.0.1", "::1", "localhost"):
        raise OSError(f"ultralytics_reference: network access to {host} is blocked")
    _connect(sock, address)


socket.socket.connect = _local_only  # type: ignore[method-assign]
os.environ.setdefault("YOLO_OFFLINE", "1")
os.environ.setdefault("YOLO_AUTOINSTALL", "false")
os.environ.setdefault("YOLO_VERBOSE", "false")

import numpy as np  # noqa: E402
import torch  # noqa: E402

_lib = torch.library.Library("torchvision", "DEF")
_lib.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
_lib.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")


def _nms(dets: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    from ultralytics.utils.nms import TorchNMS

    return TorchNMS.nms(dets, scores, iou_threshold)


_lib.impl("nms", _nms, "CPU")

import torchvision  # noqa: E402  (now imports; its ops module still asserts the C++ ops)

torchvision.ops.nms = torchvision.ops.boxes.nms = _nms


def _calibrate(net: torch.nn.Module, imgsz: int, images: list[str]) -> None:
    """Freshly initialised YOLOs are degenerate: activations fade through the depth, so
    every anchor of a stride gets the same score (the head's bias prior), box size and a
    near-zero mask. Recomputing the BatchNorm statistics on a few real images brings every
    layer back to unit scale, so the random network answers differently per anchor and
    per image -- something worth comparing -- while staying an ordinary Ultralytics model."""
    import cv2

    batches = []
    for path in images:
        bgr = cv2.imread(path, cv2.IMREAD_COLOR)
        rgb = cv2.resize(bgr, (imgsz, imgsz), interpolation=cv2.INTER_LINEAR)[..., ::-1]
        batches.append(torch.from_numpy(rgb.copy()).permute(2, 0, 1).float()[None] / 255)
    gen = torch.Generator().manual_seed(1)
    batches.append(torch.rand((2, 3, imgsz, imgsz), generator=gen))
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None  # a cumulative average over the calibration batches
    net.train()
    with torch.no_grad():
        for batch in batches:
            net(batch)
    net.eval()
    # The heads' last convolutions (boxes, class scores, mask coefficients / keypoints)
    # still answer close to their priors; a larger gain spreads scores from ~1e-4 to ~0.5,
    # makes boxes of many sizes and masks with clear edges.
    head = net.model[-1]
    for branch, gain in (("cv2", 3.0), ("cv3", 4.0), ("cv4", 4.0)):
        for seq in getattr(head, branch, None) or []:
            convs = [m for m in seq.modules() if isinstance(m, torch.nn.Conv2d)]
            if convs:
                convs[-1].weight.data.mul_(gain)
    if isinstance(getattr(head, "linear", None), torch.nn.Linear):  # Classify: peakier softmax
        head.linear.weight.data.mul_(30.0)


def export(spec: dict, out: str) -> str:
    import shutil

    from ultralytics import YOLO

    torch.manual_seed(int(spec.get("seed", 0)))
    model = YOLO(spec["yaml"])  # random weights from the architecture file, no download
    _calibrate(model.model, int(spec["imgsz"]), spec.get("calibrate", []))
    path = model.export(format="onnx", imgsz=int(spec["imgsz"]), simplify=True)
    dest = os.path.join(out, spec["name"] + ".onnx")
    shutil.move(path, dest)
    return dest


def predict(spec: dict, out: str) -> dict:
    from ultralytics import YOLO
    from ultralytics.utils import ops

    model = YOLO(spec["model"], task=spec.get("task"))
    kwargs = dict(
        conf=float(spec.get("conf", 0.25)),
        iou=float(spec.get("iou", 0.7)),
        imgsz=int(spec["imgsz"]),
        max_det=int(spec.get("max_det", 300)),
        device="cpu",
        verbose=False,
        save=False,
    )
    t0 = time.perf_counter()
    (res,) = model.predict(spec["image"], **kwargs)
    elapsed = time.perf_counter() - t0
    body: dict = {"names": {int(k): v for k, v in res.names.items()}, "seconds": elapsed}
    body["orig_shape"] = list(res.orig_shape)
    # The exact input tensor Ultralytics' predictor feeds the model for this image.
    import cv2

    tensor = model.predictor.preprocess([cv2.imread(spec["image"], cv2.IMREAD_COLOR)])
    body["input"] = os.path.join(out, spec["name"] + "-input.npy")
    np.save(body["input"], tensor.float().numpy())
    if res.probs is not None:
        body["probs"] = res.probs.data.float().tolist()
        return body
    boxes = res.boxes
    body["boxes"] = boxes.xyxy.float().tolist()
    body["conf"] = boxes.conf.float().tolist()
    body["cls"] = [int(c) for c in boxes.cls.tolist()]
    if res.keypoints is not None:
        body["keypoints"] = res.keypoints.data.float().tolist()  # (N, K, 3) image pixels
    if res.masks is not None:
        # Default predict: masks at the letterboxed input size; into image pixels the way
        # Ultralytics itself does it (scale_masks crops the padding, resizes bilinearly).
        data = res.masks.data.float()
        default = ops.scale_masks(data[None], res.orig_shape)[0] > 0.5
        # retina_masks=True: Ultralytics' native-resolution path (process_mask_native).
        (native,) = model.predict(spec["image"], retina_masks=True, **kwargs)
        retina = native.masks.data > 0.5
        path = os.path.join(out, spec["name"] + "-masks.npz")
        np.savez_compressed(
            path,
            default=np.packbits(default.numpy(), axis=-1),
            retina=np.packbits(retina.numpy(), axis=-1),
            width=res.orig_shape[1],
        )
        body["masks"] = path
        body["retina_boxes"] = native.boxes.xyxy.float().tolist()
        body["retina_conf"] = native.boxes.conf.float().tolist()
    return body


def main() -> None:
    job = json.load(sys.stdin)
    out = job["out"]
    os.makedirs(out, exist_ok=True)
    import ultralytics

    result: dict = {
        "exports": {},
        "predict": {},
        "versions": {"ultralytics": ultralytics.__version__, "torch": torch.__version__},
    }
    for spec in job.get("export", []):
        result["exports"][spec["name"]] = export(spec, out)
    for spec in job.get("predict", []):
        result["predict"][spec["name"]] = predict(spec, out)
    sys.stdout.write("\n" + json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
