"""The zoo's one error, in a module of its own so every zoo module can raise it without
importing the catalog types in `base` (which refer to the package cache and tooling)."""

from __future__ import annotations

from cvserve.errors import CVServeError


class ZooError(CVServeError):
    """A pull failed: download, conversion, or the check on a known photo."""

    status = 500
