"""The OpenAPI side of the parameter spec: each parameter's JSON schema on each door."""

from __future__ import annotations

from typing import Any

from cvserve.params.spec import PARAMS, Param


def _value_schema(param: Param, *, text: bool) -> dict[str, Any]:
    """`text`: as a query string carries it (booleans spelled out), else as a JSON value."""
    kind = param.kind
    if kind == "fraction":
        number = {"type": "number", "minimum": param.low, "maximum": param.high}
        if param.words:
            return {"anyOf": [number, {"type": "string", "enum": list(param.words)}]}
        return number
    if kind == "integer":
        return {"type": "integer", "minimum": int(param.low), "maximum": int(param.high)}
    if kind == "boolean":
        return {"type": "string", "enum": ["true", "false"]} if text else {"type": "boolean"}
    if kind == "choice":
        return {"type": "string", "enum": list(param.choices)}
    if kind == "names" and not text:
        return {"type": "array", "items": {"type": "string"}}
    if kind == "url":
        return {"type": "string", "format": "uri"}
    return {"type": "string"}


def query_parameters() -> list[dict[str, Any]]:
    """The hosted route's query parameters, as OpenAPI parameter objects."""
    return [
        {
            "name": p.name,
            "in": "query",
            "required": False,
            "description": p.description,
            "schema": _value_schema(p, text=True),
        }
        for p in PARAMS
        if p.hosted
    ]


def body_properties() -> dict[str, dict[str, Any]]:
    """The `/infer/*` body's parameter fields, as JSON schema properties."""
    return {
        p.body: {**_value_schema(p, text=False), "description": p.description}
        for p in PARAMS
        if p.body is not None
    }
