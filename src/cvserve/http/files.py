"""The platform's files API under `/api/v1/projects/{project}` (SPEC section 4).

- `POST /files` JSON `{name, externalId?, mimeType}` -> 201 file object
  `{id, externalId, name, mimeType, uploaded: false, createdTime, lastUpdatedTime, uploadUrl}`.
- `PUT /files/{id}/content` (the `uploadUrl`) with the raw bytes -> 200 file object.
- `POST /files/upload`: one step, multipart: part `file` plus optional form fields `name`,
  `externalId`, `mimeType` (defaults: the part's filename and content type) -> 201.
- `GET /files/{id}` -> file object; `GET /files/{id}/content` -> the bytes;
  `POST /files/byids` `{items: [{id} | {externalId}], ignoreUnknownIds?}` -> `{items}`.
- `POST /files/delete` `{items: [{id} | {externalId}], ignoreUnknownIds?}` -> `{}`, and
  `DELETE /files/{id}` -> `{}`: metadata and bytes go. All or nothing: unknown ids are a 400
  listing them under `missing` (unless ignoreUnknownIds), files that Queued or Running jobs
  still need a 409 listing them under `inUse` with the jobs' ids; then nothing is deleted.
- Uploads that would leave less than `min_free_disk_mb` free where the bytes go: 507.
"""

from __future__ import annotations

import asyncio
import contextlib
import mimetypes
from typing import Any
from urllib.parse import quote

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field, model_validator
from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import Response

from cvserve.errors import BadRequest, PayloadTooLarge
from cvserve.http.body import check_declared_length, read_body, read_json
from cvserve.http.errors import PlatformError
from cvserve.http.openapi import PLATFORM_ERRORS, json_body, platform_doc
from cvserve.http.platform import BASE, PlatformRoute, authorise, int_id, parse
from cvserve.http.responses import json_response
from cvserve.http.state import AppState
from cvserve.jobs.files import DuplicateExternalId, FileMeta
from cvserve.jobs.lifecycle import FileInUse, check_free_space, delete_files
from cvserve.wire.platform import file_json


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


class FilesDelete(FilesByIds):
    """The platform's `POST /files/delete` body (same as byids)."""


def _in_use(e: FileInUse) -> PlatformError:
    return PlatformError(409, e.message, inUse=e.busy)


def _upload_url(request: Request, project: str, file_id: int) -> str:
    base = str(request.base_url).rstrip("/")
    return f"{base}/api/v1/projects/{quote(project, safe='')}/files/{file_id}/content"


def _duplicate(e: DuplicateExternalId) -> PlatformError:
    return PlatformError(409, e.message, duplicated=[{"externalId": e.external_id}])


