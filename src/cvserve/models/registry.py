"""Family name (manifest `family`) -> loader. Each family module registers itself here."""

from __future__ import annotations

import importlib
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from cvserve.errors import ModelLoadError
from cvserve.models.base import Model
from cvserve.models.manifest import Manifest
from cvserve.models.runtime import RuntimeOptions

Loader = Callable[[str, Manifest, Path, RuntimeOptions], Model]

_FAMILIES: dict[str, Loader] = {}

# Modules that define families; imported on first use so start-up stays cheap.
_FAMILY_MODULES = (
    "cvserve.models.yolo",
    "cvserve.models.generic",
    "cvserve.models.ssd",
    "cvserve.models.retinaface",
    "cvserve.models.movenet",
    "cvserve.models.sam",
    "cvserve.models.composite",
)
_loaded = False


def family(name: str) -> Callable[[Loader], Loader]:
    def register(loader: Loader) -> Loader:
        _FAMILIES[name] = loader
        return loader

    return register


def _ensure_loaded() -> None:
    global _loaded
    if _loaded:
        return
    for mod in _FAMILY_MODULES:
        try:
            importlib.import_module(mod)
        except ModuleNotFoundError as e:
            if e.name != mod:  # a real missing dependency inside the module
                raise
    _loaded = True


def known_families() -> list[str]:
    _ensure_loaded()
    return sorted(_FAMILIES)


def load(model_id: str, manifest: Manifest, folder: Path, options: RuntimeOptions) -> Model:
    _ensure_loaded()
    loader = _FAMILIES.get(manifest.family)
    if loader is None:
        raise ModelLoadError(
            f"model {model_id}: unknown family {manifest.family!r}; known: {', '.join(sorted(_FAMILIES))}"
        )
    return loader(model_id, manifest, folder, options)


_store = threading.local()


@contextmanager
def siblings_from(get: Callable[[str], Model]) -> Iterator[None]:
    """Loads on this thread take the models they are made of (a composite's parts) from
    `get` (the store's loaded models, loading them there if needed), not a copy of their
    own: coco-segment then shares coco-detect's and mobilesam's sessions."""
    previous = getattr(_store, "get", None)
    _store.get = get
    try:
        yield
    finally:
        _store.get = previous


def shared_sibling(model_id: str) -> Model | None:
    """`model_id` from the store loading on this thread, or None outside a store's load."""
    get: Callable[[str], Model] | None = getattr(_store, "get", None)
    return get(model_id) if get is not None else None
