"""Files and promptable segmentation jobs, in the data platform's shape (SPEC §4).

Base path `/api/v1/projects/{project}`; files and jobs belong to their project.

Files
- `POST /files` JSON `{name, externalId?, mimeType}` -> 201 file object
  `{id, externalId, name, mimeType, uploaded: false, createdTime, lastUpdatedTime, uploadUrl}`.
- `PUT /files/{id}/content` (the `uploadUrl`) with the raw bytes -> 200 file object.
- `POST /files/upload`: one step, multipart: part `file` plus optional form fields `name`,
  `externalId`, `mimeType` (defaults: the part's filename and content type) -> 201.
- `GET /files/{id}` -> file object; `GET /files/{id}/content` -> the bytes;
  `POST /files/byids` `{items: [{id} | {externalId}], ignoreUnknownIds?}` -> `{items}`.

Segmentation jobs (header `cdf-version: beta` required; `alpha` and dated forms such as
`20230101-beta` are accepted too)
- `POST /context/vision/segment` `{items: [{fileId} | {fileExternalId}], points: [{x, y,
  label}], boundingBox?: {xMin, yMin, xMax, yMax}, model?}` (coordinates 0..1) -> 200 job
  `{status: "Queued", createdTime, startTime, statusTime, jobId, items, points, boundingBox,
  errorMessage: null}`. `startTime` equals `createdTime` until a worker starts the job.
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
  further clicks on the same image only run SAM's small decoder.

Errors here use the platform's shape `{"error": {"code", "message", "missing"?}}`; with API
keys configured, a missing key is 401 and a wrong one 403, both in that shape.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import logging
import mimetypes
import time
from collections.abc import Callable, Coroutine
from typing import Any
from urllib.parse import quote

import orjson
from fastapi import APIRouter
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import Request
from starlette.responses import Response

from cvserve.errors import (
    BadRequest,
    CVServeError,
    DeadlineExceeded,
    ModelNotFound,
    PayloadTooLarge,
)
from cvserve.http.auth import KeyChecker
from cvserve.http.responses import json_response
from cvserve.http.state import AppState
from cvserve.images import decode_base64, decode_image
from cvserve.jobs.files import DuplicateExternalId, FileMeta
from cvserve.jobs.polygons import segments_json
from cvserve.jobs.queue import Job
from cvserve.jobs.segment import (
    DEFAULT_MODEL,
    KIND,
    BoundingBox,
    Point,
    check_prompt,
    file_problem,
    item_ref,
    parse_request,
    run_prompt,
    sam_model,
    validation_message,
)
from cvserve.jobs.service import JobsService

log = logging.getLogger("cvserve.http.vision")

BASE = "/api/v1/projects/{project}"
CDF_VERSIONS = ("beta", "alpha")  # alpha releases carry the beta features as well
MODEL_EXTRA = "vision.sam_model"  # state.extras key that overrides DEFAULT_MODEL


class PlatformError(CVServeError):
    """An error answered as `{"error": {"code", "message", ...extra}}`."""

    def __init__(self, status: int, message: str, **extra: Any) -> None:
        super().__init__(message, status=status)
        self.extra = extra


def platform_error(status: int, message: str, **extra: Any) -> Response:
    return json_response({"error": {"code": status, "message": message, **extra}}, status=status)


class PlatformRoute(APIRoute):
    """Every error raised in these routes, FastAPI's own included, in the platform's shape."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        original = super().get_route_handler()

        async def handler(request: Request) -> Response:
            try:
                return await original(request)
            except PlatformError as e:
                return platform_error(e.status, e.message, **e.extra)
            except CVServeError as e:
                if e.status >= 500 and e.status not in (503, 504):
                    log.error("server fault on %s: %s", request.url.path, e.message)
                return platform_error(e.status, e.message)
            except RequestValidationError as e:
                return platform_error(400, _validation_text(e.errors()))
            except StarletteHTTPException as e:
                return platform_error(e.status_code, str(e.detail))
            except Exception:
                log.exception("unhandled error on %s", request.url.path)
                return platform_error(500, "internal server error")

        return handler