def build_router(state: AppState) -> APIRouter:
    service = state.jobs
    settings = state.settings
    router = APIRouter(prefix=BASE, tags=["files"], route_class=PlatformRoute)

    async def get_file(project: str, file_id: int) -> FileMeta:
        meta = await asyncio.to_thread(service.files.get, project, file_id)
        if meta is None:
            raise PlatformError(404, f"file {file_id} not found", missing=[{"id": file_id}])
        return meta

    @router.post("/files", **platform_doc("Create a file record", json_body(FileCreate), 201))
    async def create_file(project: str, request: Request) -> Response:
        authorise(state.keys, request)
        body = parse(FileCreate, await read_json(request))
        try:
            meta = await asyncio.to_thread(
                service.files.create, project, body.name, body.mimeType, body.externalId
            )
        except DuplicateExternalId as e:
            raise _duplicate(e) from None
        out = file_json(meta, _upload_url(request, project, meta.id))
        return json_response(out, status=201)

    @router.post(
        "/files/upload",
        **platform_doc("Upload a file in one step", MULTIPART_FILE, 201, responses=NO_SPACE),
    )
    async def upload_file(project: str, request: Request) -> Response:
        authorise(state.keys, request)
        if not request.headers.get("content-type", "").startswith("multipart/form-data"):
            raise BadRequest("send multipart/form-data with a part named `file`")
        check_declared_length(request, settings.max_body_bytes)
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
            body = parse(
                FileCreate, {"name": name, "mimeType": mime, "externalId": fields.get("externalId")}
            )
        finally:
            await form.close()

        def store() -> FileMeta:
            check_free_space(service.files, len(data), settings.min_free_disk_mb)
            meta = service.files.create(project, body.name, body.mimeType, body.externalId)
            try:
                return service.files.write(meta, data)
            except BaseException:  # e.g. the disk filled up meanwhile: no empty record left
                with contextlib.suppress(Exception):
                    service.files.delete(project, meta.id)
                raise

        try:
            meta = await asyncio.to_thread(store)
        except DuplicateExternalId as e:
            raise _duplicate(e) from None
        return json_response(file_json(meta), status=201)

    @router.put(
        "/files/{file_id}/content",
        **platform_doc("Upload a file's content", RAW_BYTES, responses=NO_SPACE),
    )
    async def put_content(project: str, file_id: str, request: Request) -> Response:
        authorise(state.keys, request)
        meta = await get_file(project, int_id(file_id, "file id"))
        data = await read_body(request, settings.max_body_bytes)

        def store() -> FileMeta:
            check_free_space(service.files, len(data), settings.min_free_disk_mb)
            return service.files.write(meta, data)

        return json_response(file_json(await asyncio.to_thread(store)))

    @router.get("/files/{file_id}/content", **platform_doc("Download a file's content"))
    async def get_content(project: str, file_id: str, request: Request) -> Response:
        authorise(state.keys, request)
        meta = await get_file(project, int_id(file_id, "file id"))
        if not meta.uploaded:
            raise PlatformError(404, f"file {meta.id} has no content yet")
        data = await asyncio.to_thread(service.files.read, meta)
        return Response(data, media_type=meta.mime_type or "application/octet-stream")

    @router.get("/files/{file_id}", **platform_doc("A file's metadata"))
    async def get_file_meta(project: str, file_id: str, request: Request) -> Response:
        authorise(state.keys, request)
        meta = await get_file(project, int_id(file_id, "file id"))
        return json_response(file_json(meta))

    def look(project: str, items: list[FileIdentity]) -> tuple[list[FileMeta], list[Any]]:
        found, missing = [], []
        for it in items:
            meta = service.files.find(project, it.id, it.externalId)
            if meta is None:
                missing.append({"id": it.id} if it.id else {"externalId": it.externalId})
            else:
                found.append(meta)
        return found, missing

    @router.post("/files/byids", **platform_doc("Files by id or externalId", json_body(FilesByIds)))
    async def files_by_ids(project: str, request: Request) -> Response:
        authorise(state.keys, request)
        body = parse(FilesByIds, await read_json(request))
        found, missing = await asyncio.to_thread(look, project, body.items)
        if missing and not body.ignoreUnknownIds:
            raise PlatformError(400, "files not found", missing=missing)
        return json_response({"items": [file_json(m) for m in found]})

    async def delete(project: str, metas: list[FileMeta]) -> Response:
        unique = list({m.id: m for m in metas}.values())
        try:
            await asyncio.to_thread(delete_files, service.queue, service.files, project, unique)
        except FileInUse as e:
            raise _in_use(e) from None
        return json_response({})

    @router.post(
        "/files/delete",
        **platform_doc("Delete files (metadata and content)", json_body(FilesDelete)),
    )
    async def files_delete(project: str, request: Request) -> Response:
        authorise(state.keys, request)
        body = parse(FilesDelete, await read_json(request))
        found, missing = await asyncio.to_thread(look, project, body.items)
        if missing and not body.ignoreUnknownIds:
            raise PlatformError(400, "files not found; nothing was deleted", missing=missing)
        return await delete(project, found)

    @router.delete("/files/{file_id}", **platform_doc("Delete a file (metadata and content)"))
    async def file_delete(project: str, file_id: str, request: Request) -> Response:
        authorise(state.keys, request)
        return await delete(project, [await get_file(project, int_id(file_id, "file id"))])

    return router


MULTIPART_FILE: dict[str, Any] = {
    "required": True,
    "content": {
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "required": ["file"],
                "properties": {
                    "file": {"type": "string", "format": "binary"},
                    "name": {"type": "string"},
                    "externalId": {"type": "string"},
                    "mimeType": {"type": "string"},
                },
            }
        }
    },
}
RAW_BYTES: dict[str, Any] = {
    "required": True,
    "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
}
NO_SPACE: dict[int | str, dict[str, Any]] = {
    507: {
        **PLATFORM_ERRORS[400],
        "description": "Not enough free disk space for the upload (below min_free_disk_mb); "
        "nothing was stored",
    }
}
