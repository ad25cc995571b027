"""Promptable segmentation under `/api/v1/projects/{project}` (SPEC section 4).

Jobs (header `cdf-version: beta` required; `alpha` and dated forms such as `20230101-beta`
are accepted too)
- `POST /context/vision/segment` `{items: [{fileId} | {fileExternalId}], points: [{x, y,
  label}], boundingBox?: {xMin, yMin, xMax, yMax}, model?}` (coordinates 0..1) -> 200 job
  `{status: "Queued", createdTime, startTime, statusTime, jobId, items, points, boundingBox,
  errorMessage: null}`. `startTime` equals `createdTime` until a worker starts the job.
- `GET /context/vision/segment?limit=N&cursor=C` -> `{items: [job, ...], nextCursor}`: the
  project's jobs newest first, each as GET by id answers it; `limit` 1..1000 (default 100);
  `nextCursor` (opaque) fetches the next page, null on the last one.
- `GET /context/vision/segment/{jobId}` -> `{..., items: [{fileId, fileExternalId,
  segments: [{score, polygons: [{vertices: [{x, y, confidence}], confidence}]}]}],
  prompt: {points, boundingBox}, errorMessage, failedItems?}`.
  A missing or unusable file is a failed item: the job ends Failed with `failedItems`.

Synchronous convenience (no header needed; for the web page and scripts)
- `POST /context/vision/segment/sync` JSON `{image?: base64 (data: URI allowed) | fileId? |
  fileExternalId?, points, boundingBox?, pixels?: false, model?}` -> 200
  `{time, model, image: {width, height}, cached, segments}`. With `pixels: true` the prompt
  is in image pixels and the vertices come back in pixels; otherwise both are 0..1.
  Embeddings are cached per file (id + content hash) or per image content (SHA-256), so
  further clicks on the same image only run SAM's small decoder. It runs through the engine
  like any inference: admitted, on the SAM model's lanes, within the request's deadline.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import time
from collections.abc import Callable
from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field, model_validator
from starlette.requests import Request
from starlette.responses import Response

from cvserve.errors import BadRequest, ModelNotFound
from cvserve.http.body import read_json
from cvserve.http.errors import PlatformError
from cvserve.http.openapi import BETA_HEADER, json_body, platform_doc, query_param
from cvserve.http.platform import (
    BASE,
    PlatformRoute,
    authorise,
    encode_cursor,
    int_id,
    parse,
    query_cursor,
    query_limit,
    require_beta,
)
from cvserve.http.responses import json_response
from cvserve.http.state import AppState
from cvserve.images import decode_base64
from cvserve.jobs.polygons import segments_json
from cvserve.jobs.queue import Job
from cvserve.jobs.segment import (
    DEFAULT_MODEL,
    KIND,
    BoundingBox,
    JobItem,
    Point,
    SegmentJob,
    SegmentRequest,
    check_prompt,
    file_problem,
    item_ref,
    parse_request,
    prompt_of,
)
from cvserve.wire.platform import job_json, submitted_json


class SyncSegment(BaseModel):
    model_config = ConfigDict(extra="forbid")

    image: str | None = None
    fileId: int | None = Field(default=None, ge=1)
    fileExternalId: str | None = None
    points: list[Point] = Field(default_factory=list)
    boundingBox: BoundingBox | None = None
    pixels: bool = False
    model: str | None = None

    @model_validator(mode="after")
    def _one_image(self) -> SyncSegment:
        given = [v is not None for v in (self.image, self.fileId, self.fileExternalId)]
        if sum(given) != 1:
            raise ValueError("give exactly one of image (base64), fileId or fileExternalId")
        return self


def _decoded_and_key(image: str) -> tuple[bytes, str]:
    """Base64 -> bytes, and the embedding cache key of their content (off the event loop)."""
    data = decode_base64(image)
    return data, "sha256:" + hashlib.sha256(data).hexdigest()


def _in_store(state: AppState, model_id: str) -> bool:
    try:
        state.engine.model_info(model_id)
    except ModelNotFound:
        return False
    return True


def _same(data: bytes) -> bytes:
    return data


def build_router(state: AppState) -> APIRouter:
    service = state.jobs
    settings = state.settings
    router = APIRouter(prefix=BASE, tags=["segment"], route_class=PlatformRoute)

    @router.post(
        "/context/vision/segment",
        **platform_doc("Submit a segmentation job", json_body(SegmentRequest), headers=BETA_HEADER),
    )
    async def submit_segment(project: str, request: Request) -> Response:
        authorise(state.keys, request)
        require_beta(request)
        req = parse_request(await read_json(request))
        mid = req.model or DEFAULT_MODEL
        if req.model is not None and not _in_store(state, req.model):
            raise PlatformError(400, f"model {req.model} is not in the model store")
        ref = req.items[0].model_dump(exclude_none=True)

        def submit() -> Job:
            meta = service.files.find(project, ref.get("fileId"), ref.get("fileExternalId"))
            spec = SegmentJob(
                items=[JobItem(**item_ref(ref, meta))],
                points=req.points,
                boundingBox=req.boundingBox,
                model=mid,
            )
            return service.queue.submit(KIND, project, spec.payload())

        job = await asyncio.to_thread(submit)
        service.workers.wake()
        return json_response(submitted_json(job))

    @router.get(
        "/context/vision/segment",
        **platform_doc(
            "List segmentation jobs, newest first",
            headers=BETA_HEADER,
            params=LIST_PARAMETERS,
            responses=LIST_RESPONSE,
        ),
    )
    async def list_segment(project: str, request: Request) -> Response:
        authorise(state.keys, request)
        require_beta(request)
        limit = query_limit(request)
        before = query_cursor(request)
        # One more than asked: whether a next page exists, without a count.
        jobs = await asyncio.to_thread(service.queue.list_jobs, KIND, project, limit + 1, before)
        page = jobs[:limit]
        cursor = encode_cursor(page[-1].id) if len(jobs) > limit else None
        return json_response({"items": [job_json(j) for j in page], "nextCursor": cursor})

    @router.get(
        "/context/vision/segment/{job_id}",
        **platform_doc("A segmentation job's status and results", headers=BETA_HEADER),
    )
    async def get_segment(project: str, job_id: str, request: Request) -> Response:
        authorise(state.keys, request)
        require_beta(request)
        jid = int_id(job_id, "jobId")
        job = await asyncio.to_thread(service.queue.get, jid, project)
        if job is None or job.kind != KIND:
            raise PlatformError(404, f"job {jid} not found", missing=[{"jobId": jid}])
        return json_response(job_json(job))

    @router.post(
        "/context/vision/segment/sync",
        **platform_doc("Segment an image now (no job)", json_body(SyncSegment)),
    )
    async def segment_sync(project: str, request: Request) -> Response:
        authorise(state.keys, request)
        raw = await read_json(request, settings.max_body_bytes)
        body = parse(SyncSegment, raw)
        check_prompt(body.points, body.boundingBox, normalised=not body.pixels)
        mid = body.model or DEFAULT_MODEL
        if not _in_store(state, mid):
            raise ModelNotFound(f"model {mid} is not in the model store")
        t0 = time.perf_counter()
        if body.image is not None:
            data, key = await asyncio.to_thread(_decoded_and_key, body.image)
            fetch: Callable[[], bytes] = functools.partial(_same, data)
        else:
            meta = await asyncio.to_thread(
                service.files.find, project, body.fileId, body.fileExternalId
            )
            problem = file_problem(meta)
            if problem is not None:
                raise BadRequest(problem)
            assert meta is not None
            key = meta.cache_key
            fetch = functools.partial(service.files.read, meta)

        prompt = prompt_of(body.points, body.boundingBox, normalised=not body.pixels)
        res = await state.engine.segment(mid, key, fetch, prompt)
        return json_response(
            {
                "time": round(time.perf_counter() - t0, 6),
                "model": mid,
                "image": {"width": res.width, "height": res.height},
                "cached": res.cached,
                "segments": segments_json(res.mask, res.score, normalise=not body.pixels),
            }
        )

    return router


LIST_PARAMETERS = [
    query_param(
        "limit",
        "At most this many jobs (1-1000, default 100).",
        {"type": "integer", "minimum": 1, "maximum": 1000, "default": 100},
    ),
    query_param(
        "cursor",
        "The `nextCursor` of the previous page (opaque).",
        {"type": "string"},
    ),
]
LIST_RESPONSE: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "A page of jobs, newest first; `nextCursor` null on the last page",
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "required": ["items", "nextCursor"],
                    "properties": {
                        "items": {
                            "type": "array",
                            "items": {"type": "object", "description": "a job, as GET by id"},
                        },
                        "nextCursor": {"type": ["string", "null"]},
                    },
                }
            }
        },
    }
}
