"""Where the zoo tests keep registry downloads and converter venvs between runs."""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    """~/.cache/cvserve-test, or CVSERVE_TEST_CACHE."""
    return Path(os.environ.get("CVSERVE_TEST_CACHE") or Path.home() / ".cache" / "cvserve-test")
