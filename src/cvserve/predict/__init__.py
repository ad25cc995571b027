"""Bulk prediction: `cvserve predict SOURCE --model ID` over an image, a folder or a glob.

In-process by default (the model is loaded from the local store and run here, producing
exactly the JSON the server would), or against a server with `url`. Outputs, under `out`:
- `json`: one `<relative path>.json` per image, written atomically (the hosted JSON);
- `jsonl`: `predictions.jsonl`, one line per image: `{"file": ..., <hosted JSON>}`;
- `coco`: `predictions.jsonl` as above plus `coco.json` (images, categories, annotations
  with `score`, boxes, polygon or RLE segmentations, keypoints), detection-like tasks only.
Re-running the same command resumes: images already in the output are skipped (a line cut
short by a crash is dropped). `--save-images` also writes annotated copies under
`images/`. Failures are listed in `failures.jsonl` and retried by the next run.
"""

from cvserve.predict.backends import Backend, LocalBackend, RemoteBackend
from cvserve.predict.coco import to_coco
from cvserve.predict.options import (
    COCO_NAME,
    FAILURES_NAME,
    IMAGE_EXTENSIONS,
    JSONL_NAME,
    PredictError,
    PredictOptions,
    Summary,
    parameters_from_flags,
)
from cvserve.predict.outputs import CocoOutput, JsonFiles, JsonLines, Output, read_jsonl
from cvserve.predict.runner import run_predict
from cvserve.predict.sources import find_images

__all__ = [
    "COCO_NAME",
    "FAILURES_NAME",
    "IMAGE_EXTENSIONS",
    "JSONL_NAME",
    "Backend",
    "CocoOutput",
    "JsonFiles",
    "JsonLines",
    "LocalBackend",
    "Output",
    "PredictError",
    "PredictOptions",
    "parameters_from_flags",
    "RemoteBackend",
    "Summary",
    "find_images",
    "read_jsonl",
    "run_predict",
    "to_coco",
]
