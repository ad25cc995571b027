"""Promptable segmentation jobs: the request schema, its checks, and the job handler.

A job is one stored image file plus point/box prompts normalised to 0..1. The handler
resolves the file, decodes it, gets the SAM embedding from the model's cache (keyed by
file id + content hash, so a re-upload is never served a stale embedding), runs the
decoder and turns the mask into polygons. Anything wrong with the file becomes a failed
item; the job then ends Failed with `failedItems`, never with a server error.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from cvserve.engine.deadline import reset_deadline, start_deadline
from cvserve.engine.promptable import Prompt, PromptResult
from cvserve.errors import BadRequest, CVServeError, Overloaded
from cvserve.jobs.files import FileMeta
from cvserve.jobs.polygons import segments_json
from cvserve.jobs.queue import Job
from cvserve.jobs.stores import FilesStore
from cvserve.jobs.workers import Outcome
from cvserve.settings import Settings
from cvserve.tasks import Task

if TYPE_CHECKING:
    from cvserve.engine import EngineAPI

KIND = "segment"
DEFAULT_MODEL = "mobilesam/1"
IMAGE_EXTENSIONS = (".jpeg", ".jpg", ".png")
IMAGE_MIME_TYPES = ("image/jpeg", "image/png")


# -- request schema ----------------------------------------------------------------------
class FileRef(BaseModel):
    model_config = ConfigDict(extra="forbid")

    fileId: int | None = Field(default=None, ge=1)
    fileExternalId: str | None = Field(default=None, min_length=1, max_length=255)

    @model_validator(mode="after")
    def _exactly_one(self) -> FileRef:
        if (self.fileId is None) == (self.fileExternalId is None):
            raise ValueError("each item needs exactly one of fileId or fileExternalId")
        return self


class Point(BaseModel):
    model_config = ConfigDict(extra="forbid")

    x: float
    y: float
    label: Literal[0, 1] = 1


class BoundingBox(BaseModel):
    model_config = ConfigDict(extra="forbid")

    xMin: float
    yMin: float
    xMax: float
    yMax: float


class SegmentRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    items: list[FileRef]
    points: list[Point] = Field(default_factory=list)
    boundingBox: BoundingBox | None = None
    model: str | None = None  # extension: a SAM model id other than the default


class JobItem(BaseModel):
    """The job's file: what was asked, and once found both of its ids (either may be null)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    fileId: int | None = None
    fileExternalId: str | None = None


class SegmentJob(BaseModel):
    """A segment job, typed from the HTTP body to the worker; stored as `payload()`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    items: list[JobItem]
    points: list[Point] = Field(default_factory=list)
    boundingBox: BoundingBox | None = None
    model: str = DEFAULT_MODEL

    def payload(self) -> dict[str, Any]:
        """The stored JSON (wire.platform answers from it): an item keeps only the ids
        it was given."""
        return {
            "items": [i.model_dump(exclude_unset=True) for i in self.items],
            "points": [p.model_dump() for p in self.points],
            "boundingBox": self.boundingBox.model_dump() if self.boundingBox else None,
            "model": self.model,
        }

    @classmethod
    def of(cls, job: Job) -> SegmentJob:
        return cls.model_validate(job.payload)


def validation_message(e: ValidationError) -> str:
    parts = []
    for err in e.errors():
        loc = ".".join(str(p) for p in err.get("loc", ()))
        msg = str(err.get("msg", "invalid")).removeprefix("Value error, ")
        parts.append(f"{loc}: {msg}" if loc else msg)
    return "; ".join(parts) or "invalid request body"


def check_prompt(points: list[Point], box: BoundingBox | None, *, normalised: bool = True) -> None:
    """The seed's rules: unique points, coordinates in 0..1, min < max, at least one prompt."""
    if not points and box is None:
        raise BadRequest("give at least one prompt: points and/or boundingBox")
    hi = 1.0 if normalised else float("inf")
    where = "between 0 and 1" if normalised else "at least 0"
    seen: set[tuple[float, float]] = set()
    for i, p in enumerate(points):
        if not (0.0 <= p.x <= hi and 0.0 <= p.y <= hi):
            raise BadRequest(f"points.{i}: x and y must be {where}")
        if (p.x, p.y) in seen:
            raise BadRequest(f"points.{i}: points must be unique; ({p.x}, {p.y}) is repeated")
        seen.add((p.x, p.y))
    if box is not None:
        values = (box.xMin, box.yMin, box.xMax, box.yMax)
        if not all(0.0 <= v <= hi for v in values):
            raise BadRequest(f"boundingBox: coordinates must be {where}")
        if not (box.xMin < box.xMax and box.yMin < box.yMax):
            raise BadRequest("boundingBox: xMin must be below xMax and yMin below yMax")


