"""What a caller asks for in `POST /streams` (SPEC.md section 9), checked before anything runs."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from cvserve.errors import BadRequest
from cvserve.params import RenderOptions, parse_hosted
from cvserve.tasks import InferParams, Task

TRACKERS = ("bytetrack", "sort", "ocsort")
Point = tuple[float, float]


class LineSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=100)
    start: Point
    end: Point
    anchor: Literal["bottom_center", "center"] = "bottom_center"


class ZoneSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=100)
    polygon: list[Point] = Field(min_length=3, max_length=1000)


class StreamRequest(BaseModel):
    """The body of `POST /streams`."""

    model_config = ConfigDict(extra="forbid")
    source: str = Field(
        description="file:///dir/a.mp4 (inside a --stream-dir), rtsp(s)://, http(s):// "
        "(HLS, MJPEG, any stream FFmpeg reads) or /dev/videoN",
        min_length=1,
        max_length=4096,
    )
    model_id: str = Field(description="dataset/version", min_length=3, max_length=200)
    params: dict[str, str | int | float | bool] = Field(
        default_factory=dict,
        description="The hosted route's query parameters and rules (confidence, overlap, "
        "classes, max_detections, keypoint_confidence, ...)",
    )
    tracker: Literal["bytetrack", "sort", "ocsort"] | None = None
    realtime: bool = Field(False, description="Files: read at native frame rate")
    max_fps: float | None = Field(None, gt=0, le=1000, description="Cap on inferred fps")
    lines: list[LineSpec] = Field(default_factory=list, max_length=100)
    zones: list[ZoneSpec] = Field(default_factory=list, max_length=100)

    @field_validator("lines", "zones")
    @classmethod
    def _unique_names(cls, value: list[Any]) -> list[Any]:
        names = [item.name for item in value]
        if len(set(names)) != len(names):
            raise ValueError("names must be unique")
        return value


def hosted_params(request: StreamRequest, task: Task) -> tuple[InferParams, RenderOptions]:
    """The stream's params under the hosted route's parser, so the rules are the same."""
    query = {k: _text(v) for k, v in request.params.items()}
    params, render = parse_hosted(query, task)
    return params, RenderOptions(
        format="json",
        stroke=render.stroke,
        labels=render.labels,
        image_name=render.image_name,
        mask_format=render.mask_format,
    )


def check_request(request: StreamRequest, task: Task) -> None:
    """400 for what the model cannot do: tracking and lines need boxes."""
    if (request.tracker or request.lines or request.zones) and not task.detection_like:
        raise BadRequest(
            f"tracker, lines and zones need a detector (object detection, instance "
            f"segmentation or keypoints); model {request.model_id} is {task.value}"
        )
    if request.lines and request.tracker is None:
        raise BadRequest("lines count tracked objects: set tracker (bytetrack, sort or ocsort)")


def _text(value: str | int | float | bool) -> str:
    return ("true" if value else "false") if isinstance(value, bool) else str(value)
