"""Where the image of a hosted request comes from: ?image=URL, multipart `file`, a raw
binary image, or base64 text under any Content-Type (with or without a data: prefix)."""

from __future__ import annotations

import orjson
from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.types import Message

from cvserve.errors import BadRequest
from cvserve.http.body import read_body
from cvserve.http.state import AppState
from cvserve.images import ACCEPTED, decode_base64, not_an_image, sniff


async def fetch_url(state: AppState, url: str) -> bytes:
    from cvserve.fetch import fetch_image

    return await fetch_image(url, state.settings)


async def image_from_request(request: Request, state: AppState) -> bytes:
    """Encoded image bytes from a hosted-route request, in the SPEC's order of precedence."""
    if request.query_params.get("image_type", "").lower() == "numpy":
        # Old clients send a pickled array; unpickling runs the sender's code, so never.
        raise BadRequest(f"image_type=numpy (a serialized array) is not accepted; {ACCEPTED}")
    url = request.query_params.get("image")
    if url:
        return await fetch_url(state, url)
    body = await read_body(request, state.settings.max_body_bytes)
    ctype = request.headers.get("content-type", "").lower()
    if ctype.startswith("multipart/form-data"):
        return await _from_multipart(request, body)
    return bytes_from_body(body)


def bytes_from_body(body: bytes) -> bytes:
    if not body.strip():
        raise BadRequest(
            "no image in the request: POST base64 image data or a file, or pass ?image=URL"
        )
    if sniff(body) is not None:
        return body  # a raw binary image
    head = body.lstrip()[:1]
    if head == b"{":
        return _from_json_object(body)
    if head == b'"':
        try:
            text = orjson.loads(body)
        except orjson.JSONDecodeError:
            raise BadRequest("request body is a malformed JSON string") from None
        if not isinstance(text, str):
            raise BadRequest("request body JSON must be a base64 string")
        return decode_base64(text)
    if body[:6].lower() == b"image=" or body[:5].lower() == b"file=":
        body = body.split(b"=", 1)[1]  # a form field: `image=<base64>` or `file=<base64>`
    return base64_or_binary(body)


def base64_or_binary(data: bytes) -> bytes:
    """Base64 text -> bytes. Binary data that is no image says what is accepted (400, or
    415 for an image format not decoded here)."""
    try:
        return decode_base64(data)
    except BadRequest:
        if not data.isascii() or b"\x00" in data:
            raise not_an_image(data) from None
        raise


def _replayed(request: Request, body: bytes) -> Request:
    """The request over a receive that replays `body`: its stream was read (within the limit)."""

    async def receive() -> Message:
        return {"type": "http.request", "body": body, "more_body": False}

    return Request(request.scope, receive)


def _from_json_object(body: bytes) -> bytes:
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise BadRequest("request body looks like JSON but is malformed") from None
    image = data.get("image", data.get("file")) if isinstance(data, dict) else None
    if isinstance(image, dict):
        if image.get("type", "base64") != "base64":
            raise BadRequest("only base64 images are accepted in a JSON body on this route")
        image = image.get("value")
    if not isinstance(image, str):
        raise BadRequest('JSON body must carry the image as base64 in "image"')
    return decode_base64(image)


async def _from_multipart(request: Request, body: bytes) -> bytes:
    form = await _replayed(request, body).form(max_files=4, max_fields=32)
    try:
        part = form.get("file") or form.get("image")
        if part is None:
            raise BadRequest('multipart body has no part named "file"')
        if isinstance(part, UploadFile):
            data = await part.read()
            if not data:
                raise BadRequest('multipart part "file" is empty')
            return data if sniff(data) is not None else base64_or_binary(data)
        return decode_base64(part)
    finally:
        await form.close()