def parse_request(body: Any) -> SegmentRequest:
    try:
        req = SegmentRequest.model_validate(body)
    except ValidationError as e:
        raise BadRequest(validation_message(e)) from e
    if len(req.items) != 1:
        raise BadRequest("items must hold exactly one file reference")
    check_prompt(req.points, req.boundingBox)
    return req


def prompt_of(points: list[Point], box: BoundingBox | None, *, normalised: bool = True) -> Prompt:
    """The request's prompt in the engine's terms."""
    return Prompt(
        points=tuple((p.x, p.y, p.label) for p in points),
        box=(box.xMin, box.yMin, box.xMax, box.yMax) if box is not None else None,
        normalised=normalised,
    )


def file_problem(meta: FileMeta | None) -> str | None:
    """Why a stored file cannot be segmented, or None."""
    if meta is None:
        return "file not found"
    if not meta.name.lower().endswith(IMAGE_EXTENSIONS):
        return f"file name {meta.name!r} must end with .jpeg, .jpg or .png"
    if (meta.mime_type or "").lower() not in IMAGE_MIME_TYPES:
        return f"file mimeType {meta.mime_type!r} must be image/jpeg or image/png"
    if not meta.uploaded:
        return "file content has not been uploaded"
    return None


def item_ref(ref: dict[str, Any], meta: FileMeta | None = None) -> dict[str, Any]:
    """The platform's item: fileId and fileExternalId when known, else what was asked."""
    if meta is not None:
        return {"fileId": meta.id, "fileExternalId": meta.external_id}
    return {k: v for k, v in ref.items() if k in ("fileId", "fileExternalId")}


# -- the job handler ---------------------------------------------------------------------
# A job waits this long for its model's admission (busy with synchronous prompts) before
# it fails: a queued job is worth more than a 503.
BUSY_RETRY_S = 60.0


class SegmentHandler:
    """Runs a job on its worker thread through the engine's front door (`segment`): the
    same admission, lanes, deadline and metrics as a synchronous prompt."""

    def __init__(self, engine: EngineAPI, files: FilesStore, settings: Settings) -> None:
        self.engine = engine
        self.files = files
        self.settings = settings

    def __call__(self, job: Job) -> Outcome:
        spec = SegmentJob.of(job)
        ref = spec.items[0].model_dump(exclude_unset=True)
        meta = self.files.find(job.project, ref.get("fileId"), ref.get("fileExternalId"))
        item = item_ref(ref, meta)
        problem = file_problem(meta)
        if problem is not None:
            return _failed(item, problem)
        assert meta is not None
        model_id = spec.model
        try:
            self._check_model(model_id)  # loads it, or says why not
        except CVServeError as e:
            return _failed(item, f"model {model_id} is unavailable: {e.message}")

        def load() -> bytes:  # only on an embedding cache miss
            return self.files.read(meta)

        try:
            prompt = prompt_of(spec.points, spec.boundingBox)
            res = self._segment(model_id, meta.cache_key, load, prompt)
        except FileNotFoundError:
            return _failed(item, "file content is missing from the server's storage")
        except CVServeError as e:
            return _failed(item, f"cannot segment the file: {e.message}")
        segments = segments_json(res.mask, res.score)
        return Outcome(result={"items": [{**item, "segments": segments}]})

    def _check_model(self, model_id: str) -> None:
        if self.engine.model_info(model_id).task is not Task.PROMPTABLE_SEGMENTATION:
            raise BadRequest(f"model {model_id} is not a promptable (SAM) segmentation model")
        self._call(lambda: self.engine.load(model_id))

    def _segment(self, model_id: str, key: str, load: Any, prompt: Prompt) -> PromptResult:
        result: PromptResult = self._call(lambda: self.engine.segment(model_id, key, load, prompt))
        return result

    def _call(self, call: Any) -> Any:
        """call() on this worker thread's own event loop, within the request deadline; a
        busy model (503) is retried with backoff for BUSY_RETRY_S before the job fails."""
        give_up = time.monotonic() + BUSY_RETRY_S
        pause = 0.05
        while True:
            try:
                return asyncio.run(self._within_deadline(call))
            except Overloaded:
                if time.monotonic() + pause > give_up:
                    raise
                time.sleep(pause)
                pause = min(1.0, pause * 2)

    async def _within_deadline(self, call: Any) -> Any:
        token = start_deadline(self.settings.request_timeout_s)
        try:
            return await call()
        finally:
            reset_deadline(token)


def _failed(item: dict[str, Any], message: str) -> Outcome:
    return Outcome(
        result={"items": [], "failedItems": [{"errorMessage": message, "items": [item]}]},
        error=message,
    )
