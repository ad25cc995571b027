"""A small Python SDK for a cvserve server (or anything speaking the hosted inference API).

    import cvserve

    client = cvserve.Client("http://127.0.0.1:9001", api_key="...")
    model = client.model("coco/1")
    result = model.predict("img.jpg", confidence=40, overlap=30)
    print(result.json())            # the server's JSON, seed field names
    result.save("prediction.jpg")   # boxes, labels, masks, keypoints or classes drawn
    detections = result.to_supervision()  # supervision.Detections, if installed

Names follow the official `roboflow` package where they overlap: `predict(image,
confidence=40, overlap=30, hosted=False)`, `.json()`, `.save(path)`. Images may be a path,
an http(s) URL, encoded bytes, a numpy array (OpenCV's BGR order, like the `roboflow`
package and `supervision`; pass `channels="rgb"` for RGB arrays) or a PIL image.

With `hosted=True` the URL is sent as `?image=` and the *server* fetches it (its SSRF
guard applies); with `hosted=False` a URL is downloaded by the client and uploaded, which
also works for hosts the server may not reach.

Errors raise `CVServeHTTPError` (with `.status` and `.message`); 429, 503 and 504 are
retried (honouring `Retry-After`) before giving up, as the official SDK does.
"""

from __future__ import annotations

from cvserve.client.api import Client, Model
from cvserve.client.inputs import ImageLike as ImageLike
from cvserve.client.results import PredictionResult, SegmentResult
from cvserve.client.streams import Stream, Streams
from cvserve.client.transport import DEFAULT_URL as DEFAULT_URL
from cvserve.client.transport import RETRY_STATUSES as RETRY_STATUSES
from cvserve.client.transport import CVServeHTTPError
from cvserve.wire.hosted import prediction_from_json
from cvserve.wire.hosted import rle_decode as rle_decode
from cvserve.wire.hosted import task_of as task_of

__all__ = [
    "Client",
    "CVServeHTTPError",
    "Model",
    "PredictionResult",
    "SegmentResult",
    "Stream",
    "Streams",
    "prediction_from_json",
]
