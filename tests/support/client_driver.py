"""Runs the official clients (inference-sdk, roboflow) inside their own venv.

Reads a JSON list of jobs on stdin, prints one JSON line {"results": [...], "blocked": [...]}.
Each result is {"ok": true, "result": ...} or {"ok": false, "error": "Type: message"}.
Every connection to anything but loopback is refused and recorded in "blocked", so a test
can assert that no client made a cloud call. Imports nothing from cvserve or pytest.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import traceback
import warnings

BLOCKED: list[str] = []
_LOCAL = ("127.0.0.1", "::1", "localhost")
_real_getaddrinfo = socket.getaddrinfo
_real_connect = socket.socket.connect


def _guard_getaddrinfo(host, *args, **kwargs):
    name = host.decode() if isinstance(host, bytes) else str(host)
    if name not in _LOCAL:
        BLOCKED.append(name)
        raise OSError(f"client_driver: network access to {name!r} is blocked")
    return _real_getaddrinfo(host, *args, **kwargs)


def _guard_connect(self, address):
    if isinstance(address, tuple) and address and str(address[0]) not in _LOCAL:
        BLOCKED.append(str(address[0]))
        raise OSError(f"client_driver: connection to {address[0]!r} is blocked")
    return _real_connect(self, address)


socket.getaddrinfo = _guard_getaddrinfo
socket.socket.connect = _guard_connect
warnings.simplefilter("ignore")


def _jsonable(value):
    return json.loads(
        json.dumps(value, default=lambda o: list(o) if isinstance(o, tuple) else str(o))
    )


def _image_input(spec):
    if "path" in spec:
        return spec["path"]
    if "numpy" in spec:
        import cv2

        return cv2.imread(spec["numpy"])  # BGR, as OpenCV users hand it over
    if "pil" in spec:
        from PIL import Image

        return Image.open(spec["pil"]).convert("RGB")
    if "list" in spec:
        return [_image_input(s) for s in spec["list"]]
    raise ValueError(f"unknown image spec {spec}")


def run_sdk(job):
    from inference_sdk import InferenceConfiguration, InferenceHTTPClient

    client = InferenceHTTPClient(api_url=job["api_url"], api_key=job.get("api_key"))
    config = dict(job.get("config") or {})
    config.setdefault("api_key_transport", "legacy")
    client.configure(InferenceConfiguration(**config))
    if job.get("mode") == "v0":
        client.select_api_v0()
    if "call" in job:
        out = getattr(client, job["call"])(*job.get("args", []))
        return out.to_dict() if hasattr(out, "to_dict") else out
    result = client.infer(_image_input(job["image"]), model_id=job["model_id"])
    return result


def run_roboflow(job):
    from roboflow.models import (
        classification,
        instance_segmentation,
        keypoint_detection,
        object_detection,
        semantic_segmentation,
    )

    classes = {
        "ObjectDetectionModel": object_detection.ObjectDetectionModel,
        "InstanceSegmentationModel": instance_segmentation.InstanceSegmentationModel,
        "ClassificationModel": classification.ClassificationModel,
        "KeypointDetectionModel": keypoint_detection.KeypointDetectionModel,
        "SemanticSegmentationModel": semantic_segmentation.SemanticSegmentationModel,
    }
    for key, value in (job.get("env") or {}).items():
        os.environ[key] = value
    cls = classes[job["cls"]]
    kwargs = dict(job.get("init") or {})
    model = cls(job["api_key"], job["model"], **kwargs)
    group = model.predict(job["image"], **(job.get("predict") or {}))
    if job.get("save"):
        group.save(job["save"])
    return _jsonable(group.json())


def main() -> None:
    jobs = json.load(sys.stdin)
    results = []
    for job in jobs:
        try:
            fn = run_sdk if job["kind"] == "sdk" else run_roboflow
            results.append({"ok": True, "result": _jsonable(fn(job))})
        except Exception as e:  # report, keep going with the other jobs
            results.append(
                {
                    "ok": False,
                    "error": f"{type(e).__name__}: {e}",
                    "type": type(e).__name__,
                    "status_code": getattr(e, "status_code", None),
                    "api_message": getattr(e, "api_message", None),
                    "trace": traceback.format_exc()[-2000:],
                }
            )
    sys.stdout.write("\n" + json.dumps({"results": results, "blocked": BLOCKED}) + "\n")


if __name__ == "__main__":
    main()