def _validation_text(errors: Any) -> str:
    parts = []
    for err in errors:
        loc = ".".join(str(p) for p in err.get("loc", ()) if p not in ("body", "path", "query"))
        parts.append(f"{loc}: {err.get('msg', 'invalid')}" if loc else str(err.get("msg")))
    return "; ".join(parts) or "invalid request"


# -- request helpers ---------------------------------------------------------------------
def _authorise(state: AppState, request: Request) -> None:
    key = KeyChecker.key_from(request)
    if state.keys.required:
        if not key:
            raise PlatformError(401, "Unauthorized: send `Authorization: Bearer KEY` or `api-key`")
        if not state.keys.valid(key):
            raise PlatformError(403, "User is not authorized to access this resource")
    # The jobs API shares the per-key (or per-address) rate limit of the inference routes.
    state.keys.limit(request, key)


def _require_beta(request: Request) -> None:
    version = request.headers.get("cdf-version", "").strip().lower()
    # `beta`, or a dated release of it such as `20230101-beta`.
    if version.rsplit("-", 1)[-1] not in CDF_VERSIONS:
        raise BadRequest("this endpoint is available only with the header `cdf-version: beta`")


def _int_id(value: str, what: str) -> int:
    try:
        n = int(value)
    except ValueError:
        raise BadRequest(f"{what} must be an integer, got {value!r}") from None
    if n < 1:
        raise BadRequest(f"{what} must be positive")
    return n


async def _body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"request body is larger than {limit} bytes")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"request body is larger than {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def _json(request: Request, limit: int) -> Any:
    raw = await _body(request, limit)
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise BadRequest("request body must be JSON") from None


def _parse(model: type[BaseModel], body: Any) -> Any:
    try:
        return model.model_validate(body)
    except ValidationError as e:
        raise BadRequest(validation_message(e)) from None


class FileCreate(BaseModel):
    model_config = ConfigDict(extra="ignore")  # the platform has more metadata fields

    name: str = Field(min_length=1, max_length=256)
    externalId: str | None = Field(default=None, min_length=1, max_length=255)
    mimeType: str | None = Field(default=None, max_length=256)


