"""What `/openapi.json` and `/docs` say about routes that read their own inputs.

The hosted route, `/infer/*` and the platform routes parse parameters and bodies
themselves (strictly, with a 400 that names the field, never FastAPI's 422), so their
parameters, body forms and response shapes are declared here, as documentation only.
The inference parameters themselves come from their spec, `cvserve.params`.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from cvserve.params.schema import body_properties, query_parameters


def _inline(schema: dict[str, Any]) -> dict[str, Any]:
    """A pydantic JSON schema with its `$defs` inlined: the document has no place for them."""
    defs = schema.pop("$defs", {})

    def resolve(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/$defs/"):
                return resolve(dict(defs[ref.removeprefix("#/$defs/")]))
            return {k: resolve(v) for k, v in node.items()}
        if isinstance(node, list):
            return [resolve(v) for v in node]
        return node

    return resolve(schema)


def json_body(model: type[BaseModel]) -> dict[str, Any]:
    return {
        "required": True,
        "content": {"application/json": {"schema": _inline(model.model_json_schema())}},
    }


def query_param(name: str, description: str, schema: dict[str, Any]) -> dict[str, Any]:
    """A query parameter a route module parses itself (the hosted ones come from the spec)."""
    return {
        "name": name,
        "in": "query",
        "required": False,
        "description": description,
        "schema": schema,
    }


HOSTED_PARAMETERS = query_parameters()

_IMAGE = {"type": "string", "format": "binary"}
_BASE64 = {"type": "string", "description": "base64 image, a `data:` URI allowed"}
HOSTED_BODY: dict[str, Any] = {
    "required": False,
    "description": "The image: raw bytes, base64 text (any content type), a form field "
    '`image=`/`file=`, a multipart part `file`, or JSON `{"image": base64}`. '
    "Not needed with `?image=URL`.",
    "content": {
        "application/x-www-form-urlencoded": {"schema": _BASE64},
        "text/plain": {"schema": _BASE64},
        "image/*": {"schema": _IMAGE},
        "application/octet-stream": {"schema": _IMAGE},
        "multipart/form-data": {
            "schema": {"type": "object", "properties": {"file": _IMAGE}, "required": ["file"]}
        },
        "application/json": {
            "schema": {
                "type": "object",
                "properties": {
                    "image": {
                        "anyOf": [
                            _BASE64,
                            {
                                "type": "object",
                                "properties": {
                                    "type": {"type": "string", "enum": ["base64"]},
                                    "value": _BASE64,
                                },
                            },
                        ]
                    }
                },
            }
        },
    },
}

_POINT = {"type": "object", "properties": {"x": {"type": "number"}, "y": {"type": "number"}}}
_DETECTION = {
    "type": "object",
    "description": "Box centre and size in image pixels.",
    "properties": {
        "x": {"type": "number"},
        "y": {"type": "number"},
        "width": {"type": "number"},
        "height": {"type": "number"},
        "confidence": {"type": "number"},
        "class": {"type": "string"},
        "class_id": {"type": "integer"},
        "detection_id": {"type": "string"},
        "points": {"type": "array", "items": _POINT, "description": "instance segmentation"},
        "mask_format": {"type": "string", "enum": ["polygon", "rle"]},
        "rle": {
            "type": "object",
            "description": "COCO RLE (column-major), with response_mask_format=rle",
            "properties": {
                "size": {"type": "array", "items": {"type": "integer"}},
                "counts": {"type": "string"},
            },
        },
        "keypoints": {
            "type": "array",
            "description": "keypoint detection",
            "items": {
                "type": "object",
                "properties": {
                    "x": {"type": "number"},
                    "y": {"type": "number"},
                    "confidence": {"type": "number"},
                    "class_id": {"type": "integer"},
                    "class_name": {"type": "string"},
                    "class": {"type": "string"},
                },
            },
        },
    },
}
_COMMON = {
    "inference_id": {"type": "string"},
    "time": {"type": "number", "description": "seconds spent on the image"},
    "image": {
        "type": "object",
        "properties": {"width": {"type": "integer"}, "height": {"type": "integer"}},
    },
    "visualization": {"type": "string", "description": "base64 JPEG, format=image_and_json"},
}
_CLASS_SCORE = {
    "type": "object",
    "properties": {
        "class": {"type": "string"},
        "class_id": {"type": "integer"},
        "confidence": {"type": "number"},
    },
}
HOSTED_RESPONSE = {
    "oneOf": [
        {
            "title": "Detection, instance segmentation, keypoints",
            "type": "object",
            "properties": {**_COMMON, "predictions": {"type": "array", "items": _DETECTION}},
        },
        {
            "title": "Single-label classification",
            "type": "object",
            "properties": {
                **_COMMON,
                "predictions": {"type": "array", "items": _CLASS_SCORE},
                "top": {"type": "string"},
                "confidence": {"type": "number"},
                "image_path": {"type": "string"},
                "prediction_type": {"type": "string"},
            },
        },
        {
            "title": "Multi-label classification",
            "type": "object",
            "properties": {
                **_COMMON,
                "predictions": {"type": "object", "additionalProperties": _CLASS_SCORE},
                "predicted_classes": {"type": "array", "items": {"type": "string"}},
                "image_path": {"type": "string"},
                "prediction_type": {"type": "string"},
            },
        },
        {
            "title": "Semantic segmentation",
            "type": "object",
            "properties": {
                **_COMMON,
                "segmentation_mask": {"type": "string", "description": "base64 PNG of class ids"},
                "class_map": {"type": "object", "additionalProperties": {"type": "string"}},
                "confidence_mask": {"type": "string", "description": "base64 PNG, 0-255"},
                "present_class_ids": {"type": "array", "items": {"type": "integer"}},
            },
        },
    ]
}
_MESSAGE = {
    "content": {
        "application/json": {
            "schema": {"type": "object", "properties": {"message": {"type": "string"}}}
        }
    }
}
HOSTED_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"description": "A malformed parameter or body (the message names it)", **_MESSAGE},
    401: {"description": "Missing API key (when keys are configured)"},
    403: {"description": "Wrong API key"},
    404: {"description": "No such model", **_MESSAGE},
    413: {"description": "Body or image too large", **_MESSAGE},
    415: {"description": "Not a supported image", **_MESSAGE},
    429: {"description": "Rate limit passed (Retry-After)", **_MESSAGE},
    503: {"description": "The model is busy (Retry-After)", **_MESSAGE},
    504: {"description": "Past the request deadline", **_MESSAGE},
}
_HOSTED_OK = {
    200: {
        "description": "The prediction, in the task's shape (or a JPEG with format=image)",
        "content": {
            "application/json": {"schema": HOSTED_RESPONSE},
            "image/jpeg": {"schema": _IMAGE},
        },
    }
}
_HOSTED_DESCRIPTION = (
    "Runs the model `dataset/version` on one image, for every task: detection, instance "
    "segmentation, keypoints, classification (single- and multi-label) and semantic "
    "segmentation. Parameters are parsed strictly; a malformed one is a 400 naming it."
)
HOSTED_POST: dict[str, Any] = {
    "summary": "Infer on an image sent in the body (or ?image=URL)",
    "description": _HOSTED_DESCRIPTION,
    "responses": {**_HOSTED_OK, **HOSTED_ERRORS},
    "openapi_extra": {"parameters": HOSTED_PARAMETERS, "requestBody": HOSTED_BODY},
}
HOSTED_GET: dict[str, Any] = {
    "summary": "Infer on the image at ?image=URL",
    "description": _HOSTED_DESCRIPTION,
    "responses": {**_HOSTED_OK, **HOSTED_ERRORS},
    "openapi_extra": {"parameters": HOSTED_PARAMETERS},
}

# -- the data platform's routes ----------------------------------------------------------
BETA_HEADER = [
    {
        "name": "cdf-version",
        "in": "header",
        "required": True,
        "description": "`beta` (or `alpha`, or a dated form such as `20230101-beta`)",
        "schema": {"type": "string", "example": "beta"},
    }
]
_PLATFORM_ERROR = {
    "content": {
        "application/json": {
            "schema": {
                "type": "object",
                "properties": {
                    "error": {
                        "type": "object",
                        "properties": {
                            "code": {"type": "integer"},
                            "message": {"type": "string"},
                            "missing": {"type": "array", "items": {"type": "object"}},
                            "duplicated": {"type": "array", "items": {"type": "object"}},
                        },
                    }
                },
            }
        }
    }
}
PLATFORM_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"description": "Malformed request", **_PLATFORM_ERROR},
    401: {"description": "Missing API key (when keys are configured)", **_PLATFORM_ERROR},
    403: {"description": "Wrong API key", **_PLATFORM_ERROR},
    404: {"description": "No such file, job or model", **_PLATFORM_ERROR},
    409: {"description": "Duplicate externalId; a file a job still needs", **_PLATFORM_ERROR},
    413: {"description": "Body too large", **_PLATFORM_ERROR},
}


def platform_doc(
    summary: str,
    request_body: dict[str, Any] | None = None,
    status: int = 200,
    *,
    headers: list[dict[str, Any]] | None = None,
    params: list[dict[str, Any]] | None = None,  # query parameters the route parses itself
    responses: dict[int | str, dict[str, Any]] | None = None,  # more than PLATFORM_ERRORS
) -> dict[str, Any]:
    """Route keyword arguments documenting a platform route that reads its own body."""
    extra: dict[str, Any] = {}
    if request_body is not None:
        extra["requestBody"] = request_body
    if headers or params:
        extra["parameters"] = [*(headers or []), *(params or [])]
    return {
        "summary": summary,
        "status_code": status,
        "responses": {**PLATFORM_ERRORS, **(responses or {})},
        "openapi_extra": extra,
    }


# -- the inference-sdk's JSON routes -----------------------------------------------------
_SDK_IMAGE = {
    "type": "object",
    "properties": {
        "type": {"type": "string", "enum": ["base64", "url"]},
        "value": {"type": "string"},
    },
    "required": ["type", "value"],
}
INFER_BODY: dict[str, Any] = {
    "required": True,
    "content": {
        "application/json": {
            "schema": {
                "type": "object",
                "required": ["model_id", "image"],
                "properties": {
                    "model_id": {"type": "string", "description": "DATASET/VERSION"},
                    "image": {
                        "description": "one image, or a list of up to 16",
                        "anyOf": [_SDK_IMAGE, {"type": "array", "items": _SDK_IMAGE}],
                    },
                    **body_properties(),
                    "api_key": {"type": "string"},
                },
            }
        }
    },
}
INFER_DOC: dict[str, Any] = {
    "summary": "Infer (the official inference-sdk's JSON route)",
    "description": "task_route: object_detection, instance_segmentation, classification, "
    "keypoints_detection or semantic_segmentation; it must match the model's task.",
    "responses": {
        200: {
            "description": "The prediction (a list of them for a list of images), "
            "`visualization` null unless visualize_predictions",
            "content": {
                "application/json": {
                    "schema": {
                        "anyOf": [HOSTED_RESPONSE, {"type": "array", "items": HOSTED_RESPONSE}]
                    }
                }
            },
        },
        **HOSTED_ERRORS,
    },
    "openapi_extra": {"requestBody": INFER_BODY},
}
MODEL_ID_BODY: dict[str, Any] = {
    "required": True,
    "content": {
        "application/json": {
            "schema": {
                "type": "object",
                "required": ["model_id"],
                "properties": {"model_id": {"type": "string"}, "api_key": {"type": "string"}},
            }
        }
    },
}
