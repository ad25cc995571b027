"""The data platform's JSON for files and segment jobs (SPEC section 4): the server's
encoder and a typed decoder for clients and tests, side by side."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the server's records; the decoder side needs none of them
    from cvserve.jobs.files import FileMeta
    from cvserve.jobs.queue import Job


# -- encoder (server) --------------------------------------------------------------------
def file_json(meta: FileMeta, upload_url: str | None = None) -> dict[str, Any]:
    """The platform's file object (camelCase); `uploadUrl` only where one is given."""
    out = meta.as_api()
    if upload_url is not None:
        out["uploadUrl"] = upload_url
    return out


def prompt_json(payload: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"points": payload.get("points") or []}
    if payload.get("boundingBox") is not None:
        out["boundingBox"] = payload["boundingBox"]
    return out


def _job_head(job: Job) -> dict[str, Any]:
    return {
        "status": job.status.value,
        "createdTime": job.created_time,
        "startTime": job.start_time if job.start_time is not None else job.created_time,
        "statusTime": job.status_time,
        "jobId": job.id,
    }


def submitted_json(job: Job) -> dict[str, Any]:
    """The answer to a job's submission: its items and prompt at the top level."""
    return {
        **_job_head(job),
        "items": job.payload["items"],
        **prompt_json(job.payload),
        "errorMessage": None,
    }


def job_json(job: Job) -> dict[str, Any]:
    """A job as GET answers it: results per item once done, failedItems when it failed."""
    out = _job_head(job)
    result = job.result or {}
    out["items"] = result.get("items", [] if job.status.done else job.payload["items"])
    out["prompt"] = prompt_json(job.payload)
    out["errorMessage"] = job.error
    failed = result.get("failedItems")
    if not failed and job.error:  # failed without a handler's verdict (e.g. gave up)
        failed = [{"errorMessage": job.error, "items": job.payload["items"]}]
    if failed:
        out["failedItems"] = failed
    return out


# -- decoder (clients, tests) ------------------------------------------------------------
@dataclass(frozen=True)
class Vertex:
    x: float
    y: float
    confidence: float


@dataclass(frozen=True)
class Polygon:
    vertices: list[Vertex]
    confidence: float


@dataclass(frozen=True)
class Segment:
    score: float
    polygons: list[Polygon]


@dataclass(frozen=True)
class JobItem:
    file_id: int | None
    file_external_id: str | None
    segments: list[Segment] = field(default_factory=list)


@dataclass(frozen=True)
class FailedItems:
    error_message: str
    items: list[JobItem]


@dataclass(frozen=True)
class SegmentJob:
    job_id: int
    status: str  # Queued, Running, Completed, Failed
    created_time: int
    start_time: int
    status_time: int
    items: list[JobItem]
    points: list[dict[str, Any]]
    bounding_box: dict[str, float] | None
    error_message: str | None
    failed_items: list[FailedItems] = field(default_factory=list)

    @property
    def done(self) -> bool:
        return self.status in ("Completed", "Failed")


def _segments(raw: list[dict[str, Any]]) -> list[Segment]:
    return [
        Segment(
            score=float(s["score"]),
            polygons=[
                Polygon(
                    [
                        Vertex(float(v["x"]), float(v["y"]), float(v["confidence"]))
                        for v in p["vertices"]
                    ],
                    float(p["confidence"]),
                )
                for p in s["polygons"]
            ],
        )
        for s in raw
    ]


def _item(raw: dict[str, Any]) -> JobItem:
    return JobItem(
        raw.get("fileId"), raw.get("fileExternalId"), _segments(raw.get("segments") or [])
    )


def parse_job(body: dict[str, Any]) -> SegmentJob:
    """A submitted or fetched job's JSON -> SegmentJob (either shape of the prompt)."""
    prompt = body.get("prompt") or body
    return SegmentJob(
        job_id=int(body["jobId"]),
        status=str(body["status"]),
        created_time=int(body["createdTime"]),
        start_time=int(body["startTime"]),
        status_time=int(body["statusTime"]),
        items=[_item(i) for i in body.get("items") or []],
        points=list(prompt.get("points") or []),
        bounding_box=prompt.get("boundingBox"),
        error_message=body.get("errorMessage"),
        failed_items=[
            FailedItems(str(f["errorMessage"]), [_item(i) for i in f.get("items") or []])
            for f in body.get("failedItems") or []
        ],
    )
