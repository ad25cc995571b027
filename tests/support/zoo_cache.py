"""Where the zoo tests keep registry downloads, converter venvs and real models between runs."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

import pytest


def cache_root() -> Path:
    """~/.cache/cvserve-test, or CVSERVE_TEST_CACHE."""
    return Path(os.environ.get("CVSERVE_TEST_CACHE") or Path.home() / ".cache" / "cvserve-test")


def _holds(root: Path, names: tuple[str, ...]) -> bool:
    return all((root / name / "1" / "cvserve.json").is_file() for name in names)


def zoo_store(*names: str) -> Path:
    """A model store holding the zoo models `names` (as NAME/1), found or pulled:

    1. CVSERVE_ZOO_DIR, when set (it must hold them);
    2. the store `scripts/serve` fills (`cvserve serve`'s default, CVSERVE_DATA_DIR and
       CVSERVE_MODELS_DIR honoured), when it holds them all;
    3. the test cache's own store, `cache_root()/models`, pulled into once (downloads and
       converter venvs cached beside it) and kept between runs, as CI's machine keeps it.

    A pull that fails (no registry reachable) skips the test with the reason; under CI=true
    tests/support/strict_skips.py makes that skip a failure for these headline tests.
    """
    given = os.environ.get("CVSERVE_ZOO_DIR")
    if given:
        if not _holds(Path(given), names):
            pytest.fail(f"CVSERVE_ZOO_DIR={given} does not hold {', '.join(names)}")
        return Path(given)
    from cvserve.settings import Settings

    served = Settings().store_dir
    if _holds(served, names):
        return served
    root = cache_root()
    store_dir = root / "models"
    store_dir.mkdir(parents=True, exist_ok=True)
    if _holds(store_dir, names):
        return store_dir
    from cvserve import zoo
    from cvserve.models.runtime import RuntimeOptions
    from cvserve.models.store import ModelStore
    from cvserve.zoo.errors import ZooError

    # One pull at a time across pytest processes (xdist workers, two checkouts).
    with (root / "models.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        store = ModelStore(store_dir, RuntimeOptions(1, 1))
        try:
            for name in names:
                zoo.pull(name, store, cache_dir=root / "packages", tooling_dir=root / "tools")
        except ZooError as e:
            pytest.skip(f"could not pull {', '.join(names)} into {store_dir}: {e}")
        finally:
            store.close()
    return store_dir
