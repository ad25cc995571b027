"""`pull(name, store)`: download, convert, check on a known photo, then install atomically.

Everything is written into a staging folder inside the store; only a model that loads and
passes its photo check is moved into place as `NAME/1`. A failure removes the staging
folder, so a failed pull leaves nothing behind (downloads and converter venvs stay cached).
"""

from __future__ import annotations

import importlib
import logging
import shutil
import time
from pathlib import Path

from cvserve.errors import CVServeError
from cvserve.models.manifest import Manifest
from cvserve.models.store import ModelStore
from cvserve.zoo.base import BuildContext, Entry, ProgressCallback
from cvserve.zoo.catalog import CATALOG
from cvserve.zoo.errors import ZooError
from cvserve.zoo.packages import PackageCache
from cvserve.zoo.tooling import Tooling

log = logging.getLogger("cvserve.zoo")


def pull(
    name: str,
    store: ModelStore,
    progress: ProgressCallback | None = None,
    *,
    data_dir: Path | None = None,
    cache_dir: Path | None = None,
    tooling_dir: Path | None = None,
    replace: bool = False,
) -> str:
    """Pull catalog model `name` into `store` as `NAME/1` and return that id.

    Already present: returned as is (unless `replace`). Downloads are cached in
    `cache_dir` (default `<data_dir>/cache`), converter venvs in `tooling_dir` (default
    `<data_dir>/tooling`); the caller passes `settings.data_dir` (no folder is guessed here).
    """
    entry = CATALOG.get(name)
    if entry is None:
        raise ZooError(f"unknown model {name!r}; known: {', '.join(CATALOG)}", status=404)
    packages = PackageCache(_folder(cache_dir, data_dir, "cache"))
    tooling = Tooling(_folder(tooling_dir, data_dir, "tooling"))
    return _pull(entry, store, progress, packages, tooling, replace)


def _folder(given: Path | None, data_dir: Path | None, name: str) -> Path:
    if given is not None:
        return given
    if data_dir is None:
        raise TypeError(f"pull() needs data_dir or {name}_dir")
    return data_dir / name


def _pull(
    entry: Entry,
    store: ModelStore,
    progress: ProgressCallback | None,
    packages: PackageCache,
    tooling: Tooling,
    replace: bool,
) -> str:
    for dep in entry.requires:  # e.g. the detector and SAM a composite model points at
        _pull(CATALOG[dep], store, progress, packages, tooling, replace=False)
    if store.exists(entry.model_id) and not replace:
        return entry.model_id

    def step(step: str, detail: str = "") -> None:
        if progress is not None:
            progress(entry.name, step, detail)
        log.info("pull %s: %s %s", entry.name, step, detail)

    source = importlib.import_module(entry.module)
    ctx = BuildContext(entry=entry, store=store, packages=packages, tooling=tooling, step=step)
    staging = store.staging_dir()
    staging.chmod(0o755)  # mkdtemp makes it owner-only; installed models are plain folders
    started = time.monotonic()
    try:
        manifest: Manifest = source.build(ctx, staging)
        manifest.write(staging)
        step("verify", "on a known photo")
        source.check(ctx, staging, manifest)
        step("install", entry.model_id)
        if replace or not store.exists(entry.model_id):  # else a concurrent pull won
            store.install(entry.model_id, staging, replace=replace)
        else:
            shutil.rmtree(staging, ignore_errors=True)
    except BaseException as e:
        shutil.rmtree(staging, ignore_errors=True)
        step("failed", e.message if isinstance(e, CVServeError) else repr(e))
        if isinstance(e, CVServeError) or not isinstance(e, Exception):
            raise
        raise ZooError(f"pulling {entry.name} failed: {e!r}") from e
    step("done", f"{time.monotonic() - started:.0f} s")
    return entry.model_id