class FileIdentity(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: int | None = Field(default=None, ge=1)
    externalId: str | None = Field(default=None, min_length=1)

    @model_validator(mode="after")
    def _one(self) -> FileIdentity:
        if (self.id is None) == (self.externalId is None):
            raise ValueError("each item needs exactly one of id or externalId")
        return self


class FilesByIds(BaseModel):
    model_config = ConfigDict(extra="forbid")

    items: list[FileIdentity] = Field(min_length=1, max_length=1000)
    ignoreUnknownIds: bool = False


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


# -- rendering ---------------------------------------------------------------------------
def _upload_url(request: Request, project: str, file_id: int) -> str:
    base = str(request.base_url).rstrip("/")
    return f"{base}/api/v1/projects/{quote(project, safe='')}/files/{file_id}/content"


def _prompt(payload: dict[str, Any]) -> dict[str, Any]:
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
    return {
        **_job_head(job),
        "items": job.payload["items"],
        **_prompt(job.payload),
        "errorMessage": None,
    }


def job_json(job: Job) -> dict[str, Any]:
    out = _job_head(job)
    result = job.result or {}
    out["items"] = result.get("items", [] if job.status.done else job.payload["items"])
    out["prompt"] = _prompt(job.payload)
    out["errorMessage"] = job.error
    failed = result.get("failedItems")
    if not failed and job.error:  # failed without a handler's verdict (e.g. gave up)
        failed = [{"errorMessage": job.error, "items": job.payload["items"]}]
    if failed:
        out["failedItems"] = failed
    return out


# -- the router --------------------------------------------------------------------------
def build_router(state: AppState) -> APIRouter:
    service = JobsService(state.settings, state.store)
    state.extras["jobs"] = service
    settings = state.settings
    router = APIRouter(prefix=BASE, tags=["vision"], route_class=PlatformRoute)

    async def _start() -> None:
        await asyncio.to_thread(service.start)

    async def _stop() -> None:
        await asyncio.to_thread(service.stop)

    state.startup.append(_start)
    state.shutdown.append(_stop)

    def model_id(requested: str | None) -> str:
        return requested or str(state.extras.get(MODEL_EXTRA) or DEFAULT_MODEL)

    async def get_file(project: str, file_id: int) -> FileMeta:
        meta = await asyncio.to_thread(service.files.get, project, file_id)
        if meta is None:
            raise PlatformError(404, f"file {file_id} not found", missing=[{"id": file_id}])
        return meta

    # -- files ---------------------------------------------------------------------------
    @router.post("/files")
    async def create_file(project: str, request: Request) -> Response:
        _authorise(state, request)
        body = _parse(FileCreate, await _json(request, 1 << 20))
        try:
            meta = await asyncio.to_thread(
                service.files.create, project, body.name, body.mimeType, body.externalId
            )
        except DuplicateExternalId as e:
            raise PlatformError(
                409, e.message, duplicated=[{"externalId": e.external_id}]
            ) from None
        out = {**meta.as_api(), "uploadUrl": _upload_url(request, project, meta.id)}
        return json_response(out, status=201)

    @router.post("/files/upload")
    async def upload_file(project: str, request: Request) -> Response:
        _authorise(state, request)
        if not request.headers.get("content-type", "").startswith("multipart/form-data"):
            raise BadRequest("send multipart/form-data with a part named `file`")
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > settings.max_body_bytes:
            raise PayloadTooLarge(f"request body is larger than {settings.max_body_bytes} bytes")
        form = await request.form(max_files=1, max_fields=16)
        try:
            part = form.get("file")
            if not isinstance(part, UploadFile):
                raise BadRequest("multipart upload needs a file part named `file`")
            data = await part.read()
            if len(data) > settings.max_body_bytes:
                raise PayloadTooLarge(f"file is larger than {settings.max_body_bytes} bytes")
            fields = {k: v for k, v in form.items() if isinstance(v, str) and v}
            name = fields.get("name") or part.filename or "upload"
            mime = (
                fields.get("mimeType")
                or (part.content_type if part.content_type != "application/octet-stream" else None)
                or mimetypes.guess_type(name)[0]
            )
            body = _parse(
                FileCreate, {"name": name, "mimeType": mime, "externalId": fields.get("externalId")}
            )
        finally:
            await form.close()

        def store() -> FileMeta:
            meta = service.files.create(project, body.name, body.mimeType, body.externalId)
            return service.files.write(meta, data)

        try:
            meta = await asyncio.to_thread(store)
        except DuplicateExternalId as e:
            raise PlatformError(
                409, e.message, duplicated=[{"externalId": e.external_id}]
            ) from None
        return json_response(meta.as_api(), status=201)

    @router.put("/files/{file_id}/content")
    async def put_content(project: str, file_id: str, request: Request) -> Response:
        _authorise(state, request)
        meta = await get_file(project, _int_id(file_id, "file id"))
        data = await _body(request, settings.max_body_bytes)
        meta = await asyncio.to_thread(service.files.write, meta, data)
        return json_response(meta.as_api())

    @router.get("/files/{file_id}/content")
    async def get_content(project: str, file_id: str, request: Request) -> Response:
        _authorise(state, request)
        meta = await get_file(project, _int_id(file_id, "file id"))
        if not meta.uploaded:
            raise PlatformError(404, f"file {meta.id} has no content yet")
        data = await asyncio.to_thread(service.files.read, meta)
        return Response(data, media_type=meta.mime_type or "application/octet-stream")

    @router.get("/files/{file_id}")
    async def get_file_meta(project: str, file_id: str, request: Request) -> Response:
        _authorise(state, request)
        meta = await get_file(project, _int_id(file_id, "file id"))
        return json_response(meta.as_api())

    @router.post("/files/byids")
    async def files_by_ids(project: str, request: Request) -> Response:
        _authorise(state, request)
        body = _parse(FilesByIds, await _json(request, 1 << 20))

        def look() -> tuple[list[FileMeta], list[dict[str, Any]]]:
            found, missing = [], []
            for it in body.items:
                meta = service.files.find(project, it.id, it.externalId)
                if meta is None:
                    missing.append({"id": it.id} if it.id else {"externalId": it.externalId})
                else:
                    found.append(meta)
            return found, missing

        found, missing = await asyncio.to_thread(look)
        if missing and not body.ignoreUnknownIds:
            raise PlatformError(400, "files not found", missing=missing)
        return json_response({"items": [m.as_api() for m in found]})

    # -- segmentation jobs ---------------------------------------------------------------
    @router.post("/context/vision/segment")
    async def submit_segment(project: str, request: Request) -> Response:
        _authorise(state, request)
        _require_beta(request)
        req = parse_request(await _json(request, 1 << 20))
        mid = model_id(req.model)
        if req.model is not None and not state.store.exists(req.model):
            raise PlatformError(400, f"model {req.model} is not in the model store")
        ref = req.items[0].model_dump(exclude_none=True)

        def submit() -> Job:
            meta = service.files.find(project, ref.get("fileId"), ref.get("fileExternalId"))
            payload = {
                "items": [item_ref(ref, meta)],
                "points": [p.model_dump() for p in req.points],
                "boundingBox": req.boundingBox.model_dump() if req.boundingBox else None,
                "model": mid,
            }
            return service.queue.submit(KIND, project, payload)

        job = await asyncio.to_thread(submit)
        service.workers.wake()
        return json_response(submitted_json(job))

    @router.get("/context/vision/segment/{job_id}")
    async def get_segment(project: str, job_id: str, request: Request) -> Response:
        _authorise(state, request)
        _require_beta(request)
        jid = _int_id(job_id, "jobId")
        job = await asyncio.to_thread(service.queue.get, jid, project)
        if job is None or job.kind != KIND:
            raise PlatformError(404, f"job {jid} not found", missing=[{"jobId": jid}])
        return json_response(job_json(job))

    @router.post("/context/vision/segment/sync")
    async def segment_sync(project: str, request: Request) -> Response:
        _authorise(state, request)
        raw = await _json(request, settings.max_body_bytes)
        body: SyncSegment = _parse(SyncSegment, raw)
        check_prompt(body.points, body.boundingBox, normalised=not body.pixels)
        mid = model_id(body.model)
        if not state.store.exists(mid):
            raise ModelNotFound(f"model {mid} is not in the model store")

        def work() -> dict[str, Any]:
            t0 = time.perf_counter()
            model = sam_model(state.store, mid)
            fetch: Callable[[], bytes]
            if body.image is not None:
                data = decode_base64(body.image)
                key = "sha256:" + hashlib.sha256(data).hexdigest()
                fetch = lambda: data  # noqa: E731
            else:
                meta = service.files.find(project, body.fileId, body.fileExternalId)
                problem = file_problem(meta)
                if problem is not None:
                    raise BadRequest(problem)
                assert meta is not None
                key = meta.cache_key
                fetch = functools.partial(service.files.read, meta)

            def load() -> Any:
                return decode_image(
                    fetch(), max_pixels=settings.max_image_pixels, max_side=settings.max_image_side
                )

            res = run_prompt(
                model, key, load, body.points, body.boundingBox, normalised=not body.pixels
            )
            return {
                "time": round(time.perf_counter() - t0, 6),
                "model": mid,
                "image": {"width": res.width, "height": res.height},
                "cached": res.cached,
                "segments": segments_json(res.mask, res.score, normalise=not body.pixels),
            }

        try:
            out = await asyncio.wait_for(state.run(work), timeout=settings.request_timeout_s)
        except asyncio.TimeoutError:
            raise DeadlineExceeded("segmentation took too long") from None
        return json_response(out)

    return router
