"""Model ids: `DATASET/VERSION`, each part a url-safe name, so an id is a safe store path."""

from __future__ import annotations

import re

from cvserve.errors import BadRequest

_ID_PART = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}$")


def parse_model_id(model_id: str) -> tuple[str, str]:
    """'dataset/version' -> (dataset, version); both url-safe, no path tricks."""
    parts = model_id.strip("/").split("/")
    if len(parts) != 2 or not all(_ID_PART.match(p) and p not in (".", "..") for p in parts):
        raise BadRequest(
            f"invalid model id {model_id!r}: expected DATASET/VERSION (url-safe names)"
        )
    return parts[0], parts[1]
