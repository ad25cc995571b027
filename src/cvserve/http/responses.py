"""Fast JSON responses (orjson handles numpy scalars and arrays natively)."""

from __future__ import annotations

from typing import Any

import orjson
from starlette.responses import Response

_OPTS = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS


def dumps(data: Any) -> bytes:
    return orjson.dumps(data, option=_OPTS)


def json_response(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(dumps(data), status_code=status, media_type="application/json", headers=headers)
