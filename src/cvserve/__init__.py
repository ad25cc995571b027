"""cvserve: a self-hosted computer-vision inference server speaking the hosted inference API."""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

__all__ = ["Client", "CVServeHTTPError", "__version__"]


def __getattr__(name: str) -> Any:
    # The SDK is imported on first use, so `import cvserve` stays free of httpx and friends.
    if name in ("Client", "CVServeHTTPError"):
        from cvserve import client

        return getattr(client, name)
    raise AttributeError(f"module 'cvserve' has no attribute {name!r}")
